package local_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/local"
)

// chunk returns n pseudo-random bytes, the same for the same seed.
func chunk(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, 1))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func open(t testing.TB, dir string) *local.Store {
	t.Helper()
	s, err := local.Open(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// walk lists the store's chunks, sorted.
func walk(t testing.TB, s *local.Store) []store.ID {
	t.Helper()
	var ids []store.ID
	if err := s.Walk(func(id store.ID) error { ids = append(ids, id); return nil }); err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(ids, func(a, b store.ID) int { return bytes.Compare(a[:], b[:]) })
	return ids
}

// checkClean fails unless every file in the store is a chunk that loads and
// verifies under its own name, and the temp dir is empty.
func checkClean(t testing.TB, s *local.Store) {
	t.Helper()
	ctx := context.Background()
	err := filepath.WalkDir(s.Dir(), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(s.Dir(), p)
		name, ok := strings.CutSuffix(d.Name(), ".cacnk")
		id, err := store.ParseID(name)
		if !ok || err != nil || s.Path(id) != p {
			t.Errorf("stray file %s in the store", rel)
			return nil
		}
		if _, err := store.Load(ctx, s, id); err != nil {
			t.Errorf("%s: %v", rel, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func sorted(ids ...store.ID) []store.ID {
	ids = slices.Clone(ids)
	slices.SortFunc(ids, func(a, b store.ID) int { return bytes.Compare(a[:], b[:]) })
	return ids
}

func TestRoundTrip(t *testing.T) {
	for _, put := range []string{"Put", "PutNoSync"} {
		t.Run(put, func(t *testing.T) { testRoundTrip(t, put) })
	}
}

func testRoundTrip(t *testing.T, put string) {
	ctx := context.Background()
	s := open(t, filepath.Join(t.TempDir(), "new", "store"))
	putFn := map[string]func(context.Context, store.ID, []byte) error{"Put": s.Put, "PutNoSync": s.PutNoSync}[put]
	var want []store.ID
	for i, n := range []int{0, 1, 100, 64 << 10, 300 << 10} {
		data := chunk(uint64(i), n)
		id := store.Sum(data)
		if ok, err := s.Has(ctx, id); err != nil || ok {
			t.Fatalf("Has(%s) before Put = %v, %v", id.Short(), ok, err)
		}
		if _, err := s.Get(ctx, id); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("Get(%s) before Put = %v, want ErrNotFound", id.Short(), err)
		}
		raw := store.Encode(data)
		if err := putFn(ctx, id, raw); err != nil {
			t.Fatal(err)
		}
		// A second Put of the same chunk is not an error.
		if err := putFn(ctx, id, raw); err != nil {
			t.Fatal(err)
		}
		if ok, err := s.Has(ctx, id); err != nil || !ok {
			t.Fatalf("Has(%s) after Put = %v, %v", id.Short(), ok, err)
		}
		got, err := s.Get(ctx, id)
		if err != nil || !bytes.Equal(got, raw) {
			t.Fatalf("Get(%s) = %d bytes, %v; want the %d bytes put", id.Short(), len(got), err, len(raw))
		}
		if got, err := store.Load(ctx, s, id); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("Load(%s) = %d bytes, %v", id.Short(), len(got), err)
		}
		h := id.String()
		if p := s.Path(id); p != filepath.Join(s.Dir(), h[:4], h+".cacnk") {
			t.Fatalf("Path(%s) = %s, not casync's layout", h, p)
		}
		if fi, err := os.Stat(s.Path(id)); err != nil || fi.Mode().Perm() != 0o644 {
			t.Fatalf("chunk file: %v, %v; want mode 0644 so file servers can read it", fi.Mode(), err)
		}
		want = append(want, id)
	}
	if got := walk(t, s); !slices.Equal(got, sorted(want...)) {
		t.Fatalf("Walk found %d chunks, want the %d put", len(got), len(want))
	}
	checkClean(t, s)
}

func TestStage(t *testing.T) {
	ctx := context.Background()
	ids := make([]store.ID, 4)
	raws := make([][]byte, 4)
	for i := range ids {
		data := chunk(uint64(100+i), 10<<10)
		ids[i], raws[i] = store.Sum(data), store.Encode(data)
	}
	has := func(t *testing.T, s *local.Store, id store.ID) bool {
		ok, err := s.Has(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, s *local.Store) // stages ids[0..2] first
		want []store.ID
	}{
		{"commit", func(t *testing.T, s *local.Store) {
			if err := s.Commit(ctx); err != nil {
				t.Fatal(err)
			}
		}, ids[:3]},
		{"abort", func(t *testing.T, s *local.Store) { s.Abort() }, nil},
		{"close discards", func(t *testing.T, s *local.Store) {
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
		}, nil},
		{"abort then stage and commit", func(t *testing.T, s *local.Store) {
			s.Abort()
			if err := s.Stage(ctx, ids[3], raws[3]); err != nil {
				t.Fatal(err)
			}
			if err := s.Commit(ctx); err != nil {
				t.Fatal(err)
			}
		}, ids[3:]},
		{"restage replaces", func(t *testing.T, s *local.Store) {
			if err := s.Stage(ctx, ids[0], raws[0]); err != nil {
				t.Fatal(err)
			}
			if err := s.Commit(ctx); err != nil {
				t.Fatal(err)
			}
		}, ids[:3]},
		{"commit twice", func(t *testing.T, s *local.Store) {
			for range 2 {
				if err := s.Commit(ctx); err != nil {
					t.Fatal(err)
				}
			}
		}, ids[:3]},
		{"put while staged", func(t *testing.T, s *local.Store) {
			if err := s.Put(ctx, ids[1], raws[1]); err != nil {
				t.Fatal(err)
			}
			if !has(t, s, ids[1]) {
				t.Fatal("Put chunk not visible")
			}
			s.Abort()
		}, ids[1:2]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t, t.TempDir())
			for i := range 3 {
				if err := s.Stage(ctx, ids[i], raws[i]); err != nil {
					t.Fatal(err)
				}
				if has(t, s, ids[i]) {
					t.Fatalf("staged chunk %s visible before Commit", ids[i].Short())
				}
			}
			tc.run(t, s)
			if got := walk(t, s); !slices.Equal(got, sorted(tc.want...)) {
				t.Errorf("store holds %d chunks, want %d", len(got), len(tc.want))
			}
			checkClean(t, s)
		})
	}
}

// A corrupt chunk file fails Load with an error that names the chunk and
// the store, and its bytes never reach the caller.
func TestCorruptChunk(t *testing.T) {
	ctx := context.Background()
	data := chunk(7, 40<<10)
	id := store.Sum(data)
	good := store.Encode(data)
	other := chunk(8, 40<<10)
	for _, tc := range []struct {
		name string
		raw  []byte
		says string
	}{
		{"garbage", []byte("#!/bin/sh\nrm -rf /\n"), "not a zstd chunk"},
		{"empty", []byte{}, "content hashes to"},
		{"truncated zstd", good[:len(good)-100], "not a zstd chunk"},
		{"wrong content", store.Encode(other), "content hashes to " + store.Sum(other).Short()},
		{"uncompressed", data, "not a zstd chunk"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t, t.TempDir())
			if err := s.Put(ctx, id, tc.raw); err != nil {
				t.Fatal(err)
			}
			got, err := store.Load(ctx, s, id)
			if !errors.Is(err, store.ErrCorrupt) {
				t.Fatalf("Load = %v; want ErrCorrupt", err)
			}
			if got != nil {
				t.Fatalf("Load returned %d bytes of a corrupt chunk", len(got))
			}
			for _, want := range []string{id.Short(), s.Dir(), tc.says} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			// Put repairs it.
			if err := s.Put(ctx, id, good); err != nil {
				t.Fatal(err)
			}
			if got, err := store.Load(ctx, s, id); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("Load after repair = %d bytes, %v", len(got), err)
			}
		})
	}
}

