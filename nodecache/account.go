package nodecache

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The size account: what the cache holds, kept by every process that
// writes to it, so that none walks the cache to know. It is a small file of
// its own, read and rewritten in place under an OFD lock (released when
// its process dies, even by SIGKILL); not counters in the chunks' lock
// file, whose whole offset range the chunk locks use. It also carries the
// locks that let one process at a time evict a shard or sweep the trees.
//
// Chunks are counted by shard, the first hex digit of their ID: a shard is
// a sixteenth of the cache (IDs are hashes), which one walk can recount or
// evict without walking the rest, and several processes evict different
// shards at once. A shard's count is exact after its last walk, plus what
// was written since: a writer that crashed between its write and its count,
// or a bootinit of an older mkbootfs that does not count, makes it drift,
// so each shard is walked again at least daily.
const accountName = ".mkbootfs-cache.account"

const (
	accountMagic = "mkbcache" // then the format's version
	accountVer   = 1
	accountSize  = 4096
	shards       = 16

	recordLock = 0                      // bytes [0, accountSize): the record
	shardLock  = 2 * accountSize        // + shard: one evictor per shard
	sweepLock  = shardLock + 16         // one tree sweep at a time
	lockWait   = 200 * time.Millisecond // a stopped holder (docker pause) costs an update, not a wedge
)

// shardRec is one shard's count.
type shardRec struct {
	Bytes     int64 // disk bytes of its chunks and chunk directories
	Files     int64
	CountedAt int64 // unix seconds of its last walk; 0: never walked
	Cutoff    int64 // unix seconds: the mtime of the newest chunk its last eviction removed
}

// record is the account's content.
type record struct {
	Trees, TreeCount       int64 // bytes and number of boot trees
	Profiles, ProfileCount int64
	SweptAt                int64 // unix seconds of the last tree sweep
	RecountAt              int64 // unix seconds of the last shard recount
	Shards                 [shards]shardRec
}

// total is every byte the record counts.
func (r *record) total() int64 {
	n := r.Trees + r.Profiles
	for _, s := range r.Shards {
		n += s.Bytes
	}
	return n
}

func (r *record) chunks() (bytes, files int64) {
	for _, s := range r.Shards {
		bytes += s.Bytes
		files += s.Files
	}
	return bytes, files
}

type account struct {
	f  *os.File
	rc syscall.RawConn
	mu sync.Mutex // OFD locks exclude other processes, not this one's goroutines
}

// openAccount opens the cache's account, making it if need be.
func openAccount(dir string) (*account, error) {
	return openAccountFile(dir, os.O_RDWR|os.O_CREATE)
}

// openAccountRO opens an existing account for reading.
func openAccountRO(dir string) (*account, error) {
	return openAccountFile(dir, os.O_RDONLY)
}

func openAccountFile(dir string, flag int) (*account, error) {
	f, err := os.OpenFile(filepath.Join(dir, accountName), flag, 0o644)
	if err != nil {
		return nil, err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &account{f: f, rc: rc}, nil
}

func (a *account) Close() error { return a.f.Close() }

// lock takes (typ F_RDLCK or F_WRLCK) or releases (F_UNLCK) the byte
// range [start, start+n), polling until wait has passed.
func (a *account) lock(typ int16, start, n int64, wait time.Duration) error {
	lk := unix.Flock_t{Type: typ, Whence: 0, Start: start, Len: n}
	deadline := time.Now().Add(wait)
	pause := 100 * time.Microsecond
	for {
		var err error
		if cerr := a.rc.Control(func(fd uintptr) { err = unix.FcntlFlock(fd, unix.F_OFD_SETLK, &lk) }); cerr != nil {
			return cerr
		}
		if err == nil || !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EACCES) && !errors.Is(err, unix.EINTR) {
			return err
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(pause)
		pause = min(2*pause, 10*time.Millisecond)
	}
}

// tryLock takes the lock at byte at (shardLock+s, sweepLock) without
// waiting; ok is false when another process holds it.
func (a *account) tryLock(at int64) (unlock func(), ok bool) {
	if a.lock(unix.F_WRLCK, at, 1, 0) != nil {
		return nil, false
	}
	return func() { a.lock(unix.F_UNLCK, at, 1, 0) }, true
}

// read returns the record.
func (a *account) read() (record, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.lock(unix.F_RDLCK, recordLock, accountSize, lockWait); err != nil {
		return record{}, fmt.Errorf("locking %s: %w", accountName, err)
	}
	defer a.lock(unix.F_UNLCK, recordLock, accountSize, 0)
	return a.load()
}

// update applies fn to the record and writes it back, under the lock.
func (a *account) update(fn func(*record)) (record, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.lock(unix.F_WRLCK, recordLock, accountSize, lockWait); err != nil {
		return record{}, fmt.Errorf("locking %s: %w", accountName, err)
	}
	defer a.lock(unix.F_UNLCK, recordLock, accountSize, 0)
	r, err := a.load()
	if err != nil {
		return r, err
	}
	fn(&r)
	return r, a.store(&r)
}

// load reads the record; a file that is new, torn or foreign reads as an
// empty record with no shard counted, which the walks then count.
func (a *account) load() (record, error) {
	var r record
	buf := make([]byte, accountSize)
	n, err := a.f.ReadAt(buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return r, err
	}
	if n < 16+binary.Size(r) || !bytes.Equal(buf[:len(accountMagic)], []byte(accountMagic)) || buf[len(accountMagic)] != accountVer {
		return r, nil
	}
	binary.Read(bytes.NewReader(buf[16:]), binary.LittleEndian, &r)
	clamp := func(v *int64) { *v = max(*v, 0) }
	clamp(&r.Trees)
	clamp(&r.Profiles)
	for i := range r.Shards {
		clamp(&r.Shards[i].Bytes)
		clamp(&r.Shards[i].Files)
	}
	return r, nil
}

func (a *account) store(r *record) error {
	var b bytes.Buffer
	b.WriteString(accountMagic)
	b.WriteByte(accountVer)
	b.Write(make([]byte, 16-b.Len()))
	binary.Write(&b, binary.LittleEndian, r)
	_, err := a.f.WriteAt(b.Bytes(), 0)
	return err
}
