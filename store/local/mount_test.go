package local_test

import (
	"context"
	"errors"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/internal/testenv"
	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/local"
	"github.com/mkbootfs/mkbootfs/store/storetest"
)

// mount mounts a file system on a new temp dir and unmounts it when the
// test ends, before the temp dir is removed.
func mount(t *testing.T, source, fstype string, flags uintptr, data string) string {
	t.Helper()
	testenv.Root(t)
	dir := t.TempDir()
	if err := unix.Mount(source, dir, fstype, flags, data); err != nil {
		t.Fatalf("mount %s on %s: %v", fstype, dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

func remountRO(t *testing.T, dir string, flags uintptr) {
	t.Helper()
	if err := unix.Mount("", dir, "", unix.MS_REMOUNT|unix.MS_RDONLY|flags, ""); err != nil {
		t.Fatalf("remount %s read-only: %v", dir, err)
	}
}

// files lists every path under dir.
func files(t *testing.T, dir string) []string {
	t.Helper()
	var ps []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		ps = append(ps, p)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

// checkErr fails unless err wraps errno and names the chunk and the store
// and says what to do.
func checkErr(t *testing.T, err error, errno unix.Errno, says ...string) {
	t.Helper()
	if !errors.Is(err, errno) {
		t.Fatalf("error %v; want %v", err, errno)
	}
	for _, s := range says {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not say %q", err, s)
		}
	}
}

// A read-only store serves its chunks; writes fail saying the store is not
// writable, and leave nothing behind.
func TestReadOnlyStore(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		mount func(t *testing.T) (dir string, ro func())
	}{
		{"tmpfs remounted ro", func(t *testing.T) (string, func()) {
			dir := mount(t, "tmpfs", "tmpfs", 0, "size=4m")
			return dir, func() { remountRO(t, dir, 0) }
		}},
		{"ro bind mount", func(t *testing.T) (string, func()) {
			dir := mount(t, t.TempDir(), "", unix.MS_BIND, "")
			return dir, func() { remountRO(t, dir, unix.MS_BIND) }
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, readOnly := tc.mount(t)
			s := open(t, dir)
			var ids []store.ID
			for k := range 3 {
				id, _, err := store.Save(ctx, s, chunk(uint64(k), 5000))
				if err != nil {
					t.Fatal(err)
				}
				ids = append(ids, id)
			}
			readOnly()
			before := files(t, dir)

			if got := walk(t, s); !slices.Equal(got, sorted(ids...)) {
				t.Fatalf("Walk of the read-only store = %d chunks, want %d", len(got), len(ids))
			}
			for _, id := range ids {
				if _, err := store.Load(ctx, s, id); err != nil {
					t.Fatal(err)
				}
			}
			data := chunk(99, 5000)
			id := store.Sum(data)
			err := s.Put(ctx, id, store.Encode(data))
			checkErr(t, err, unix.EROFS, "store is read-only; use a writable directory", id.Short(), dir)
			if !errors.Is(err, store.ErrReadOnly) {
				t.Errorf("Put error %v does not wrap store.ErrReadOnly", err)
			}
			err = s.Stage(ctx, id, store.Encode(data))
			checkErr(t, err, unix.EROFS, "store is read-only; use a writable directory", id.Short(), dir)
			if err := s.Commit(ctx); err != nil {
				t.Fatalf("Commit with nothing staged: %v", err)
			}
			_, err = local.Open(filepath.Join(dir, "sub"), true)
			checkErr(t, err, unix.EROFS, "store is read-only; use a writable directory", dir)
			if after := files(t, dir); !slices.Equal(after, before) {
				t.Fatalf("failed writes changed the store:\nbefore %v\nafter  %v", before, after)
			}
		})
	}
}

// On a full disk Put and Stage fail saying to free space; no partial chunk
// is left under its name or in the temp dir, and what was stored verifies.
func TestFullDisk(t *testing.T) {
	ctx := context.Background()
	// fill writes 16 KiB chunks with write until it fails; it returns the
	// chunks written and the one that failed.
	fill := func(t *testing.T, write func(store.ID, []byte) error) ([]store.ID, store.ID, error) {
		var done []store.ID
		for k := range 1000 {
			data := chunk(uint64(k), 16<<10)
			id := store.Sum(data)
			if err := write(id, store.Encode(data)); err != nil {
				return done, id, err
			}
			done = append(done, id)
		}
		t.Fatal("1000 chunks of 16 KiB fit in a 256 KiB file system")
		return nil, store.ID{}, nil
	}
	for _, tc := range []struct {
		name string
		// run fills the store; it returns the chunks that must be there,
		// the chunk that failed and its error.
		run func(t *testing.T, s *local.Store) ([]store.ID, store.ID, error)
	}{
		{"put too big", func(t *testing.T, s *local.Store) ([]store.ID, store.ID, error) {
			data := chunk(1, 1<<20)
			id := store.Sum(data)
			return nil, id, s.Put(ctx, id, store.Encode(data))
		}},
		{"put until full", func(t *testing.T, s *local.Store) ([]store.ID, store.ID, error) {
			return fill(t, func(id store.ID, b []byte) error { return s.Put(ctx, id, b) })
		}},
		{"put without sync until full", func(t *testing.T, s *local.Store) ([]store.ID, store.ID, error) {
			return fill(t, func(id store.ID, b []byte) error { return s.PutNoSync(ctx, id, b) })
		}},
		{"stage until full, commit", func(t *testing.T, s *local.Store) ([]store.ID, store.ID, error) {
			done, id, err := fill(t, func(id store.ID, b []byte) error { return s.Stage(ctx, id, b) })
			if cerr := s.Commit(ctx); cerr != nil {
				t.Fatalf("Commit of the chunks that fit: %v", cerr)
			}
			return done, id, err
		}},
		{"stage until full, abort", func(t *testing.T, s *local.Store) ([]store.ID, store.ID, error) {
			_, id, err := fill(t, func(id store.ID, b []byte) error { return s.Stage(ctx, id, b) })
			s.Abort()
			return nil, id, err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := mount(t, "tmpfs", "tmpfs", 0, "size=256k")
			s := open(t, dir)
			want, failed, err := tc.run(t, s)
			checkErr(t, err, unix.ENOSPC, "free space", failed.Short(), dir)
			if ok, err := s.Has(ctx, failed); err != nil || ok {
				t.Fatalf("the chunk that did not fit: Has = %v, %v", ok, err)
			}
			if got := walk(t, s); !slices.Equal(got, sorted(want...)) {
				t.Fatalf("store holds %d chunks, want the %d that fit", len(got), len(want))
			}
			checkClean(t, s)
		})
	}
}

// The conformance suite on a read-only bind mount of a store, written
// through the writable original.
func TestConformanceReadOnly(t *testing.T) {
	storetest.Run(t, func(t *testing.T) *storetest.Backend {
		w := open(t, t.TempDir())
		dir := mount(t, w.Dir(), "", unix.MS_BIND, "")
		remountRO(t, dir, unix.MS_BIND)
		s, err := local.Open(dir, false)
		if err != nil {
			t.Fatal(err)
		}
		return &storetest.Backend{Store: s, Writer: w, ReadOnly: true, Corrupt: storetest.CorruptLocal(w)}
	})
}