// Walk lists chunks in casync's layout only: not temp files, not other
// tools' files, not chunks filed under the wrong prefix.
func TestWalkSkipsStrays(t *testing.T) {
	s := open(t, t.TempDir())
	data := chunk(9, 1000)
	id := store.Sum(data)
	if err := s.Put(context.Background(), id, store.Encode(data)); err != nil {
		t.Fatal(err)
	}
	other := store.Sum([]byte("other")).String()
	for _, p := range []string{
		".tmp/" + other + ".cacnk",
		"0000/" + other + ".cacnk",                   // wrong prefix directory
		other[:4] + "/" + other[:63] + ".cacnk",      // short name
		other[:4] + "/.tmp-cacnk123",                 // desync's temp file
		other[:4] + "/" + other + ".cacnk.tmp",       // some writer's temp file
		"README", "x.caibx", other[:4] + "/" + other, // no extension
	} {
		p = filepath.Join(s.Dir(), p)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if got := walk(t, s); !slices.Equal(got, []store.ID{id}) {
		t.Fatalf("Walk = %v, want only %s", got, id)
	}
	stop := errors.New("stop")
	if err := s.Walk(func(store.ID) error { return stop }); err != stop {
		t.Fatalf("Walk = %v, want the callback's error", err)
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("not a store"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		dir    string
		create bool
		says   string
	}{
		{"regular file", file, true, "not a directory"},
		{"regular file, no create", file, false, "not a directory"},
		{"under a regular file", filepath.Join(file, "store"), true, "not a directory"},
		{"missing, no create", filepath.Join(dir, "missing"), false, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := local.Open(tc.dir, tc.create)
			if err == nil {
				s.Close()
				t.Fatalf("Open(%s) succeeded", tc.dir)
			}
			for _, want := range []string{tc.dir, tc.says} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
		})
	}
	if b, _ := os.ReadFile(file); string(b) != "not a store" {
		t.Fatal("Open changed the file it refused")
	}
}

// The store's Walk reports an error for a store that vanished, naming it.
func TestWalkMissingStore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "s")
	s := open(t, dir)
	os.Remove(dir)
	err := s.Walk(func(store.ID) error { return nil })
	if err == nil || !strings.Contains(err.Error(), dir) {
		t.Fatalf("Walk of a removed store = %v, want an error naming it", err)
	}
}

