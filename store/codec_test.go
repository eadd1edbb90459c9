package store_test

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/mkbootfs/mkbootfs/internal/testenv"
	"github.com/mkbootfs/mkbootfs/store"
)

func random(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, 0))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestEncodeDecode(t *testing.T) {
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"one byte", []byte{7}},
		{"text", []byte(strings.Repeat("mkbootfs chunk ", 1000))},
		{"zeros 256KiB", make([]byte, 256<<10)},
		{"random 1MiB", random(1, 1<<20)},
		{"max size", random(2, store.MaxChunkSize)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := store.Encode(tc.data)
			got, err := store.Decode(store.Sum(tc.data), raw)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.data) {
				t.Fatalf("decoded %d bytes, want the %d bytes encoded", len(got), len(tc.data))
			}
		})
	}
}

// A raw frame is a zstd frame: Decode and the zstd tool read it back, at
// every block boundary.
func TestEncodeRaw(t *testing.T) {
	zstdTool := testenv.Command(t, "zstd")
	for _, n := range []int{0, 1, 128<<10 - 1, 128 << 10, 128<<10 + 1, 3 << 20} {
		data := random(uint64(n), n)
		raw := store.EncodeRaw(data)
		if len(raw) > n+9+3*(n/(128<<10)+1) {
			t.Errorf("%d bytes: a raw frame of %d bytes", n, len(raw))
		}
		got, err := store.Decode(store.Sum(data), raw)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%d bytes: Decode gave %d bytes, %v", n, len(got), err)
		}
		if got, err := store.DecodeInPlace(store.Sum(data), bytes.Clone(raw)); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%d bytes: DecodeInPlace gave %d bytes, %v", n, len(got), err)
		}
		cmd := exec.Command(zstdTool, "-d", "-c")
		cmd.Stdin = bytes.NewReader(raw)
		out, err := cmd.Output()
		if err != nil || !bytes.Equal(out, data) {
			t.Fatalf("%d bytes: zstd -d gave %d bytes, %v", n, len(out), err)
		}
	}
}

// DecodeInPlace takes any stored chunk, and a damaged raw frame is as
// corrupt to it as to Decode.
func TestDecodeInPlace(t *testing.T) {
	data := random(3, 300<<10) // three raw blocks
	id := store.Sum(data)
	raw := store.EncodeRaw(data)
	secondBlock := 9 + 3 + 128<<10
	damage := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(raw)) }
	for _, tc := range []struct {
		name    string
		stored  []byte
		wantErr bool
	}{
		{"zstd frame", store.Encode(data), false},
		{"raw frame", raw, false},
		{"truncated", raw[:len(raw)-1], true},
		{"trailing byte", append(bytes.Clone(raw), 0), true},
		{"content flipped", damage(func(b []byte) []byte { b[len(b)/2] ^= 1; return b }), true},
		{"second block not raw", damage(func(b []byte) []byte { b[secondBlock] |= 2 << 1; return b }), true},
		{"size too small", damage(func(b []byte) []byte { b[5]--; return b }), true},
		{"no last block", damage(func(b []byte) []byte { b[len(b)-(300<<10-256<<10)-3] &^= 1; return b }), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := store.DecodeInPlace(id, bytes.Clone(tc.stored))
			switch {
			case tc.wantErr && !errors.Is(err, store.ErrCorrupt):
				t.Fatalf("DecodeInPlace = %d bytes, %v; want ErrCorrupt", len(got), err)
			case !tc.wantErr && (err != nil || !bytes.Equal(got, data)):
				t.Fatalf("DecodeInPlace = %d bytes, %v; want the data", len(got), err)
			}
		})
	}
}

