package nodecache

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

// The tree-in-use protocol. A start that stacks or makes tree NAME holds a
// shared flock on trees/NAME.lock for the container's life; a prune takes
// it exclusively, without waiting, and removes the tree only if it got it.
// flock, not fcntl locks: a flock belongs to the open file, so a process
// that dies, even by SIGKILL, releases it, and a second open of the same
// file in one process is a second holder.

// UseTree marks boot tree name of the cache at cacheDir in use until
// release is called or the process dies: no prune removes a tree in use.
// Call it before looking for the tree, whether the start will stack it or
// make it, and keep it for the container's life: the tree found after
// UseTree stays whole until release. UseTree touches the lock file's mtime,
// which is the tree's last use, and so does release.
//
// ok is false when a prune is removing the tree (or the lock cannot be
// had at all: a read-only volume): the start then neither stacks nor makes
// the tree, and boots without it.
func UseTree(cacheDir, name string) (release func(), ok bool) {
	if !validName(name) {
		return nil, false
	}
	if err := os.MkdirAll(filepath.Join(cacheDir, treesDir), 0o755); err != nil {
		return nil, false
	}
	fd, err := lockTree(cacheDir, name, unix.LOCK_SH)
	if err != nil {
		return nil, false
	}
	touch(fd)
	var once sync.Once
	return func() {
		once.Do(func() {
			touch(fd)
			unix.Close(fd)
		})
	}, true
}

// errInUse is lockTree's answer when another holds the lock.
var errInUse = errors.New("in use")

// lockTree opens trees/NAME.lock, making it, and flocks it (how is
// LOCK_SH or LOCK_EX) without waiting. A lock taken on a file a prune
// removed meanwhile guards nothing: the file at the name is checked to be
// the one locked, and opened again if it is not.
func lockTree(cacheDir, name string, how int) (int, error) {
	p := filepath.Join(cacheDir, treesDir, name+lockSuffix)
	for range 8 {
		fd, err := unix.Open(p, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o644)
		if err != nil {
			return -1, err
		}
		if err := unix.Flock(fd, how|unix.LOCK_NB); err != nil {
			unix.Close(fd)
			if errors.Is(err, unix.EWOULDBLOCK) {
				return -1, errInUse
			}
			return -1, err
		}
		if sameFile(fd, p) {
			return fd, nil
		}
		unix.Close(fd)
	}
	return -1, fmt.Errorf("%s keeps changing", p)
}

// sameFile reports whether path names the file open at fd.
func sameFile(fd int, path string) bool {
	var a, b unix.Stat_t
	return unix.Fstat(fd, &a) == nil && unix.Lstat(path, &b) == nil && a.Dev == b.Dev && a.Ino == b.Ino
}

// removeTree removes tree name unless a start uses it (ok false then): it
// takes the tree's lock exclusively, renames the tree to a trash name, so
// that no start ever finds half of it, removes it, and last its info and
// lock files. A tree that is not there is removed all the same (its lock
// file goes).
func removeTree(cacheDir, name string) (ok bool, err error) {
	fd, err := lockTree(cacheDir, name, unix.LOCK_EX)
	if errors.Is(err, errInUse) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	dir := TreeDir(cacheDir, name)
	var rnd [6]byte
	rand.Read(rnd[:])
	trash := filepath.Join(cacheDir, treesDir, trashPrefix+name+"-"+hex.EncodeToString(rnd[:]))
	switch err := os.Rename(dir, trash); {
	case err == nil:
		if err := os.RemoveAll(trash); err != nil {
			// The tree is out of sight; a later sweep removes the rest.
			return true, fmt.Errorf("removing %s: %w", trash, err)
		}
	case !errors.Is(err, os.ErrNotExist):
		return false, fmt.Errorf("removing tree %s: %w", dir, err)
	}
	os.Remove(dir + infoSuffix)
	os.Remove(dir + lockSuffix) // still locked: a start opening it now finds it gone and makes another
	return true, nil
}

// SetAside moves tree name of the cache at cacheDir out of every start's
// way, whole, to be looked at: a tree that failed its check. Starts that
// have it stacked keep it; the sweep removes it a day later.
func SetAside(cacheDir, name string) error {
	if !validName(name) {
		return errors.New("tree " + name + ": not a tree name")
	}
	var rnd [6]byte
	rand.Read(rnd[:])
	aside := filepath.Join(cacheDir, treesDir, asidePrefix+name+"-"+hex.EncodeToString(rnd[:]))
	if err := os.Rename(TreeDir(cacheDir, name), aside); err != nil {
		return fmt.Errorf("setting tree %s aside: %w", name, err)
	}
	os.Remove(TreeDir(cacheDir, name) + infoSuffix)
	return nil
}

// touch sets the mtime (and atime) of the file open at fd to now:
// utimensat(fd, NULL, NULL, 0), futimens. Not through /proc/self/fd, as
// unix.Futimes goes: bootinit has no /proc once it has moved the app's root.
func touch(fd int) error {
	if _, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, 0, 0, 0, 0); e != 0 {
		return e
	}
	return nil
}
