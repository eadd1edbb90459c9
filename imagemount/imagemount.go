// Package imagemount is the one way a boot image's tree is read lazily,
// shared by bootinit (which mounts it in a container) and the
// snapshotter's mount processes (which mount it on a node): the image's
// chunk stores, with failover and retries, under the node cache that
// every image and container of the node share; a check that they serve
// the image before anything reads it; and the fetch of its profile's
// chunks ahead of the app's reads. It links nothing bootinit may not (no
// containerd, no desync): what a caller knows of its place, such as
// bootinit's auth file or containerd's hosts configuration, comes in
// Options.
package imagemount

import (
	"cmp"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/mkbootfs/mkbootfs/index"
	"github.com/mkbootfs/mkbootfs/nodecache"
	"github.com/mkbootfs/mkbootfs/profile"
	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/location"
)

// Fetches at once: the profile's chunks are what a start is about to
// read, so many at once hide the link's latency; the rest of the image
// (bootinit's MKBOOTFS_PREFETCH=all) leaves most of the link to the app's
// own reads.
const (
	ProfileWorkers = 8
	RestWorkers    = 2
)

// StoreTimeout bounds each request to a remote store, by default.
const StoreTimeout = 30 * time.Second

// Options say where a boot image's chunks are read from.
type Options struct {
	// Cache is the node cache's directory; "": none, the stores are read
	// directly (stores on this node, which a cache would only copy).
	Cache string
	// CacheSize bounds the node cache; 0: nodecache's default for its
	// filesystem.
	CacheSize int64
	// CacheMaxAge is how long the node cache keeps trees and profiles
	// unused; 0: nodecache.DefaultMaxAge.
	CacheMaxAge time.Duration
	// Log receives the node cache's lines worth an operator's attention.
	Log func(string)
	// Stores configures the chunk stores (credentials, a wrapper per
	// store); a zero Timeout is StoreTimeout, a zero Parallelism
	// ProfileWorkers.
	Stores location.Options
}

// Open returns the store a boot image's tree is read from: the chunk
// stores at urls, in order, with failover and retries, under the node
// cache when opt.Cache is set (a *store.Cache then).
func Open(ctx context.Context, urls []string, opt Options) (store.Store, error) {
	lo := opt.Stores
	lo.Timeout = cmp.Or(lo.Timeout, StoreTimeout)
	lo.Parallelism = cmp.Or(lo.Parallelism, ProfileWorkers)
	remote, err := location.OpenList(ctx, urls, lo)
	if err != nil || opt.Cache == "" {
		return remote, err
	}
	c, err := nodecache.Open(opt.Cache, remote, nodecache.Options{MaxSize: opt.CacheSize, MaxAge: opt.CacheMaxAge, Log: opt.Log})
	if err != nil {
		remote.Close()
		return nil, fmt.Errorf("node cache: %w", err)
	}
	return c, nil
}

// Check fetches the image's first chunk, within timeout: stores that are
// down, or do not hold the image, fail its mount rather than the app's
// reads.
func Check(ctx context.Context, x *index.Index, st store.Store, timeout time.Duration) error {
	if len(x.Chunks) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	_, err := store.Load(ctx, st, store.ID(x.Chunks[0].ID))
	return err
}

// RegularFiles is p less the paths that are not regular files of x: a
// profile passed to convert by hand may name anything, and what
// prefetches or warms a profile reads what it names.
func RegularFiles(p *profile.Profile, x *index.Index) *profile.Profile {
	out := &profile.Profile{}
	for _, f := range p.Files {
		if e, err := x.Resolve(f.Path); err == nil && x.Inodes[x.Entries[e].Inode].IsRegular() {
			out.Files = append(out.Files, f)
		}
	}
	return out
}

// IDs returns the IDs of x's chunks at indexes, in order, each once and
// only if seen has it not; it adds them to seen.
func IDs(x *index.Index, indexes []int, seen map[store.ID]bool) []store.ID {
	var ids []store.ID
	for _, i := range indexes {
		if id := store.ID(x.Chunks[i].ID); !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	return ids
}

// Fetch fetches ids into the cache with workers goroutines, in order,
// until ctx ends; chunks the cache has are not read. The app's reads never
// wait for it: a read of a chunk under way joins its fetch. Failures are
// left to the reads that need them, and counted; those ctx stopped are
// not.
func Fetch(ctx context.Context, cache *store.Cache, ids []store.ID, workers int) (fetched, failed int) {
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
				case ctx.Err() == nil:
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