// A Commit that fails on one chunk returns an error naming it and leaves no
// temp file; every chunk it did make visible is whole.
func TestCommitFailsMidway(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	var ids []store.ID
	for k := range 8 {
		data := chunk(uint64(200+k), 4<<10)
		ids = append(ids, store.Sum(data))
		if err := s.Stage(ctx, ids[k], store.Encode(data)); err != nil {
			t.Fatal(err)
		}
	}
	// A directory where chunk 3 belongs makes its rename fail.
	blocker := s.Path(ids[3])
	if err := os.MkdirAll(filepath.Join(blocker, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	err := s.Commit(ctx)
	if err == nil || !strings.Contains(err.Error(), ids[3].Short()) || !strings.Contains(err.Error(), s.Dir()) {
		t.Fatalf("Commit = %v; want an error naming chunk %s and the store", err, ids[3].Short())
	}
	os.RemoveAll(blocker)
	for _, id := range walk(t, s) {
		if !slices.Contains(ids, id) || id == ids[3] {
			t.Errorf("chunk %s visible after the failed Commit", id.Short())
		}
	}
	checkClean(t, s)
	if err := s.Commit(ctx); err != nil {
		t.Fatalf("Commit after a failed one: %v", err)
	}
}

// A store opened with OpenRoot follows no symlink out of its directory: not
// a chunk's name pointing at a file outside (even one holding that very
// chunk, which Open serves), nor a chunk directory pointing at one outside
// (Open writes there). A symlink that stays inside is followed.
func TestOpenRootConfines(t *testing.T) {
	ctx := context.Background()
	data := chunk(1, 1000)
	id, raw := store.Sum(data), store.Encode(data)
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "secret"), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	h := id.String()
	os.Mkdir(filepath.Join(dir, h[:4]), 0o755)
	if err := os.Symlink(filepath.Join(outside, "secret"), filepath.Join(dir, h[:4], h+".cacnk")); err != nil {
		t.Fatal(err)
	}
	other := store.Sum(chunk(2, 1000))
	if err := os.Symlink(outside, filepath.Join(dir, other.String()[:4])); err != nil {
		t.Fatal(err)
	}

	if got, err := open(t, dir).Get(ctx, id); err != nil || !bytes.Equal(got, raw) {
		t.Fatalf("Open: Get through the symlink = %d bytes, %v; want the outside file (the test's premise)", len(got), err)
	}
	s, err := local.OpenRoot(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if got, err := s.Get(ctx, id); err == nil {
		t.Errorf("OpenRoot: Get followed a symlink out of the store: %d bytes", len(got))
	}
	if ok, err := s.Has(ctx, id); ok || err == nil {
		t.Errorf("OpenRoot: Has through a symlink out of the store = %v, %v; want an error", ok, err)
	}
	if err := s.Put(ctx, other, store.Encode(chunk(2, 1000))); err == nil {
		t.Errorf("OpenRoot: Put through a directory symlinked out of the store succeeded")
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 1 {
		t.Errorf("OpenRoot: Put wrote outside the store: %d files there", len(ents))
	}

	// Inside the store, a relative symlink is followed as Open follows it.
	inside := store.Sum(chunk(3, 1000))
	if err := s.Put(ctx, inside, store.Encode(chunk(3, 1000))); err != nil {
		t.Fatal(err)
	}
	os.Remove(s.Path(id))
	ih := inside.String()
	if err := os.Symlink(filepath.Join("..", ih[:4], ih+".cacnk"), s.Path(id)); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Get(ctx, id); err != nil || len(got) == 0 {
		t.Errorf("OpenRoot: Get through a symlink inside the store: %v", err)
	}
}
