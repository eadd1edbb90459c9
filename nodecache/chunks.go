package nodecache

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/local"
)

// Options bound a node cache. Zero fields take the defaults.
type Options struct {
	// MaxSize bounds the disk bytes of the cache's chunks, trees and
	// profiles (default: DefaultMaxSize of its filesystem). Past it, the
	// least recently used are removed, in batches of a sixteenth.
	MaxSize int64
	// MaxAge is how long a tree or a profile is kept while no start uses
	// it (default 7 days).
	MaxAge time.Duration
	// Log, if set, gets one line on what a user should know: the volume
	// filled up before the bound, a removal that failed.
	Log func(string)
}

// DefaultMaxAge is how long trees and profiles are kept unused.
const DefaultMaxAge = 7 * 24 * time.Hour

// Open returns the chunk cache of remote in the node cache at dir
// (made if need be): a store.Cache over the directory, whose writes are
// counted in the cache's size account and which, once the cache is past
// opt.MaxSize, removes the least recently used chunks and trees in the
// background. A chunk read from the directory that was not used for a
// while has its mtime touched, which is its last use.
func Open(dir string, remote store.Store, opt Options) (*store.Cache, error) {
	d, err := openDir(dir, opt)
	if err != nil {
		return nil, err
	}
	c, err := store.NewCache(d, remote)
	if err != nil {
		d.Close()
		return nil, err
	}
	go d.run()
	return c, nil
}

