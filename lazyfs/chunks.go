package lazyfs

import (
	"container/list"
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mkbootfs/mkbootfs/index"
	"github.com/mkbootfs/mkbootfs/store"
)

// chunks serves decoded chunks of the data stream: from a small LRU in
// memory, else loaded through the store once however many reads race for
// them; and it fetches ahead of sequential reads.
type chunks struct {
	x       *index.Index
	st      store.Store
	timeout time.Duration
	ahead   int           // chunks to fetch past a sequential read
	workers chan struct{} // slots for readahead fetches

	mu       sync.Mutex
	lru      *list.List // of *chunk, most recent first
	byIndex  map[int]*list.Element
	bytes    int64 // decoded bytes in lru
	maxBytes int64
	inflight map[int]*fetch

	loaded, loadedBytes, memHits, aheadStarted, fetchErrs atomic.Int64
}

type chunk struct {
	i    int
	data []byte
}

// fetch is a load under way; done closes when data or err is set.
type fetch struct {
	done chan struct{}
	data []byte
	err  error
}

func newChunks(x *index.Index, st store.Store, o *Options) *chunks {
	return &chunks{
		x: x, st: st, timeout: o.FetchTimeout, ahead: o.Readahead,
		workers:  make(chan struct{}, o.Fetchers),
		lru:      list.New(),
		byIndex:  map[int]*list.Element{},
		maxBytes: o.MemCache,
		inflight: map[int]*fetch{},
	}
}

// get returns chunk i, decoded and verified. The slice is shared: callers
// must not modify it.
func (c *chunks) get(ctx context.Context, i int) ([]byte, error) {
	c.mu.Lock()
	if e, ok := c.byIndex[i]; ok {
		c.lru.MoveToFront(e)
		c.mu.Unlock()
		c.memHits.Add(1)
		return e.Value.(*chunk).data, nil
	}
	f, ok := c.inflight[i]
	if !ok {
		f = c.start(i)
		c.mu.Unlock()
		c.load(i, f)
		return f.data, f.err
	}
	c.mu.Unlock()
	select {
	case <-f.done:
		return f.data, f.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// start registers a load of chunk i; c.mu is held.
func (c *chunks) start(i int) *fetch {
	f := &fetch{done: make(chan struct{})}
	c.inflight[i] = f
	return f
}

// load fetches chunk i for f. Its context is its own, with a timeout: the
// waiters it serves may outlive the request that started it.
func (c *chunks) load(i int, f *fetch) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	f.data, f.err = store.Load(ctx, c.st, c.x.Chunks[i].ID)
	cancel()
	c.mu.Lock()
	delete(c.inflight, i)
	if f.err == nil {
		c.add(i, f.data)
	}
	c.mu.Unlock()
	close(f.done)
	if f.err != nil {
		c.fetchErrs.Add(1)
		return
	}
	c.loaded.Add(1)
	c.loadedBytes.Add(int64(len(f.data)))
}

// add puts chunk i in the LRU, evicting the least recent; c.mu is held.
func (c *chunks) add(i int, data []byte) {
	if int64(len(data)) > c.maxBytes {
		return
	}
	c.byIndex[i] = c.lru.PushFront(&chunk{i, data})
	c.bytes += int64(len(data))
	for c.bytes > c.maxBytes {
		e := c.lru.Back()
		old := c.lru.Remove(e).(*chunk)
		delete(c.byIndex, old.i)
		c.bytes -= int64(len(old.data))
	}
}

// readahead fetches up to c.ahead chunks after chunk last, up to chunk
// limit, in the background, as far as free fetch slots allow: a busy pool
// drops readahead rather than queue it behind reads.
func (c *chunks) readahead(last, limit int) {
	end := min(last+1+c.ahead, limit+1, len(c.x.Chunks))
	for i := last + 1; i < end; i++ {
		c.mu.Lock()
		_, cached := c.byIndex[i]
		_, loading := c.inflight[i]
		if cached || loading {
			c.mu.Unlock()
			continue
		}
		select {
		case c.workers <- struct{}{}:
		default:
			c.mu.Unlock()
			return
		}
		f := c.start(i)
		c.mu.Unlock()
		c.aheadStarted.Add(1)
		go func() {
			c.load(i, f)
			<-c.workers
		}()
	}
}
