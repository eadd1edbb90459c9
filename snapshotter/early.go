package snapshotter

import (
	"context"
	"strings"
	"time"

	"github.com/mkbootfs/mkbootfs/imagemount"
	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/location"
	"github.com/mkbootfs/mkbootfs/store/ocistore"
)

// earlyPrefetch bounds a prefetch before the mount: past it, the mount
// process's own prefetch and the app's reads fetch what is left.
const earlyPrefetch = time.Minute

// prefetchEarly fetches into the node cache the first n chunks of the
// chunk table the first oci:// store of stores is pinned to: a boot
// image's profile's chunks, in the order a start reads them, as its
// config's labels say (bootimage.LabelPrefetch). It runs while the pull
// of the image's own layer goes on, not after it, as the mount process's
// prefetch must (it reads the index and profile from that layer): the
// table's first part comes with the layer, the chunks once layerIn is
// closed (the mount, and so the container's creation, waits for the
// layer; these fetches would take most of the link). The mount process
// finds them in the node cache, or waits for their fetch (the cache's
// chunk locks hold across processes), and fetches none again. Failures
// are left to the mount process, which says why.
func (ms *mounts) prefetchEarly(image string, stores []string, n int, layerIn <-chan struct{}) {
	i := 0
	for i < len(stores) && !strings.HasPrefix(stores[i], "oci://") {
		i++
	}
	if n <= 0 || i == len(stores) || !strings.Contains(stores[i], "@") || !ms.startEarly(image) {
		return
	}
	defer ms.endEarly(image)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), earlyPrefetch)
	defer cancel()
	var oci *ocistore.Store
	var counted *countingStore
	st, err := imagemount.Open(ctx, stores[i:i+1], imagemount.Options{
		Cache: ms.cache, CacheSize: ms.cacheSize, CacheMaxAge: ms.cacheMaxAge, Log: func(s string) { ms.log.Print(s) },
		Stores: location.Options{
			RegistryHost: chunkRegistries(ms.hostsDir, imagemount.ProfileWorkers),
			Wrap: func(loc string, s store.Store) store.Store {
				oci, _ = s.(*ocistore.Store)
				counted = &countingStore{Store: s, url: loc}
				return counted
			},
		},
	})
	if err != nil {
		ms.log.Printf("%s: no prefetch before its mount: %v", image, err)
		return
	}
	cache, ok := st.(*store.Cache)
	defer func() {
		st.Close()
		if ok && counted != nil {
			ms.countEarly(counted.stats(), cache.Stats())
		}
	}()
	if oci == nil || !ok {
		return
	}
	ids, err := oci.Leading(ctx, n)
	if err != nil {
		ms.log.Printf("%s: no prefetch before its mount: %v", image, err)
		return
	}
	// The own layer first: the mount, and so the container's creation,
	// waits for it, and these fetches would take most of the link.
	select {
	case <-layerIn:
	case <-ctx.Done():
		return
	}
	fetched, failed := imagemount.Fetch(ctx, cache, ids, imagemount.ProfileWorkers)
	ms.log.Printf("%s: prefetched the profile's %d chunks before its mount in %v (%d fetched, %d failed)", image, len(ids), time.Since(start).Round(time.Millisecond), fetched, failed)
}

// startEarly reports whether no prefetch of image runs, and says one does.
func (ms *mounts) startEarly(image string) bool {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	if ms.early[image] {
		return false
	}
	if ms.early == nil {
		ms.early = map[string]bool{}
	}
	ms.early[image] = true
	return true
}

func (ms *mounts) endEarly(image string) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	delete(ms.early, image)
}

// countEarly adds what a prefetch before a mount fetched to the node's
// counts (metrics): the mount processes count only their own fetches.
func (ms *mounts) countEarly(st storeStats, cs store.CacheStats) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	if ms.earlyStores == nil {
		ms.earlyStores = map[string]*storeStats{}
	}
	sum := ms.earlyStores[st.URL]
	if sum == nil {
		sum = &storeStats{URL: st.URL, Seconds: make([]float64, len(latencyBuckets)+1)}
		ms.earlyStores[st.URL] = sum
	}
	sum.add(st)
	ms.earlyHits += cs.Hits
	ms.earlyMisses += cs.Misses
}
