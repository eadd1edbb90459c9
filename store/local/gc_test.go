package local_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/local"
)

// age sets the times of path to d ago.
func age(t testing.TB, path string, d time.Duration) {
	t.Helper()
	then := time.Now().Add(-d)
	if err := os.Chtimes(path, then, then); err != nil {
		t.Fatal(err)
	}
}

// putOld stores n chunks from seed on and ages them two hours.
func putOld(t testing.TB, s *local.Store, seed, n int) []store.ID {
	t.Helper()
	var ids []store.ID
	for k := range n {
		data := chunk(uint64(seed+k), 2000+k)
		id := store.Sum(data)
		if err := s.PutNoSync(context.Background(), id, store.Encode(data)); err != nil {
			t.Fatal(err)
		}
		age(t, s.Path(id), 2*time.Hour)
		ids = append(ids, id)
	}
	return ids
}

func exists(p string) bool { _, err := os.Lstat(p); return err == nil }

// GC keeps what an index names and what is recent, removes the rest and
// the temporary files of dead writers, finishes what an interrupted
// collection left, and leaves foreign files alone. A dry run counts the
// same and changes nothing.
func TestGC(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	live := putOld(t, s, 0, 5)
	dead := putOld(t, s, 100, 5)
	recent := putOld(t, s, 200, 2)
	for _, id := range recent {
		age(t, s.Path(id), time.Minute)
	}
	// A truncated chunk an index names stays; one no index names goes.
	os.Truncate(s.Path(live[0]), 3)
	os.Truncate(s.Path(dead[0]), 0)
	age(t, s.Path(live[0]), 2*time.Hour)
	age(t, s.Path(dead[0]), 2*time.Hour)
	// An interrupted collection renamed a live chunk and a dead one away.
	liveGrave := s.Path(live[1]) + ".0123456789abcdef.gc"
	deadGrave := s.Path(dead[1]) + ".0123456789abcdef.gc"
	os.Rename(s.Path(live[1]), liveGrave)
	os.Rename(s.Path(dead[1]), deadGrave)
	// Temporary files: a dead writer's and a running one's.
	oldTmp := s.Path(dead[2]) + ".00000000000000aa.tmp"
	newTmp := s.Path(dead[2]) + ".00000000000000bb.tmp"
	os.WriteFile(oldTmp, []byte("x"), 0o644)
	age(t, oldTmp, 2*time.Hour)
	os.WriteFile(newTmp, []byte("x"), 0o644)
	// Foreign files, old, in the shards and at the top.
	shard := filepath.Dir(s.Path(dead[3]))
	foreign := []string{
		filepath.Join(s.Dir(), "README"),
		filepath.Join(shard, "notes.txt"),
		filepath.Join(shard, strings.ToUpper(dead[3].String())+".cacnk"),
		s.Path(dead[3]) + ".bak",
		filepath.Join(filepath.Dir(s.Path(dead[4])), "ffff"+strings.Repeat("0", 60)+".cacnk"), // in the wrong shard
	}
	for _, f := range foreign {
		os.WriteFile(f, []byte("not a chunk"), 0o644)
		age(t, f, 2*time.Hour)
	}
	missing := store.Sum([]byte("named by the index, not in the store"))
	roots := []local.Root{{Name: "a.idx", Chunks: live[:3]}, {Name: "b.idx", Chunks: append(slices.Clone(live[2:]), missing)}}

	want := local.GCStats{
		Chunks: 12, Referenced: 5, Recent: 2, Removed: 5,
		Missing: 1, Temps: 1, Foreign: len(foreign),
	}
	for _, dry := range []bool{true, false} {
		got, err := s.GC(ctx, roots, local.GCOptions{KeepNewer: time.Hour, DryRun: dry})
		if err != nil {
			t.Fatalf("GC (dry run %v): %v", dry, err)
		}
		got.Bytes, got.ReferencedBytes, got.RecentBytes, got.RemovedBytes = 0, 0, 0, 0
		want.DryRun = dry
		if got != want {
			t.Errorf("GC (dry run %v) = %+v\nwant %+v", dry, got, want)
		}
		if dry && !exists(s.Path(dead[2])) {
			t.Fatal("a dry run removed a chunk")
		}
	}
	for _, id := range append(slices.Clone(live), recent...) {
		if !exists(s.Path(id)) {
			t.Errorf("chunk %s, to keep, is gone", id.Short())
		}
	}
	for _, id := range dead {
		if exists(s.Path(id)) {
			t.Errorf("chunk %s, no index's and old, is still there", id.Short())
		}
	}
	for _, p := range []string{liveGrave, deadGrave, oldTmp} {
		if exists(p) {
			t.Errorf("%s is still there", p)
		}
	}
	for _, p := range append(foreign, newTmp) {
		if !exists(p) {
			t.Errorf("%s was removed", p)
		}
	}
}

