package bootinit

import (
	"context"

	"github.com/mkbootfs/mkbootfs/imagemount"
	"github.com/mkbootfs/mkbootfs/index"
	"github.com/mkbootfs/mkbootfs/store"
)

const restWorkers = 4

// prefetch fetches into the cache, in the background, the chunks of the
// image's profile in the order the profile reads them and, with all, every
// other chunk in stream order, so that a long-running container stops
// depending on the network; chunks the cache has are not read. It stops
// when ctx ends; failures are left to the reads that need them (see
// imagemount.Fetch).
//
// Once the profile's chunks are all in, it calls profiledIn. A start that
// found them all in the cache (a warm one: the app waits on nothing) then
// fetches the chunks rest (the rest of the profile's files: a boot tree
// holds files whole, and a profile's reads are often parts of them).
//
// restWorkers fetch the rest: few, for the app's sake, which they would
// slow on a busy node (each chunk is verified and decompressed on
// arrival).
//
// done gets, with the counts, whether every chunk of rest is in the cache
// by then: whether a tree maker can finish.
func prefetch(ctx context.Context, x *index.Index, cache *store.Cache, profiled, rest []int, all bool, profiledIn func(), done func(fetched, failed int, restIn bool)) {
	seen := map[store.ID]bool{}
	fetched, failed := imagemount.Fetch(ctx, cache, imagemount.IDs(x, profiled, seen), imagemount.ProfileWorkers)
	if ctx.Err() == nil && failed == 0 {
		profiledIn()
	}
	// Nothing fetched from the network since the start began: a warm one.
	if cache.Stats().FetchedBytes == 0 && failed == 0 && len(rest) > 0 && ctx.Err() == nil {
		n, f := imagemount.Fetch(ctx, cache, imagemount.IDs(x, rest, seen), restWorkers)
		fetched, failed = fetched+n, failed+f
	}
	if all && ctx.Err() == nil {
		every := make([]int, len(x.Chunks))
		for i := range every {
			every[i] = i
		}
		n, f := imagemount.Fetch(ctx, cache, imagemount.IDs(x, every, seen), imagemount.RestWorkers)
		fetched, failed = fetched+n, failed+f
	}
	restIn := ctx.Err() == nil && failed == 0
	for i := 0; restIn && i < len(rest); i++ {
		restIn = cache.Cached(ctx, store.ID(x.Chunks[rest[i]].ID))
	}
	done(fetched, failed, restIn)
}
