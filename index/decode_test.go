package index_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/mkbootfs/mkbootfs/index"
)

const headerLen = 12 // magic and version

func encoded(t testing.TB, x *index.Index) []byte {
	t.Helper()
	b, err := x.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// wantCorrupt fails unless Decode(b) refuses b with ErrCorrupt.
func wantCorrupt(t *testing.T, what string, b []byte) error {
	t.Helper()
	x, err := index.Decode(b)
	if !errors.Is(err, index.ErrCorrupt) || x != nil {
		t.Fatalf("%s: Decode = %v, %v; want ErrCorrupt", what, x, err)
	}
	return err
}

func TestDecodeTruncated(t *testing.T) {
	b := encoded(t, newFixture(t).x)
	body := b[:len(b)-sha256.Size]
	for n := range len(b) {
		wantCorrupt(t, "truncated", b[:n])
	}
	// With the checksum fixed, the decoder itself must notice.
	for n := headerLen; n < len(body); n++ {
		wantCorrupt(t, "truncated and resealed", seal(body[:n]))
	}
}

func TestDecodeDamaged(t *testing.T) {
	b := encoded(t, small(t))
	body := b[:len(b)-sha256.Size]
	edit := func(at int, with ...byte) []byte {
		c := bytes.Clone(b)
		copy(c[at:], with)
		return c
	}
	version := func(v uint32) []byte {
		c := bytes.Clone(body)
		binary.LittleEndian.PutUint32(c[8:], v)
		return seal(c)
	}
	tests := []struct {
		name string
		in   []byte
		want string
	}{
		{"nil", nil, "not an mkbootfs index"},
		{"header only", b[:headerLen], "not an mkbootfs index"},
		{"bad magic", edit(0, 'M'), "not an mkbootfs index"},
		{"other file", []byte(strings.Repeat("#!/bin/sh\n", 10)), "not an mkbootfs index"},
		{"version 2", version(2), "format version 2, this build reads version 1"},
		{"version 0", version(0), "format version 0"},
		{"body bit flipped", edit(len(body)-1, body[len(body)-1]^1), "checksum mismatch"},
		{"checksum bit flipped", edit(len(b)-1, b[len(b)-1]^0x80), "checksum mismatch"},
		{"trailing bytes", seal(append(bytes.Clone(body), 0)), "1 unexpected bytes after the entries"},
	}
	for _, tt := range tests {
		if err := wantCorrupt(t, tt.name, tt.in); !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v; want it to say %q", tt.name, err, tt.want)
		}
	}
}

// TestDecodeGarbage damages every byte of a valid body and reseals it: the
// validator, not the checksum, must catch it, or the index must be sound.
func TestDecodeGarbage(t *testing.T) {
	b := encoded(t, newFixture(t).x)
	body := bytes.Clone(b[:len(b)-sha256.Size])
	for i := headerLen; i < len(body); i++ {
		for _, flip := range []byte{0x01, 0x80, 0xff} {
			body[i] ^= flip
			checkDecode(t, seal(body))
			body[i] ^= flip
		}
	}
}