// openDir opens the directory side of Open, its evictor not started.
func openDir(dir string, opt Options) (*chunkDir, error) {
	l, err := local.Open(dir, true)
	if err != nil {
		return nil, err
	}
	if opt.MaxSize <= 0 {
		opt.MaxSize = DefaultMaxSize(dir)
	}
	if opt.MaxAge <= 0 {
		opt.MaxAge = DefaultMaxAge
	}
	d := &chunkDir{Store: l, dir: dir, opt: opt, wake: make(chan struct{}, 1), done: make(chan struct{})}
	d.touchAfter.Store(int64(maxTouchAfter))
	if a, err := openAccount(dir); err == nil { // else (a full volume) evictions find out by walking
		d.acct.Store(a)
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	return d, nil
}

// Touches on reads: a chunk read is touched when its mtime is older than
// touchAfter, at most once an hour, more often when the cache turns over
// faster (a quarter of the age of the chunks evictions remove), so that the
// hit path makes a syscall per chunk and hour, not per read.
const (
	maxTouchAfter = time.Hour
	minTouchAfter = time.Minute
)

// chunkDir is the directory side of the node's store.Cache: store/local's
// store, counting what it writes and touching what it reads.
type chunkDir struct {
	*local.Store
	dir  string
	opt  Options
	acct atomic.Pointer[account] // nil while it cannot be made (a full volume)

	// Counts written but not yet in the account, per shard.
	pendBytes, pendFiles [shards]atomic.Int64
	pendTotal            atomic.Int64
	seen                 atomic.Int64 // the account's total when last read
	running              atomic.Bool  // run started
	touchAfter           atomic.Int64 // nanoseconds
	full                 atomic.Bool  // a write found the volume full
	loggedFull           atomic.Bool

	wake         chan struct{}
	ctx          context.Context
	cancel       context.CancelFunc
	done         chan struct{}
	closeOnce    sync.Once
	lastRecount  time.Time
	lastSweepTry time.Time
}

// Get implements store.Store: the chunk file's bytes, in four syscalls
// (open, fstat, read, close; os.ReadFile takes six), and a touch when the
// chunk was not used lately.
func (d *chunkDir) Get(ctx context.Context, id store.ID) ([]byte, error) {
	p := d.Path(id)
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, d.readErr(id, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, d.readErr(id, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size > maxChunkFile {
		return nil, &store.ChunkError{ID: id, Store: d.dir, Err: fmt.Errorf("%s: %w: not a chunk file", p, store.ErrCorrupt)}
	}
	b := make([]byte, st.Size)
	for off := 0; off < len(b); {
		n, err := unix.Pread(fd, b[off:], int64(off))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, d.readErr(id, err)
		}
		if n == 0 {
			b = b[:off] // truncated meanwhile: verification tells
			break
		}
		off += n
	}
	d.touched(fd, "", st.Mtim)
	return b, nil
}

// maxChunkFile bounds what Get reads: casync's largest chunk is 256 KiB,
// raw frames add little.
const maxChunkFile = 16 << 20

func (d *chunkDir) readErr(id store.ID, err error) error {
	if errors.Is(err, unix.ENOENT) {
		return &store.ChunkError{ID: id, Store: d.dir, Err: store.ErrNotFound}
	}
	return &store.ChunkError{ID: id, Store: d.dir, Err: &fs.PathError{Op: "read", Path: d.Path(id), Err: err}}
}

// Has implements store.Store; a prefetch asks it of chunks it is about to
// use, so a chunk it finds counts as used.
func (d *chunkDir) Has(ctx context.Context, id store.ID) (bool, error) {
	var st unix.Stat_t
	p := d.Path(id)
	if err := unix.Stat(p, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, &store.ChunkError{ID: id, Store: d.dir, Err: err}
	}
	d.touched(-1, p, st.Mtim)
	return true, nil
}

// touched touches the file (open at fd, or at path) if its mtime is older
// than touchAfter.
func (d *chunkDir) touched(fd int, path string, mtime unix.Timespec) {
	if time.Since(time.Unix(mtime.Unix())) < time.Duration(d.touchAfter.Load()) {
		return
	}
	if fd >= 0 {
		touch(fd)
	} else {
		unix.UtimesNanoAt(unix.AT_FDCWD, path, nil, unix.AT_SYMLINK_NOFOLLOW)
	}
}

// errOver is the write error of a chunk not kept because the cache is
// past its bound by a quarter of a batch: the evictors have not caught up yet.
var errOver = errors.New("the cache is past its bound; the chunk is not kept")

// PutNoSync implements store.CacheDir, counting what it writes; a volume
// found full wakes the evictor. A cache past its bound by a quarter of a batch
// keeps nothing more until evictions catch up: so writers that fetch
// faster than evictors walk cannot take the volume further past.
func (d *chunkDir) PutNoSync(ctx context.Context, id store.ID, compressed []byte) error {
	n := diskBytes(int64(len(compressed)))
	if d.seen.Load()+d.pendTotal.Load()+n > d.opt.MaxSize+d.batch()/4 {
		d.poke()
		return &store.ChunkError{ID: id, Store: d.dir, Err: errOver}
	}
	h := id.String()
	if unix.Mkdir(filepath.Join(d.dir, h[:4]), 0o755) == nil { // counted with the chunk
		n += 4096
	}
	err := d.Store.PutNoSync(ctx, id, compressed)
	if err != nil {
		if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
			d.full.Store(true)
			d.poke()
		}
		return err
	}
	s := idShard(id)
	d.pendBytes[s].Add(n)
	d.pendFiles[s].Add(1)
	if d.pendTotal.Add(n) >= d.flushEvery() && d.acct.Load() != nil {
		// Here, not in the evictor, which may be walking: every writer's
		// view of the total stays within a flush of the truth.
		if r, err := d.flush(); err == nil && r.total() > d.opt.MaxSize {
			d.poke()
		}
	}
	return nil
}

// diskBytes is what a file of n bytes takes on a disk of 4 KiB blocks.
func diskBytes(n int64) int64 { return (n + 4095) &^ 4095 }

// flushEvery is how many bytes written wake the evictor before its tick:
// a 256th of the bound (a flush costs a lock, a read and a write of the
// account, some 20 µs), so that the processes of a node together pass the
// bound by little before one of them evicts.
func (d *chunkDir) flushEvery() int64 { return max(d.opt.MaxSize/256, 32<<10) }

func (d *chunkDir) poke() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// Close stops the evictor, counts what is left, and closes the directory
// store; store.Cache.Close calls it once its writes are done.
func (d *chunkDir) Close() error {
	d.stop()
	return d.Store.Close()
}

func (d *chunkDir) stop() {
	d.closeOnce.Do(func() {
		d.cancel()
		if d.running.Load() {
			select {
			case <-d.done:
			case <-time.After(closeWait):
			}
		}
		if a := d.acct.Load(); a != nil {
			d.flush()
			a.Close()
		}
	})
}

// closeWait bounds how long Close waits for an eviction under way to see
// that it is cancelled: a container's exit must not wait for a disk.
const closeWait = time.Second

// tick is how often the evictor looks at the account when nothing wakes it:
// another process may have written, or made a tree.
const tick = time.Second

// run is the evictor: it counts what this process wrote, and keeps the
// cache within its bound.
func (d *chunkDir) run() {
	d.running.Store(true)
	defer close(d.done)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-d.wake:
		case <-t.C:
		}
		if err := d.check(d.ctx); err != nil && d.ctx.Err() == nil {
			d.log(fmt.Sprintf("cache %s: %v", d.dir, err))
		}
	}
}