// GC refuses, and removes nothing, where a mistake would lose chunks: a
// directory that is not a store, a store that holds none of an index's
// chunks, a read-only store.
func TestGCRefuses(t *testing.T) {
	ctx := context.Background()
	t.Run("not a store", func(t *testing.T) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "photo.jpg"), []byte("x"), 0o644)
		age(t, filepath.Join(dir, "photo.jpg"), 2*time.Hour)
		os.Mkdir(filepath.Join(dir, "src"), 0o755)
		s := open(t, dir)
		_, err := s.GC(ctx, []local.Root{{Name: "x.idx", Chunks: []store.ID{{1}}}}, local.GCOptions{})
		if err == nil || !strings.Contains(err.Error(), "is not a chunk store") || !strings.Contains(err.Error(), "Nothing was removed") {
			t.Errorf("GC of a directory that is no store: %v", err)
		}
		if !exists(filepath.Join(dir, "photo.jpg")) {
			t.Error("the foreign file is gone")
		}
	})
	t.Run("wrong store", func(t *testing.T) {
		s := open(t, t.TempDir())
		ids := putOld(t, s, 0, 3)
		other := []store.ID{store.Sum([]byte("another store's chunk"))}
		_, err := s.GC(ctx, []local.Root{{Name: "mine.idx", Chunks: ids[:1]}, {Name: "theirs.idx", Chunks: other}}, local.GCOptions{})
		if err == nil || !strings.Contains(err.Error(), "holds none of the 1 chunks of theirs.idx") {
			t.Errorf("GC with another store's index: %v", err)
		}
		if got := walk(t, s); len(got) != 3 {
			t.Errorf("the store holds %d chunks after a refused GC, want 3", len(got))
		}
	})
	t.Run("read-only", func(t *testing.T) {
		dir := mount(t, t.TempDir(), "", unix.MS_BIND, "")
		s := open(t, dir)
		putOld(t, s, 0, 3)
		remountRO(t, dir, unix.MS_BIND)
		_, err := s.GC(ctx, []local.Root{{Name: "x.idx", Chunks: walk(t, s)[:1]}}, local.GCOptions{})
		checkErr(t, err, unix.EROFS, dir, "nothing was removed")
		if got, err := s.GC(ctx, []local.Root{{Name: "x.idx", Chunks: walk(t, s)[:1]}}, local.GCOptions{DryRun: true}); err != nil || got.Removed != 2 {
			t.Errorf("a dry run of a read-only store: %+v, %v; want 2 to remove", got, err)
		}
	})
}

// GC of a full store removes what no index names and keeps the rest:
// collecting frees space, it needs none.
func TestGCFullDisk(t *testing.T) {
	ctx := context.Background()
	dir := mount(t, "tmpfs", "tmpfs", 0, "size=256k")
	s := open(t, dir)
	var ids []store.ID
	for k := range 1000 {
		data := chunk(uint64(k), 16<<10)
		id := store.Sum(data)
		if err := s.PutNoSync(ctx, id, store.Encode(data)); err != nil {
			if !errors.Is(err, unix.ENOSPC) {
				t.Fatalf("filling the store: %v", err)
			}
			break
		}
		age(t, s.Path(id), 2*time.Hour)
		ids = append(ids, id)
	}
	if len(ids) < 4 || len(ids) == 1000 {
		t.Fatalf("%d chunks of 16 KiB filled a 256 KiB store", len(ids))
	}
	keep := ids[:len(ids)/2]
	got, err := s.GC(ctx, []local.Root{{Name: "x.idx", Chunks: keep}}, local.GCOptions{KeepNewer: time.Hour})
	if err != nil || got.Removed != len(ids)-len(keep) {
		t.Fatalf("GC of a full store: %+v, %v; want %d removed", got, err, len(ids)-len(keep))
	}
	for _, id := range keep {
		if _, err := store.Load(ctx, s, id); err != nil {
			t.Errorf("kept chunk %s: %v", id.Short(), err)
		}
	}
	if left := walk(t, s); len(left) != len(keep) {
		t.Errorf("the store holds %d chunks, want the %d kept", len(left), len(keep))
	}
}

// BenchmarkHasKeep times Has, the stat a conversion made for each chunk
// it finds present, against Keep, the touch and stat it makes now.
func BenchmarkHasKeep(b *testing.B) {
	ctx := context.Background()
	s := open(b, b.TempDir())
	ids := putOld(b, s, 0, 1000)
	for _, name := range []string{"Has", "Keep"} {
		fn := map[string]func(context.Context, store.ID) (bool, error){"Has": s.Has, "Keep": s.Keep}[name]
		b.Run(name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if ok, err := fn(ctx, ids[i%len(ids)]); !ok || err != nil {
					b.Fatal(ok, err)
				}
			}
		})
	}
}
