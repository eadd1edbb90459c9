package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/singleflight"
	"golang.org/x/sys/unix"
)

// CacheDir is the local side of a Cache: a store in a directory, such as
// store/local's, that the cache fills and keeps its lock file in.
type CacheDir interface {
	Store
	// Dir is the store's directory.
	Dir() string
	// Path is the file that holds chunk id.
	Path(id ID) string
	// PutNoSync is Put without fsync: a chunk torn by a crash fails
	// verification on its next read and is fetched again.
	PutNoSync(ctx context.Context, id ID, compressed []byte) error
}

// lockName is the cache's lock file: one byte-range lock per chunk (at an
// offset taken from the chunk ID) serialises fetches of a chunk across every
// process sharing the directory, without a lock file per chunk to clean up.
const lockName = ".mkbootfs-cache.lock"

// Cache is a Store that layers a local directory over a remote store. A
// chunk is fetched from the remote once, verified, and kept in the
// directory; many processes (the mounts of a node) may share one directory,
// and each chunk is fetched once among all of them.
//
// Cache implements Loader: a miss decodes and verifies the chunk once and
// returns the decoded bytes, while writers keep the chunk in the directory
// behind it: a file creation costs about as much as the fetch from a local
// store, and the read need not wait for it.
//
// The directory keeps chunks uncompressed (EncodeRaw: still zstd frames, so
// still a casync store): every container start reads its working set again
// through a new mount, and decompressing it each time cost more CPU than
// verifying it (BenchmarkDecode: 0.57 against 1.6 GB/s), on the cores the
// starting container needs. It takes about 2.5 times the disk.
type Cache struct {
	local  CacheDir
	remote Store
	lock   *os.File        // open description holding this process's chunk locks
	lockFd syscall.RawConn // lock's, kept from closing while a lock call uses it

	flight singleflight.Group // in-process: one fetch per chunk at a time

	// Chunks fetched but not yet in the directory; a writer holds each
	// one's lock until its file is in place.
	mu      sync.Mutex
	pending map[ID][]byte
	writes  chan write
	writers sync.WaitGroup

	// Close stops new fetches, lets those under way end for a moment,
	// then cancels ctx, which every fetch runs under; once closed, a
	// fetched chunk is no longer queued for a writer.
	ctx             context.Context
	cancel          context.CancelFunc
	fetches         sync.WaitGroup
	closing, closed bool

	hits, misses, fetched, fetchErrs, repaired, writeErrs atomic.Int64
}

// CacheStats counts what a Cache did since it was opened.
type CacheStats struct {
	Hits         int64 // chunks served from the directory
	Misses       int64 // chunks fetched from the remote
	FetchedBytes int64 // compressed bytes fetched from the remote
	FetchErrors  int64 // fetches that failed (missing, corrupt, unreachable)
	Repaired     int64 // corrupt chunks found in the directory and replaced
	WriteErrors  int64 // chunks fetched but not kept (disk full, read-only)
}

// NewCache returns a cache of remote in local. Close closes both.
func NewCache(local CacheDir, remote Store) (*Cache, error) {
	name := filepath.Join(local.Dir(), lockName)
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("cache %s: lock file: %w (the cache directory must be writable)", local.Dir(), err)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	c := &Cache{
		local: local, remote: remote, lock: f, lockFd: rc,
		pending: map[ID][]byte{},
		writes:  make(chan write, queuedWrites),
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	for range cacheWriters {
		c.writers.Go(func() {
			for w := range c.writes {
				c.keep(w)
			}
		})
	}
	return c, nil
}

func (c *Cache) String() string { return c.local.Dir() + " (cache of " + c.remote.String() + ")" }

// Stats returns the counters.
func (c *Cache) Stats() CacheStats {
	return CacheStats{
		Hits:         c.hits.Load(),
		Misses:       c.misses.Load(),
		FetchedBytes: c.fetched.Load(),
		FetchErrors:  c.fetchErrs.Load(),
		Repaired:     c.repaired.Load(),
		WriteErrors:  c.writeErrs.Load(),
	}
}

// finishWait bounds how long Close lets the fetches under way end before
// it cancels them. A chunk half received when the app exits is kept, so
// that the next start goes on from there instead of fetching it again: on
// a slow link a short command's start ended every background fetch of the
// rest of its profile's files (what a boot tree is made of) mid-chunk, and
// its tree was never made. It is short enough not to be felt at exit.
const finishWait = 60 * time.Millisecond

// closeWait bounds how long Close waits for cancelled fetches to end: a
// remote that ignores its context must not hold up the exit.
const closeWait = 500 * time.Millisecond

// Close stops new fetches, lets those under way end for finishWait, then
// cancels the rest (they fail as cancelled and keep nothing), and waits
// for the writes of chunks fetched, which are local and quick; then it
// closes the lock file, the directory store and the remote. It does not
// wait for a hung remote: once the app has exited, its container must not
// outlive it by a fetch timeout.
func (c *Cache) Close() error {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return nil
	}
	c.closing = true
	c.mu.Unlock()
	fetched := make(chan struct{})
	go func() { c.fetches.Wait(); close(fetched) }()
	select {
	case <-fetched:
	case <-time.After(finishWait):
		c.cancel()
		select {
		case <-fetched:
		case <-time.After(closeWait):
		}
	}
	c.cancel()
	c.mu.Lock()
	c.closed = true
	close(c.writes)
	c.mu.Unlock()
	c.writers.Wait()
	return errors.Join(c.lock.Close(), c.local.Close(), c.remote.Close())
}

