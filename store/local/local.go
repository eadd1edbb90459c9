// Package local is a chunk store in a directory, in casync's layout:
// <first 4 hex digits of the id>/<id>.cacnk, each file one zstd frame.
// casync, desync and any static file server can read it as it is.
package local

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/store"
)

// tmpSuffix ends the names of chunks being written; the casync layout
// ignores them.
const tmpSuffix = ".tmp"

// Store is a local directory store.
type Store struct {
	dir  string
	root *os.Root // OpenRoot's: every open is resolved inside dir

	mu     sync.Mutex
	staged map[store.ID]string // id -> temp file (a name in the store), written but not yet durable
}

// Open opens the store in dir, creating it when create is set. A path that
// is not a directory is an error.
func Open(dir string, create bool) (*Store, error) {
	fi, err := os.Stat(dir)
	switch {
	case err == nil && !fi.IsDir():
		return nil, fmt.Errorf("store %s: not a directory; give a directory, or a path that does not exist yet", dir)
	case errors.Is(err, fs.ErrNotExist) && create:
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("store %s: %w", dir, hint(err))
		}
	case err != nil:
		return nil, fmt.Errorf("store %s: %w", dir, err)
	}
	return &Store{dir: dir, staged: map[store.ID]string{}}, nil
}

// OpenRoot is Open for a server of the store: every file it reads, creates,
// renames or removes is resolved inside dir (os.Root), so that a symlink in
// the store that leads out of it, named like a chunk, is not followed.
func OpenRoot(dir string, create bool) (*Store, error) {
	s, err := Open(dir, create)
	if err != nil {
		return nil, err
	}
	if s.root, err = os.OpenRoot(dir); err != nil {
		return nil, fmt.Errorf("store %s: %w", dir, err)
	}
	return s, nil
}

// Dir returns the store's directory.
func (s *Store) Dir() string { return s.dir }

// Path returns the file that holds chunk id.
func (s *Store) Path(id store.ID) string { return filepath.Join(s.dir, chunkName(id)) }

// chunkName is the chunk's file name in the store.
func chunkName(id store.ID) string {
	h := id.String()
	return h[:4] + "/" + h + ".cacnk"
}

// The file operations, on names in the store: inside the root for OpenRoot.

func (s *Store) readFile(name string) ([]byte, error) {
	if s.root != nil {
		return s.root.ReadFile(name)
	}
	return os.ReadFile(filepath.Join(s.dir, name))
}

func (s *Store) stat(name string) (fs.FileInfo, error) {
	if s.root != nil {
		return s.root.Stat(name)
	}
	return os.Stat(filepath.Join(s.dir, name))
}

// create opens a new file for writing and returns its descriptor.
func (s *Store) create(name string) (int, error) {
	if s.root == nil {
		return unix.Open(filepath.Join(s.dir, name), unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o644)
	}
	f, err := s.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return -1, err
	}
	defer f.Close()
	return unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
}

func (s *Store) mkdirAll(name string) error {
	if s.root != nil {
		return s.root.MkdirAll(name, 0o755)
	}
	return os.MkdirAll(filepath.Join(s.dir, name), 0o755)
}

func (s *Store) rename(from, to string) error {
	if s.root != nil {
		return s.root.Rename(from, to)
	}
	return os.Rename(filepath.Join(s.dir, from), filepath.Join(s.dir, to))
}

// touch sets a file's times to now.
func (s *Store) touch(name string) error {
	if s.root != nil {
		now := time.Now()
		return s.root.Chtimes(name, now, now)
	}
	now := []unix.Timespec{{Nsec: unix.UTIME_NOW}, {Nsec: unix.UTIME_NOW}}
	return unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(s.dir, name), now, 0)
}

func (s *Store) remove(name string) {
	if s.root != nil {
		s.root.Remove(name)
		return
	}
	os.Remove(filepath.Join(s.dir, name))
}

func (s *Store) String() string { return s.dir }

// Close discards chunks staged and not committed.
func (s *Store) Close() error {
	s.Abort()
	if s.root != nil {
		return s.root.Close()
	}
	return nil
}

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, id store.ID) ([]byte, error) {
	b, err := s.readFile(chunkName(id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, &store.ChunkError{ID: id, Store: s.dir, Err: store.ErrNotFound}
	}
	if err != nil {
		return nil, &store.ChunkError{ID: id, Store: s.dir, Err: err}
	}
	return b, nil
}

// Has implements store.Store. It follows symlinks, as Get does.
func (s *Store) Has(ctx context.Context, id store.ID) (bool, error) {
	_, err := s.stat(chunkName(id))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, &store.ChunkError{ID: id, Store: s.dir, Err: err}
	}
	return true, nil
}

// Keep implements store.Keeper: it sets the chunk file's times to now (a
// metadata write, like the stat Has makes), then looks for the file again.
// The second look closes the race with GC, which renames a chunk away
// before it checks the chunk's time: a touch that GC did not see finds the
// name gone when it looks again, so the writer puts the chunk anew.
func (s *Store) Keep(ctx context.Context, id store.ID) (bool, error) {
	err := s.touch(chunkName(id))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	// On a store this process may not write (EROFS, EACCES) it converts
	// nothing, and GC's grace period is not its to extend: Has answers.
	return s.Has(ctx, id)
}

