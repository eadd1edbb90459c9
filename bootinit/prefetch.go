package bootinit

import (
	"context"
	"sync"

	"github.com/mkbootfs/mkbootfs/index"
	"github.com/mkbootfs/mkbootfs/store"
)

// Background fetches: the profile's chunks are what the app is about to
// read, so many at once hide the link's latency; the rest of the image
// (MKBOOTFS_PREFETCH=all) leaves most of the link to the app's own reads.
const (
	profileWorkers = 8
	restWorkers    = 2
)

// prefetch fetches into the cache, in the background, the chunks of the
// image's profile in the order the profile reads them and, with all, every
// other chunk in stream order, so that a long-running container stops
// depending on the network; chunks the cache has are not read. It stops
// when ctx ends; failures are left to the reads that need them. The app's
// reads never wait for it: a read of a chunk under way joins its fetch,
// any other goes straight to the store.
//
// Once the profile's chunks are all in, it calls profiledIn.
func prefetch(ctx context.Context, x *index.Index, cache *store.Cache, profiled []int, all bool, profiledIn func(), done func(fetched, failed int)) {
	seen := map[[32]byte]bool{}
	var ids []store.ID
	add := func(i int) {
		if id := x.Chunks[i].ID; !seen[id] {
			seen[id] = true
			ids = append(ids, store.ID(id))
		}
	}
	for _, i := range profiled {
		add(i)
	}
	fetched, failed := fetchAll(ctx, cache, ids, profileWorkers)
	if ctx.Err() == nil && failed == 0 {
		profiledIn()
	}
	if all && ctx.Err() == nil {
		ids = ids[:0]
		for i := range x.Chunks {
			add(i)
		}
		n, f := fetchAll(ctx, cache, ids, restWorkers)
		fetched, failed = fetched+n, failed+f
	}
	done(fetched, failed)
}

// fetchAll fetches ids into the cache with workers goroutines, in order.
func fetchAll(ctx context.Context, cache *store.Cache, ids []store.ID, workers int) (fetched, failed int) {
	queue := make(chan store.ID)
	var wg sync.WaitGroup
	var mu sync.Mutex
	for range workers {
		wg.Go(func() {
			for id := range queue {
				err := cache.Fetch(ctx, id)
				mu.Lock()
				switch {
				case err == nil:
					fetched++
				case ctx.Err() == nil: // stopped, not failed, when the app has exited
					failed++
				}
				mu.Unlock()
			}
		})
	}
	for _, id := range ids {
		if ctx.Err() != nil {
			break
		}
		select {
		case queue <- id:
		case <-ctx.Done():
		}
	}
	close(queue)
	wg.Wait()
	return fetched, failed
}