// checkDecode decodes untrusted bytes: they are refused with ErrCorrupt, or
// they make an index that every reader can walk and that survives a round
// trip unchanged.
func checkDecode(t *testing.T, in []byte) {
	x, err := index.Decode(in)
	if err != nil {
		if !errors.Is(err, index.ErrCorrupt) || x != nil {
			t.Fatalf("Decode = %v, %v; want nil and ErrCorrupt", x, err)
		}
		return
	}
	// Each entry found under its parent by name means, by induction, that
	// Resolve finds every entry by its Path.
	var kids uint32
	for e := range uint32(len(x.Entries)) {
		first, count := x.Children(e)
		kids += count
		for c := first; c < first+count; c++ {
			if got, ok := x.Lookup(e, x.Entries[c].Name); !ok || got != c || x.Entries[c].Parent != e {
				t.Fatalf("Lookup(%d, %q) = %d, %v; want %d", e, x.Entries[c].Name, got, ok, c)
			}
		}
	}
	if last := uint32(len(x.Entries) - 1); kids != last {
		t.Fatalf("directories hold %d children, want %d", kids, last)
	} else if got, err := x.Resolve(x.Path(last)); err != nil || got != last {
		t.Fatalf("Resolve(Path(%d)) = %d, %v", last, got, err)
	}
	zeros := func(i int) ([]byte, error) { return zeroChunk[:x.Chunks[i].Size], nil }
	p := make([]byte, 64)
	for ino := range uint32(len(x.Inodes)) {
		n := &x.Inodes[ino]
		x.ChunkSpan(ino)
		if !n.IsRegular() {
			continue
		}
		for _, off := range []int64{0, n.Size / 2, n.Size - 1} {
			if _, err := x.ReadAt(ino, p, off, zeros); err != nil {
				t.Fatalf("ReadAt(inode %d, %d) of a valid index: %v", ino, off, err)
			}
		}
	}
	again, err := x.MarshalBinary()
	if err != nil {
		t.Fatalf("MarshalBinary of a decoded index: %v", err)
	}
	y, err := index.Decode(again)
	if err != nil {
		t.Fatalf("Decode of a re-encoded index: %v", err)
	}
	if !reflect.DeepEqual(x, y) {
		t.Fatalf("a decoded index changed through MarshalBinary and Decode:\n%+v\n%+v", x, y)
	}
}

var zeroChunk = make([]byte, index.MaxChunkSize)

// TestDecodeForgedCounts claims more records than the bytes can hold: the
// decoder must refuse without allocating for the claim.
func TestDecodeForgedCounts(t *testing.T) {
	header := encoded(t, small(t))[:headerLen]
	rec := func(v ...uint64) []byte {
		b := bytes.Clone(header)
		for _, u := range v {
			b = binary.AppendUvarint(b, u)
		}
		return b
	}
	const huge = 1 << 60
	const reg, dir = 0o100644, 0o40755
	tests := []struct {
		name string
		body []byte
	}{
		{"meta", rec(huge)},
		{"meta key", rec(1, huge)},
		{"chunks", rec(0, huge)},
		{"inodes", rec(0, 0, huge)},
		{"extents", rec(0, 0, 1, reg, 0, 0, 0, 10, 0, huge)},
		{"xattrs", rec(0, 0, 1, dir, 0, 0, 0, huge)},
		{"xattr value", rec(0, 0, 1, dir, 0, 0, 0, 1, 1, 'a', huge)},
		{"entries", rec(0, 0, 1, dir, 0, 0, 0, 0, huge)},
		{"name", rec(0, 0, 1, dir, 0, 0, 0, 0, 2, 0, 1, huge)},
		{"mode", rec(0, 0, 1, 1<<33)},
		// As many records as the bytes allow: the allocation is bounded by
		// the input's size.
		{"zeros", append(rec(0, 0, 1<<20/5), make([]byte, 1<<20)...)},
		{"entries of zeros", append(rec(0, 0, 1, dir, 0, 0, 0, 0, 1<<20), make([]byte, 1<<20)...)},
	}
	for _, tt := range tests {
		in := seal(tt.body)
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		wantCorrupt(t, tt.name, in)
		runtime.ReadMemStats(&after)
		if got, limit := after.TotalAlloc-before.TotalAlloc, uint64(64*len(in)+1<<16); got > limit {
			t.Errorf("%s: Decode of %d bytes allocated %d bytes, want at most %d", tt.name, len(in), got, limit)
		}
	}
}

func TestReadFile(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.idx")
	os.WriteFile(bad, []byte("not an index"), 0o644)
	if _, err := index.ReadFile(bad); err == nil || !strings.Contains(err.Error(), bad+": ") || !errors.Is(err, index.ErrCorrupt) {
		t.Errorf("ReadFile of a non-index: %v; want an ErrCorrupt naming %s", err, bad)
	}
	if _, err := index.ReadFile(filepath.Join(dir, "none")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ReadFile of a missing file: %v", err)
	}
}
