// Package testcache watches a node cache while a test fills it: its
// largest size on disk, against the bound it is to keep.
package testcache

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mkbootfs/mkbootfs/nodecache"
)

// Watch is a node cache's size, sampled every 50 ms.
type Watch struct {
	peak atomic.Pointer[nodecache.Usage] // the largest sampled
	done chan struct{}
	wg   sync.WaitGroup
}

// Start samples the size of the node cache at dir (nodecache.Du's total)
// until Stop.
func Start(dir string) *Watch {
	w := &Watch{done: make(chan struct{})}
	w.wg.Go(func() {
		for {
			if u, err := nodecache.Du(context.Background(), dir); err == nil && u.Total > w.Peak() {
				w.peak.Store(u)
			}
			select {
			case <-w.done:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	})
	return w
}

// Peak is the largest size sampled so far.
func (w *Watch) Peak() int64 {
	if u := w.peak.Load(); u != nil {
		return u.Total
	}
	return 0
}

// Stop stops the sampling and fails the test, saying what the cache held
// at its peak, if it held more than an eviction batch (a sixteenth of
// bound) past bound, or never half of it (the test did not fill it).
func (w *Watch) Stop(t testing.TB, bound int64) {
	t.Helper()
	close(w.done)
	w.wg.Wait()
	p := w.Peak()
	t.Logf("the node cache's peak: %d bytes (%s), bound %d, bound and a batch %d", p, nodecache.FormatSize(p), bound, bound+bound/16)
	if p > bound+bound/16 {
		u := w.peak.Load()
		t.Errorf("the node cache held %s, more than a batch past its bound %s: chunks %s, temporary %s, %d trees, %d profiles, foreign %s", nodecache.FormatSize(p), nodecache.FormatSize(bound),
			nodecache.FormatSize(u.Chunks.Bytes), nodecache.FormatSize(u.Temp.Bytes), len(u.Trees), len(u.Profiles), nodecache.FormatSize(u.Foreign.Bytes))
	} else if p < bound/2 {
		t.Errorf("the node cache held at most %s: the test never filled it", nodecache.FormatSize(p))
	}
}
