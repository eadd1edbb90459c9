package local_test

// desync is the oracle here and only here: a _test.go import never links
// into a binary.

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/folbricht/desync"

	"github.com/mkbootfs/mkbootfs/internal/testenv"
	"github.com/mkbootfs/mkbootfs/store"
)

// sha256Digest switches desync, whose chunk IDs are SHA-512/256 unless told,
// to our SHA-256 for the test. desync.Digest is a package global: the tests
// that set it do not run in parallel.
func sha256Digest(t *testing.T) {
	old := desync.Digest
	desync.Digest = desync.SHA256{}
	t.Cleanup(func() { desync.Digest = old })
}

func desyncStore(t *testing.T, dir string) desync.LocalStore {
	t.Helper()
	// N > 0: desync's pools hang with N = 0.
	opt := desync.NewStoreOptionsWithDefaults()
	opt.N = 2
	ds, err := desync.NewLocalStore(dir, opt)
	if err != nil {
		t.Fatal(err)
	}
	return ds
}

// split cuts data into chunks of 16..256 KiB at seeded random points: where
// the cuts fall does not matter to a store.
func split(data []byte) [][]byte {
	r := rand.New(rand.NewPCG(5, 5))
	var chunks [][]byte
	for len(data) > 0 {
		n := min(len(data), 16<<10+r.IntN(240<<10))
		chunks = append(chunks, data[:n])
		data = data[n:]
	}
	return chunks
}

// We write a file's chunks; desync's LocalStore reads and verifies each one
// and assembles the file from our store, and so does casync.
func TestDesyncReadsOurStore(t *testing.T) {
	sha256Digest(t)
	ctx := context.Background()
	dir := t.TempDir()
	data := append(chunk(11, 2<<20), bytes.Repeat([]byte("desync oracle "), 50000)...)
	s := open(t, filepath.Join(dir, "store"))
	idx := desync.Index{Index: desync.FormatIndex{
		FeatureFlags: desync.CaFormatExcludeNoDump, // no SHA512256 flag: SHA-256 IDs
		ChunkSizeMin: 16 << 10, ChunkSizeAvg: 64 << 10, ChunkSizeMax: 256 << 10,
	}}
	var start uint64
	for _, c := range split(data) {
		id, _, err := store.Save(ctx, s, c)
		if err != nil {
			t.Fatal(err)
		}
		idx.Chunks = append(idx.Chunks, desync.IndexChunk{ID: desync.ChunkID(id), Start: start, Size: uint64(len(c))})
		start += uint64(len(c))
	}

	ds := desyncStore(t, s.Dir())
	var report strings.Builder
	if err := ds.Verify(ctx, 2, false, &report); err != nil || report.Len() > 0 {
		t.Fatalf("desync verify of our store: %v\n%s", err, report.String())
	}
	for _, id := range walk(t, s) {
		c, err := ds.GetChunk(desync.ChunkID(id))
		if err != nil {
			t.Fatalf("desync reading our chunk %s: %v", id.Short(), err)
		}
		got, err := c.Data()
		want, _ := store.Load(ctx, s, id)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("desync read chunk %s as %d bytes (%v), we hold %d", id.Short(), len(got), err, len(want))
		}
	}

	out := filepath.Join(dir, "desync.out")
	if _, err := desync.AssembleFile(ctx, out, idx, ds, nil, desync.AssembleOptions{N: 2}); err != nil {
		t.Fatalf("desync extract from our store: %v", err)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, data) {
		t.Fatalf("desync assembled %d bytes from our store, want the %d we chunked", len(got), len(data))
	}

	// casync reads our store too, through the same index.
	casync := testenv.Command(t, "casync")
	caibx := filepath.Join(dir, "x.caibx")
	f, err := os.Create(caibx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := idx.WriteTo(f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out = filepath.Join(dir, "casync.out")
	if b, err := exec.Command(casync, "extract", "--store="+s.Dir(), caibx, out).CombinedOutput(); err != nil {
		t.Fatalf("casync extract from our store: %v\n%s", err, b)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, data) {
		t.Fatalf("casync extracted %d bytes from our store, want the %d we chunked", len(got), len(data))
	}

	// The oracle is awake: a chunk we corrupt, it rejects.
	bad := idx.Chunks[0].ID
	if err := os.WriteFile(s.Path(store.ID(bad)), store.Encode([]byte("wrong")), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ds.GetChunk(bad); err == nil {
		t.Fatal("desync accepted a corrupt chunk: is it verifying SHA-256?")
	}
}

// desync chunks a file into its own store; we read and verify every chunk
// and rebuild the file from them.
func TestWeReadDesyncStore(t *testing.T) {
	sha256Digest(t)
	ctx := context.Background()
	dir := t.TempDir()
	data := append(chunk(12, 3<<20), bytes.Repeat([]byte("written by desync "), 50000)...)
	ds := desyncStore(t, dir)
	c, err := desync.NewChunker(bytes.NewReader(data), 16<<10, 64<<10, 256<<10)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := desync.ChunkStream(ctx, c, ds, 2)
	if err != nil {
		t.Fatal(err)
	}

	s := open(t, dir)
	ids := walk(t, s)
	seen := map[store.ID]bool{}
	for _, id := range ids {
		seen[id] = true
	}
	var rebuilt []byte
	for _, ic := range idx.Chunks {
		id := store.ID(ic.ID)
		if !seen[id] {
			t.Fatalf("Walk did not list desync's chunk %s", id.Short())
		}
		b, err := store.Load(ctx, s, id)
		if err != nil {
			t.Fatalf("reading desync's chunk: %v", err)
		}
		if uint64(len(b)) != ic.Size {
			t.Fatalf("chunk %s: %d bytes, desync's index says %d", id.Short(), len(b), ic.Size)
		}
		rebuilt = append(rebuilt, b...)
	}
	if len(ids) < 10 || !bytes.Equal(rebuilt, data) {
		t.Fatalf("%d chunks rebuilt %d bytes, want the %d desync chunked", len(ids), len(rebuilt), len(data))
	}
	checkClean(t, s)
}
