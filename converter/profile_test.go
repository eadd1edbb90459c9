package converter_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mkbootfs/mkbootfs/converter"
	"github.com/mkbootfs/mkbootfs/extract"
	"github.com/mkbootfs/mkbootfs/internal/testtree"
	"github.com/mkbootfs/mkbootfs/profile"
	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/local"
)

// TestProfileLaysOutFirst converts a tree with a profile: the profiled
// files open the data stream, in the profile's order, the tree is the same,
// the profile's chunks are among the profiled files' first ones, and they
// hold only the bytes around its reads: chunks are cut where they begin and
// end.
func TestProfileLaysOutFirst(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	os.Mkdir(src, 0o755)
	testtree.Build(t, src)
	os.WriteFile(filepath.Join(src, "zz-last-in-tree-order"), make([]byte, 300<<10), 0o644)
	prof := &profile.Profile{Files: []profile.File{
		{Path: "/zz-last-in-tree-order", Ranges: []profile.Range{{Off: 0, Len: 4096}, {Off: 200 << 10, Len: 4096}}},
		{Path: "/not-in-the-tree", Ranges: []profile.Range{{Off: 0, Len: 1}}},
		{Path: "/text", Ranges: []profile.Range{{Off: 0, Len: 1}}},
	}}
	s, err := local.Open(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	res, err := converter.Convert(context.Background(), converter.Options{Source: "dir:" + src, Store: s, Profile: prof})
	if err != nil {
		t.Fatal(err)
	}
	x := res.Index
	offset := func(p string) int64 {
		e, err := x.Resolve(p)
		if err != nil {
			t.Fatal(err)
		}
		return x.Inodes[x.Entries[e].Inode].Offset
	}
	if a, b := offset("zz-last-in-tree-order"), offset("text"); a != 0 || b != 300<<10 {
		t.Errorf("profiled files at stream offsets %d and %d, want 0 and %d", a, b, 300<<10)
	}
	if res.Stats.ProfileChunks == 0 || res.Profile != prof {
		t.Errorf("stats %+v: no profile chunks", res.Stats)
	}
	text, _ := os.Stat(filepath.Join(src, "text"))
	// What it reads, with profile.ReadAround around each read.
	if want := int64(4096+profile.ReadAround) + (4096 + 2*profile.ReadAround) + min(text.Size(), 1+profile.ReadAround); res.Stats.ProfileBytes != want {
		t.Errorf("the profile's chunks hold %d bytes, want the %d around its reads", res.Stats.ProfileBytes, want)
	}
	last := x.ChunkAt(300<<10 + text.Size() - 1)
	for i, c := range prof.Chunks(x) {
		if c > last {
			t.Errorf("profile chunk %d is stream chunk %d: not among the profiled files' %d", i, c, last+1)
		}
	}
	out := filepath.Join(t.TempDir(), "out")
	if _, err := extract.Extract(context.Background(), x, s, out, extract.Options{Devices: true, SamePermissions: true}); err != nil {
		t.Fatal(err)
	}
	if diff := testtree.Diff(t, src, out); diff != "" {
		t.Fatalf("a profiled conversion extracts differently:\n%s", diff)
	}
}

// TestProfileChunksSmallest: the chunks of a profile's reads are stored
// compressed smallest (store.EncodeSmallest), which every start fetches;
// the others as usual.
func TestProfileChunksSmallest(t *testing.T) {
	src := t.TempDir()
	words := strings.Fields("the quick brown fox jumps over a lazy dog while seven wizards box jolly quiz nymphs")
	rnd := rand.New(rand.NewPCG(1, 2))
	for _, name := range []string{"read", "unread"} {
		var b bytes.Buffer
		for b.Len() < 400<<10 {
			b.WriteString(words[rnd.IntN(len(words))])
			b.WriteByte(" \n"[rnd.IntN(2)])
		}
		if err := os.WriteFile(filepath.Join(src, name), b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	prof := &profile.Profile{Files: []profile.File{{Path: "/read", Ranges: []profile.Range{{Off: 0, Len: 400 << 10}}}}}
	s, err := local.Open(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	res, err := converter.Convert(context.Background(), converter.Options{Source: "dir:" + src, Store: s, Profile: prof})
	if err != nil {
		t.Fatal(err)
	}
	x := res.Index
	profiled := map[int]bool{}
	for _, c := range prof.Chunks(x) {
		profiled[c] = true
	}
	differ := false
	for c := range x.Chunks {
		id := store.ID(x.Chunks[c].ID)
		raw, err := s.Get(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		data, err := store.Decode(id, raw)
		if err != nil {
			t.Fatal(err)
		}
		smallest, usual := store.EncodeSmallest(data), store.Encode(data)
		differ = differ || !bytes.Equal(smallest, usual)
		if want := map[bool][]byte{true: smallest, false: usual}[profiled[c]]; !bytes.Equal(raw, want) {
			t.Errorf("chunk %d (profiled: %v) is stored as %d bytes, want %d", c, profiled[c], len(raw), len(want))
		}
	}
	if len(profiled) == 0 || len(profiled) == len(x.Chunks) || !differ {
		t.Fatalf("%d of %d chunks profiled, the two compressions differ: %v: the test shows nothing", len(profiled), len(x.Chunks), differ)
	}
}