// errClosed is the error of fetches that Close cancelled.
var errClosed = fmt.Errorf("cache closed: %w", context.Canceled)

// Load implements Loader: chunk id, verified, from the directory or else
// fetched from the remote and kept.
func (c *Cache) Load(ctx context.Context, id ID) ([]byte, error) {
	if data, ok, _ := c.readLocal(ctx, id); ok {
		c.hits.Add(1)
		return data, nil
	}
	_, data, err := c.fill(ctx, id)
	return data, err
}

// Fetch makes sure chunk id is in the directory, fetching and keeping it
// if it is not; a chunk already there is not read. Prefetching uses it.
func (c *Cache) Fetch(ctx context.Context, id ID) error {
	if c.Cached(ctx, id) {
		return nil
	}
	_, _, err := c.fill(ctx, id)
	return err
}

// Cached reports whether chunk id is in the directory, or on its way there.
func (c *Cache) Cached(ctx context.Context, id ID) bool {
	if _, ok := c.pendingRaw(id); ok {
		return true
	}
	ok, err := c.local.Has(ctx, id)
	return err == nil && ok
}

// Get implements Store: the compressed bytes, from the directory (as stored,
// unverified, like any Get) or else fetched, verified and kept.
func (c *Cache) Get(ctx context.Context, id ID) ([]byte, error) {
	if raw, ok := c.pendingRaw(id); ok {
		c.hits.Add(1)
		return raw, nil
	}
	if raw, err := c.local.Get(ctx, id); err == nil {
		c.hits.Add(1)
		return raw, nil
	}
	raw, _, err := c.fill(ctx, id)
	return raw, err
}

// Has implements Store: the directory or the remote holds id.
func (c *Cache) Has(ctx context.Context, id ID) (bool, error) {
	if ok, err := c.local.Has(ctx, id); err == nil && ok {
		return true, nil
	}
	return c.remote.Has(ctx, id)
}

// Put implements Store: the chunk goes to the remote, then the directory.
func (c *Cache) Put(ctx context.Context, id ID, compressed []byte) error {
	if err := c.remote.Put(ctx, id, compressed); err != nil {
		return err
	}
	return c.local.PutNoSync(ctx, id, compressed)
}

func (c *Cache) pendingRaw(id ID) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	raw, ok := c.pending[id]
	return raw, ok
}

// readLocal returns chunk id, verified, from the directory or on its way
// there, if it is there and sound; corrupt reports a file that is there but
// unsound. Pending chunks are looked at first: a writer removes one only
// once its file is in place. A file's bytes are decoded where they were
// read (DecodeInPlace); a pending chunk's, which its writer still uses, are
// copied.
func (c *Cache) readLocal(ctx context.Context, id ID) (data []byte, ok, corrupt bool) {
	if raw, ok := c.pendingRaw(id); ok {
		data, err := Decode(id, raw)
		return data, err == nil, err != nil
	}
	raw, err := c.local.Get(ctx, id)
	if err != nil {
		return nil, false, !errors.Is(err, ErrNotFound)
	}
	if data, err = DecodeInPlace(id, raw); err != nil {
		return nil, false, true
	}
	return data, true, false
}

type filled struct{ raw, data []byte }

// fetchContext returns the context of a fetch that ctx's caller starts.
// The fetch is shared, and what it fetches is kept, so its caller giving
// up does not end it: a read interrupted, or a prefetch stopped at the
// app's exit, leaves the chunk to come in. It keeps the caller's deadline,
// so it cannot hang, and Close cancels it.
func (c *Cache) fetchContext(ctx context.Context) (context.Context, context.CancelFunc) {
	fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	if d, ok := ctx.Deadline(); ok {
		cancel()
		fctx, cancel = context.WithDeadline(context.WithoutCancel(ctx), d)
	}
	stop := context.AfterFunc(c.ctx, cancel)
	return fctx, func() { stop(); cancel() }
}

// fill fetches chunk id into the directory, once per chunk among the
// goroutines of this process and, through the chunk's lock, among the
// processes sharing the directory.
func (c *Cache) fill(ctx context.Context, id ID) (raw, data []byte, err error) {
	ch := c.flight.DoChan(string(id[:]), func() (any, error) {
		c.mu.Lock()
		if c.closing {
			c.mu.Unlock()
			return nil, &ChunkError{ID: id, Store: c.String(), Err: errClosed}
		}
		c.fetches.Add(1)
		c.mu.Unlock()
		defer c.fetches.Done()
		fctx, cancel := c.fetchContext(ctx)
		defer cancel()
		raw, data, err := c.fetch(fctx, id)
		return filled{raw, data}, err
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, nil, r.Err
		}
		f := r.Val.(filled)
		if r.Shared {
			// Each caller owns what Load returns.
			return f.raw, bytes.Clone(f.data), nil
		}
		return f.raw, f.data, nil
	case <-ctx.Done():
		return nil, nil, &ChunkError{ID: id, Store: c.remote.String(), Err: ctx.Err()}
	case <-c.ctx.Done(): // closed, and the remote ignores its context
		return nil, nil, &ChunkError{ID: id, Store: c.remote.String(), Err: errClosed}
	}
}

