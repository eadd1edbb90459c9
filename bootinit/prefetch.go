package bootinit

import (
	"context"
	"sync"

	"github.com/mkbootfs/mkbootfs/index"
	"github.com/mkbootfs/mkbootfs/store"
)

// prefetchWorkers bounds the background fetches, leaving the store's other
// connections to the app's own reads.
const prefetchWorkers = 2

// prefetchAll fetches every chunk of the image into the cache in stream
// order, so that a long-running container stops depending on the network.
// It stops when ctx ends; failures are left to the reads that need them.
func prefetchAll(ctx context.Context, x *index.Index, st store.Store, done func(fetched, failed int)) {
	ids := make(chan store.ID)
	var wg sync.WaitGroup
	var mu sync.Mutex
	fetched, failed := 0, 0
	for range prefetchWorkers {
		wg.Go(func() {
			for id := range ids {
				_, err := store.Load(ctx, st, id)
				mu.Lock()
				if err != nil {
					failed++
				} else {
					fetched++
				}
				mu.Unlock()
			}
		})
	}
	seen := map[[32]byte]bool{}
	for _, c := range x.Chunks {
		if seen[c.ID] {
			continue
		}
		seen[c.ID] = true
		select {
		case ids <- store.ID(c.ID):
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(ids)
	wg.Wait()
	done(fetched, failed)
}