// check is one round of the evictor.
func (d *chunkDir) check(ctx context.Context) error {
	acct := d.acct.Load()
	if acct == nil {
		a, err := openAccount(d.dir)
		if err != nil {
			if d.full.Swap(false) {
				d.logFull()
				return d.evictFull(ctx)
			}
			return nil
		}
		d.acct.Store(a)
		acct = a
	}
	r, err := d.flush()
	if err != nil {
		return nil // the account is busy: next round
	}
	d.adapt(&r)
	now := time.Now()
	if now.Unix()-r.SweptAt >= int64(sweepEvery/time.Second) && now.Sub(d.lastSweepTry) >= sweepEvery {
		d.lastSweepTry = now
		if err := sweep(ctx, d.dir, acct, d.opt.MaxAge); err != nil {
			return err
		}
		if r, err = acct.read(); err != nil {
			return nil
		}
		d.seen.Store(r.total())
	}
	full := d.full.Swap(false)
	if full {
		d.logFull()
	}
	if r.total() > d.opt.MaxSize || full {
		target := d.opt.MaxSize - d.batch()
		if full { // the account cannot say by how much: a sixteenth
			target = aSixteenth
		}
		_, err := evict(ctx, d.dir, acct, target)
		if r, rerr := acct.read(); rerr == nil {
			d.seen.Store(r.total())
		}
		return err
	}
	return d.recountOne(ctx, acct, &r)
}

// batch is what an eviction frees below the bound: a sixteenth of it.
func (d *chunkDir) batch() int64 { return batch(d.opt.MaxSize) }

func batch(maxSize int64) int64 { return maxSize / 16 }

// MaxTreeBytes is the most disk a boot tree may take in a cache bounded at
// maxSize: one eviction batch. A tree is counted once made, so a bigger one
// would take the cache further past its bound than the evictors allow.
func MaxTreeBytes(maxSize int64) int64 { return batch(maxSize) }

// flush adds what this process wrote to the account.
func (d *chunkDir) flush() (record, error) {
	acct := d.acct.Load()
	if acct == nil {
		return record{}, errors.New("no account")
	}
	var bytes, files [shards]int64
	var sum int64
	for s := range shards {
		bytes[s] = d.pendBytes[s].Swap(0)
		files[s] = d.pendFiles[s].Swap(0)
		sum += bytes[s]
	}
	d.pendTotal.Add(-sum)
	r, err := acct.update(func(r *record) {
		for s := range shards {
			r.Shards[s].Bytes += bytes[s]
			r.Shards[s].Files += files[s]
		}
	})
	if err == nil {
		d.seen.Store(r.total())
	} else { // keep them for the next round
		for s := range shards {
			d.pendBytes[s].Add(bytes[s])
			d.pendFiles[s].Add(files[s])
			d.pendTotal.Add(bytes[s])
		}
	}
	return r, err
}

// adapt sets touchAfter from how old the chunks evictions remove are.
func (d *chunkDir) adapt(r *record) {
	var newest int64
	for _, s := range r.Shards {
		newest = max(newest, s.Cutoff)
	}
	ta := maxTouchAfter
	if newest > 0 {
		ta = min(ta, max(minTouchAfter, time.Since(time.Unix(newest, 0))/4))
	}
	d.touchAfter.Store(int64(ta))
}

// recountEvery is how often a shard is walked again to correct its count;
// recountGap spaces the recounts of a node, so that a cache without an
// account (made by an older mkbootfs) is counted a shard at a time.
const (
	recountEvery = 24 * time.Hour
	recountGap   = 10 * time.Second
	sweepEvery   = 10 * time.Minute
)

// recountOne walks the shard counted longest ago, if it is due and no
// process of the node recounted one lately.
func (d *chunkDir) recountOne(ctx context.Context, acct *account, r *record) error {
	now := time.Now()
	if now.Unix()-r.RecountAt < int64(recountGap/time.Second) || now.Sub(d.lastRecount) < recountGap {
		return nil
	}
	s := 0
	for i, sh := range r.Shards {
		if sh.CountedAt < r.Shards[s].CountedAt {
			s = i
		}
	}
	if now.Unix()-r.Shards[s].CountedAt < int64(recountEvery/time.Second) {
		return nil
	}
	d.lastRecount = now
	unlock, ok := acct.tryLock(shardLock + int64(s))
	if !ok {
		return nil
	}
	defer unlock()
	_, err := evictShard(ctx, d.dir, acct, nil, s, nil)
	return err
}

func (d *chunkDir) log(msg string) {
	if d.opt.Log != nil {
		d.opt.Log(msg)
	}
}

func (d *chunkDir) logFull() {
	if !d.loggedFull.Swap(true) {
		d.log(fmt.Sprintf("cache %s: the volume is full below the cache's bound (%s): removing the least recently used chunks; set MKBOOTFS_CACHE_SIZE below the volume's free space", d.dir, FormatSize(d.opt.MaxSize)))
	}
}

// evictFull frees a sixteenth of every shard of a full volume that has
// no account (there was no room to make it), without the account's locks.
func (d *chunkDir) evictFull(ctx context.Context) error {
	_, err := evict(ctx, d.dir, nil, 0)
	return err
}