// Put writes the chunk to a temporary file, syncs it and renames it into
// place, so a reader or a crash never sees half a chunk.
func (s *Store) Put(ctx context.Context, id store.ID, compressed []byte) error {
	tmp, err := s.writeTemp(id, compressed, true)
	if err != nil {
		return err
	}
	return s.commit(id, tmp)
}

// PutNoSync is Put without the fsync, for caches: a cache verifies every
// chunk it reads, so one torn by a crash is found, removed and fetched again,
// and an fsync per chunk would cost more than the fetch.
func (s *Store) PutNoSync(ctx context.Context, id store.ID, compressed []byte) error {
	tmp, err := s.writeTemp(id, compressed, false)
	if err != nil {
		return err
	}
	return s.commit(id, tmp)
}

// Stage writes the chunk like Put but defers making it durable and visible
// to Commit, which syncs the whole file system once: one fsync per chunk
// costs more than chunking on a convert.
func (s *Store) Stage(ctx context.Context, id store.ID, compressed []byte) error {
	tmp, err := s.writeTemp(id, compressed, false)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.staged[id]; ok {
		s.remove(old)
	}
	s.staged[id] = tmp
	return nil
}

// Commit makes every staged chunk durable, then visible under its name.
func (s *Store) Commit(ctx context.Context) error {
	s.mu.Lock()
	staged := s.staged
	s.staged = map[store.ID]string{}
	s.mu.Unlock()
	if len(staged) == 0 {
		return nil
	}
	if err := s.syncfs(); err != nil {
		s.discard(staged)
		return err
	}
	for id, tmp := range staged {
		delete(staged, id)
		if err := s.commit(id, tmp); err != nil {
			s.discard(staged)
			return err
		}
	}
	return s.syncfs()
}

// Abort removes every staged chunk.
func (s *Store) Abort() {
	s.mu.Lock()
	staged := s.staged
	s.staged = map[store.ID]string{}
	s.mu.Unlock()
	s.discard(staged)
}

func (s *Store) discard(staged map[store.ID]string) {
	for _, tmp := range staged {
		s.remove(tmp)
	}
}

func (s *Store) writeTemp(id store.ID, data []byte, sync bool) (string, error) {
	// The temporary file sits beside its final name, so the rename stays in
	// one directory, and parallel writers spread over many directories
	// instead of contending for one. Walk and readers ignore its name.
	dst := chunkName(id)
	var rnd [8]byte
	rand.Read(rnd[:])
	tmp := dst + "." + hex.EncodeToString(rnd[:]) + tmpSuffix
	// 0644 like casync and desync, so a file server can serve the store.
	fd, err := s.create(tmp)
	if errors.Is(err, unix.ENOENT) {
		if err = s.mkdirAll(path.Dir(dst)); err == nil {
			fd, err = s.create(tmp)
		}
	}
	if err != nil {
		return "", s.writeErr(id, err)
	}
	if err = unix.Fchmod(fd, 0o644); err == nil { // the umask may have narrowed it
		err = writeAll(fd, data)
	}
	if err == nil && sync {
		err = unix.Fsync(fd)
	}
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	if err != nil {
		s.remove(tmp)
		return "", s.writeErr(id, err)
	}
	return tmp, nil
}

func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

func (s *Store) commit(id store.ID, tmp string) error {
	err := s.rename(tmp, chunkName(id))
	if errors.Is(err, fs.ErrNotExist) {
		// GC removes temporary files older than its grace period.
		return &store.ChunkError{ID: id, Store: s.dir, Err: fmt.Errorf("its temporary file is gone: %w", store.ErrCollected)}
	}
	if err != nil {
		s.remove(tmp)
		return s.writeErr(id, err)
	}
	return nil
}

func (s *Store) syncfs() error {
	f, err := os.Open(s.dir)
	if err != nil {
		return fmt.Errorf("store %s: %w", s.dir, err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("store %s: sync: %w", s.dir, hint(err))
	}
	return nil
}

func (s *Store) writeErr(id store.ID, err error) error {
	return &store.ChunkError{ID: id, Store: s.dir, Err: hint(err)}
}

// hint adds what to do to the write errors a user can fix.
func hint(err error) error {
	switch {
	case errors.Is(err, unix.ENOSPC), errors.Is(err, unix.EDQUOT):
		return fmt.Errorf("%w: free space on the store's disk, or use another store", err)
	case errors.Is(err, unix.EROFS), errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("%w: %w; use a writable directory", err, store.ErrReadOnly)
	}
	return err
}

// Walk calls fn for every chunk in the store, in no particular order, and
// returns the first error, fn's own as it is.
func (s *Store) Walk(fn func(id store.ID) error) error {
	return filepath.WalkDir(s.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("store %s: %w", s.dir, err)
		}
		if d.IsDir() {
			return nil
		}
		name, ok := strings.CutSuffix(d.Name(), ".cacnk")
		if !ok {
			return nil
		}
		id, err := store.ParseID(name)
		if err != nil || s.Path(id) != p {
			return nil // not a chunk where Get would look for it
		}
		return fn(id)
	})
}
