package local

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/internal/testenv"
	"github.com/mkbootfs/mkbootfs/store"
)

// A writer that reuses chunks with Keep while GC sweeps never keeps a
// chunk that GC removes: whenever Keep reports a chunk present, it is
// there after the collection. Every chunk is old and no index names it, so
// GC removes each one the writers do not touch first; two writers touch
// chunks at random from the end of the scan until GC returns.
func TestGCRacesKeep(t *testing.T) {
	testenv.Root(t)
	ctx := context.Background()
	var spared, removed int
	for round := range 20 {
		// tmpfs: the test is about the order of renames and touches, not
		// about a disk's speed.
		dir := t.TempDir()
		if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=16m"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Unmount(dir, 0) })
		s, err := Open(dir, false)
		if err != nil {
			t.Fatal(err)
		}
		ids := make([]store.ID, 500)
		then := time.Now().Add(-2 * time.Hour)
		for i := range ids {
			ids[i] = store.Sum([]byte{byte(round), byte(i), byte(i >> 8)})
			p := s.Path(ids[i])
			os.MkdirAll(filepath.Dir(p), 0o755)
			if err := os.WriteFile(p, []byte("a chunk"), 0o644); err != nil {
				t.Fatal(err)
			}
			os.Chtimes(p, then, then)
		}
		kept := make([]atomic.Bool, len(ids))
		var wg sync.WaitGroup
		var done atomic.Bool
		writers := func() {
			for w := range 2 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rnd := rand.New(rand.NewPCG(uint64(round), uint64(w)))
					for !done.Load() {
						i := rnd.IntN(len(ids))
						ok, err := s.Keep(ctx, ids[i])
						if err != nil {
							t.Error(err)
							return
						}
						if ok {
							kept[i].Store(true)
						}
					}
				}()
			}
		}
		st, err := s.GC(ctx, []Root{{Name: "x.idx"}}, GCOptions{KeepNewer: time.Hour, afterScan: writers})
		done.Store(true)
		wg.Wait()
		if err != nil {
			t.Fatal(err)
		}
		for i, id := range ids {
			if _, err := os.Lstat(s.Path(id)); kept[i].Load() && err != nil {
				t.Fatalf("round %d: Keep reported chunk %s present, and GC removed it", round, id.Short())
			}
		}
		spared += st.Recent
		removed += st.Removed
	}
	t.Logf("20 rounds of 500 chunks: %d removed, %d spared by a touch during the sweep", removed, spared)
	if spared == 0 || removed == 0 {
		t.Errorf("the writers and the sweep did not overlap: %d spared, %d removed", spared, removed)
	}
}