func TestDecodeCorrupt(t *testing.T) {
	data := []byte(strings.Repeat("the right content ", 512))
	id := store.Sum(data)
	raw := store.Encode(data)
	flipped := bytes.Clone(raw)
	flipped[len(flipped)/2] ^= 0xff

	// A frame that inflates beyond MaxChunkSize: a chunk is never that big.
	var huge bytes.Buffer
	w, _ := zstd.NewWriter(&huge)
	w.Write(make([]byte, store.MaxChunkSize+1))
	w.Close()

	for _, tc := range []struct {
		name string
		raw  []byte
		want string
	}{
		{"garbage", []byte("this is not zstd at all"), "not a zstd chunk"},
		{"truncated", raw[:len(raw)/2], "not a zstd chunk"},
		{"header only", raw[:4], "not a zstd chunk"},
		{"flipped byte", flipped, "chunk corrupt"},
		{"wrong content", store.Encode([]byte("other content")), "content hashes to " + store.Sum([]byte("other content")).Short()},
		{"empty file", nil, "content hashes to"},
		{"too big", huge.Bytes(), "not a zstd chunk"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := store.Decode(id, tc.raw)
			if !errors.Is(err, store.ErrCorrupt) {
				t.Fatalf("Decode = %v; want an error wrapping ErrCorrupt", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
			if got != nil {
				t.Errorf("Decode returned %d bytes with its error", len(got))
			}
		})
	}
}

func TestParseID(t *testing.T) {
	id := store.Sum([]byte("x"))
	for _, tc := range []struct {
		in, err string
	}{
		{id.String(), ""},
		{strings.ToUpper(id.String()), ""},
		{id.String()[:63], "want 64 hex digits"},
		{id.String() + "0", "want 64 hex digits"},
		{"zz" + id.String()[2:], "invalid byte"},
		{"", "want 64 hex digits"},
	} {
		got, err := store.ParseID(tc.in)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("ParseID(%q): %v", tc.in, err)
		case tc.err == "" && got != id:
			t.Errorf("ParseID(%q) = %s, want %s", tc.in, got, id)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("ParseID(%q) = %v, want an error saying %q", tc.in, err, tc.err)
		}
	}
	if s := id.Short(); len(s) != 12 || !strings.HasPrefix(id.String(), s) {
		t.Errorf("Short() = %q, want the first 12 hex digits of %s", s, id)
	}
}

// FuzzDecode feeds untrusted stored bytes to Decode: it must never panic,
// and whatever it returns must hash to the id it was asked for.
func FuzzDecode(f *testing.F) {
	data := []byte(strings.Repeat("fuzz", 100))
	f.Add(store.Encode(data))
	f.Add(store.Encode(nil))
	f.Add([]byte("garbage"))
	f.Add(store.Encode(data)[:10])
	id := store.Sum(data)
	f.Fuzz(func(t *testing.T, raw []byte) {
		got, err := store.Decode(id, raw)
		if err != nil {
			if !errors.Is(err, store.ErrCorrupt) || got != nil {
				t.Fatalf("Decode = %d bytes, %v; want nil and ErrCorrupt", len(got), err)
			}
			return
		}
		if store.Sum(got) != id {
			t.Fatal("Decode returned bytes that do not match the id")
		}
	})
}

// The node cache keeps chunks raw: BenchmarkDecode/raw against /zstd is
// what that saves at each container start, per chunk read, each as the
// cache reads it: the stored bytes read into memory (a copy here), then
// decoded (in place for raw) and verified. The data is a real program's,
// as a boot reads: this test binary.
func BenchmarkDecode(b *testing.B) {
	exe, err := os.ReadFile(os.Args[0])
	if err != nil {
		b.Fatal(err)
	}
	data := exe[:min(len(exe), 64<<10)]
	id := store.Sum(data)
	for _, form := range []struct {
		name   string
		stored []byte
		decode func(store.ID, []byte) ([]byte, error)
	}{{"zstd", store.Encode(data), store.Decode}, {"raw", store.EncodeRaw(data), store.DecodeInPlace}} {
		b.Run(form.name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			read := make([]byte, len(form.stored))
			for b.Loop() {
				copy(read, form.stored)
				if _, err := form.decode(id, read); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
