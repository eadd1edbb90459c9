package bootinit

import (
	"context"

	"github.com/mkbootfs/mkbootfs/imagemount"
	"github.com/mkbootfs/mkbootfs/index"
	"github.com/mkbootfs/mkbootfs/store"
)

// prefetch fetches into the cache, in the background, the chunks of the
// image's profile in the order the profile reads them and, with all, every
// other chunk in stream order, so that a long-running container stops
// depending on the network; chunks the cache has are not read. It stops
// when ctx ends; failures are left to the reads that need them (see
// imagemount.Fetch).
//
// Once the profile's chunks are all in, it calls profiledIn.
func prefetch(ctx context.Context, x *index.Index, cache *store.Cache, profiled []int, all bool, profiledIn func(), done func(fetched, failed int)) {
	seen := map[store.ID]bool{}
	fetched, failed := imagemount.Fetch(ctx, cache, imagemount.IDs(x, profiled, seen), imagemount.ProfileWorkers)
	if ctx.Err() == nil && failed == 0 {
		profiledIn()
	}
	if all && ctx.Err() == nil {
		every := make([]int, len(x.Chunks))
		for i := range every {
			every[i] = i
		}
		n, f := imagemount.Fetch(ctx, cache, imagemount.IDs(x, every, seen), imagemount.RestWorkers)
		fetched, failed = fetched+n, failed+f
	}
	done(fetched, failed)
}