// Writes wait in a queue of queuedWrites chunks for cacheWriters writers;
// when it is full, the fetch writes its chunk itself.
const (
	queuedWrites = 32
	cacheWriters = 2
)

// write is a chunk to keep in the directory, and the unlock of its lock.
type write struct {
	id     ID
	raw    []byte
	unlock func()
}

func (c *Cache) fetch(ctx context.Context, id ID) (raw, data []byte, err error) {
	unlock, err := c.lockChunk(ctx, id)
	if err != nil {
		return nil, nil, c.failed(id, err)
	}
	kept := false // the chunk's lock passes to its writer
	defer func() {
		if !kept {
			unlock()
		}
	}()

	// Another process may have fetched it while we waited for the lock; a
	// corrupt copy (a crash tore it, a disk flipped bits) is replaced.
	data, ok, corrupt := c.readLocal(ctx, id)
	if ok {
		c.hits.Add(1)
		return EncodeRaw(data), data, nil // as kept, for Get
	}
	if corrupt && os.Remove(c.local.Path(id)) == nil {
		c.repaired.Add(1)
	}

	raw, err = c.remote.Get(ctx, id)
	if err == nil {
		data, err = Decode(id, raw)
	}
	if err != nil {
		return nil, nil, c.failed(id, err)
	}
	c.misses.Add(1)
	c.fetched.Add(int64(len(raw)))
	raw = EncodeRaw(data)
	c.mu.Lock()
	if c.closed { // Close gave up waiting for this fetch: nobody writes it
		c.mu.Unlock()
		return raw, data, nil
	}
	c.pending[id] = raw
	kept = true
	w := write{id, raw, unlock}
	select {
	case c.writes <- w:
		c.mu.Unlock()
	default:
		c.mu.Unlock()
		c.keep(w)
	}
	return raw, data, nil
}

// failed counts and wraps the error of a fetch of chunk id; a fetch that
// Close cancelled is not the store's failure, and says so.
func (c *Cache) failed(id ID, err error) error {
	if c.ctx.Err() != nil {
		return &ChunkError{ID: id, Store: c.remote.String(), Err: errClosed}
	}
	c.fetchErrs.Add(1)
	var ce *ChunkError
	if errors.As(err, &ce) {
		return err
	}
	return &ChunkError{ID: id, Store: c.remote.String(), Err: err}
}

// keep writes a fetched chunk to the directory, then releases it. Failing
// to keep it costs a later refetch, not a read.
func (c *Cache) keep(w write) {
	if err := c.local.PutNoSync(context.Background(), w.id, w.raw); err != nil {
		c.writeErrs.Add(1)
	}
	c.mu.Lock()
	delete(c.pending, w.id)
	c.mu.Unlock()
	w.unlock()
}

// lockChunk takes the chunk's lock in the cache's lock file: an open file
// description lock (released when this process dies, even by SIGKILL) on
// one byte at an offset drawn from the ID. It polls rather than blocks, so
// that it gives up when ctx ends, every 5 ms at most: a read waiting on
// another process's fetch (the snapshotter's daemon prefetches for its
// mount processes) goes on within 5 ms of its end, not 20.
func (c *Cache) lockChunk(ctx context.Context, id ID) (unlock func(), err error) {
	lk := unix.Flock_t{
		Type:   unix.F_WRLCK,
		Whence: 0,
		Start:  int64(binary.BigEndian.Uint64(id[:8]) >> 1),
		Len:    1,
	}
	wait := 500 * time.Microsecond
	for {
		err := c.fcntlLock(&lk)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EACCES) && !errors.Is(err, unix.EINTR) {
			return nil, &ChunkError{ID: id, Store: c.local.Dir(), Err: fmt.Errorf("locking the chunk in %s: %w", lockName, err)}
		}
		select {
		case <-ctx.Done():
			return nil, &ChunkError{ID: id, Store: c.local.Dir(), Err: fmt.Errorf("waiting for another process fetching the chunk: %w", ctx.Err())}
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Millisecond)
	}
	return func() {
		lk.Type = unix.F_UNLCK
		c.fcntlLock(&lk)
	}, nil
}

// fcntlLock sets or clears lk on the lock file, unless it is closed: a
// fetch that outlived Close must not lock another file that took its
// descriptor's number.
func (c *Cache) fcntlLock(lk *unix.Flock_t) error {
	var err error
	if cerr := c.lockFd.Control(func(fd uintptr) { err = unix.FcntlFlock(fd, unix.F_OFD_SETLK, lk) }); cerr != nil {
		return cerr
	}
	return err
}
