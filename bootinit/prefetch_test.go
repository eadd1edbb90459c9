package bootinit

import (
	"context"
	"math/rand/v2"
	"testing"

	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/local"
)

// TestPrefetchRest: a cold start fetches the profile's chunks and not the
// rest of its files, and says a tree maker cannot finish; a warm one (the
// profile's chunks all in the cache) fetches the rest, and says it can; a
// start whose app exited first says it cannot.
func TestPrefetchRest(t *testing.T) {
	big := make([]byte, 1<<20)
	for i := range big {
		big[i] = byte(rand.IntN(256))
	}
	x, remote := convertFiles(t, map[string][]byte{"usr/bin/big": big})
	e, err := x.Resolve("/usr/bin/big")
	if err != nil {
		t.Fatal(err)
	}
	first, last, _ := x.ChunkSpan(x.Entries[e].Inode)
	if last-first < 2 {
		t.Fatalf("the file is in %d chunks; the test wants more", last-first+1)
	}
	var rest []int
	for c := first; c <= last; c++ {
		rest = append(rest, c)
	}
	profiled := []int{first}

	start := func(ctx context.Context, cacheDir string) (fetched int, restIn bool, cache *store.Cache) {
		l, err := local.Open(cacheDir, true)
		if err != nil {
			t.Fatal(err)
		}
		cache, err = store.NewCache(l, remote)
		if err != nil {
			t.Fatal(err)
		}
		defer cache.Close()
		prefetch(ctx, x, cache, profiled, rest, false, func() {}, func(n, failed int, in bool) {
			if failed != 0 {
				t.Errorf("%d fetches failed", failed)
			}
			fetched, restIn = n, in
		})
		return fetched, restIn, cache
	}

	dir := t.TempDir()
	if n, in, _ := start(context.Background(), dir); n != 1 || in {
		t.Errorf("cold start: %d chunks fetched, rest in %v; want the profile's 1, and not the rest", n, in)
	}
	if n, in, c := start(context.Background(), dir); n != len(rest) || !in || c.Stats().Misses != int64(len(rest)-1) {
		t.Errorf("warm start: %d chunks fetched (%+v), rest in %v; want all %d in", n, c.Stats(), in, len(rest))
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, in, _ := start(ctx, t.TempDir()); in {
		t.Error("a start whose app exited at once: rest in")
	}
}
