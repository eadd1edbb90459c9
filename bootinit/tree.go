package bootinit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/bootinit/bootconfig"
	"github.com/mkbootfs/mkbootfs/extract"
	"github.com/mkbootfs/mkbootfs/index"
	"github.com/mkbootfs/mkbootfs/nodecache"
	"github.com/mkbootfs/mkbootfs/store"
)

// The boot tree. Every start reads its working set again through a new
// FUSE mount: the kernel's page cache of one mount is not another's, so a
// warm start refills it (reading, verifying and copying the chunks), and
// looks up and lists every directory it goes through again, where a plain
// container finds all that in memory. On a node that has started an image
// before, bootinit therefore keeps in the node cache (bootconfig.TreesDir)
// the image's whole tree as plain files: the files its profile reads with
// their data, every other file as an overlayfs metacopy stub whose data
// overlayfs reads from the lazy mount, stacked below as a data-only layer
// (extract.Metadata; Linux 6.5). Later starts look up, list and read their
// working set in a local filesystem, sharing the page cache as plain
// containers do; the lazy mount serves only the data of other files.
//
// The first start on a node fetches only the profile's chunks. A start
// that finds them all in the cache (the node runs the image again) fetches
// the rest of the profiled files in the background and makes the tree:
// in a temporary directory, synced, then renamed, so that no start ever
// sees half a tree. Its reads are not verified chunk by chunk, as the lazy
// mount's are: containers that share a cache volume trust each other with
// it (MKBOOTFS_TREE=off keeps every read verified).

// treeWait bounds how long bootinit, once the app has exited, finishes a
// tree it is making: a short command exits long before the rest of its
// files are fetched, and docker stop waits 10 s before SIGKILL.
const treeWait = 5 * time.Second

// staleTemp is the age past which a temporary tree is one a killed
// bootinit left behind.
const staleTemp = time.Hour

// treeTempPrefix begins the names of trees being made.
const treeTempPrefix = ".tmp-"

// treePath returns where the image's boot tree is or goes, "" when it has
// none (no profile, MKBOOTFS_TREE=off).
func treePath(cfg *bootconfig.Config) (string, error) {
	switch v := os.Getenv(bootconfig.EnvTree); v {
	case "", "on":
	case "off":
		return "", nil
	default:
		return "", &exitError{exitBoot, fmt.Errorf("%s=%q: want on (the default) or off", bootconfig.EnvTree, v)}
	}
	if len(cfg.Tree) != 64 || strings.Trim(cfg.Tree, "0123456789abcdef") != "" {
		return "", nil // none, or not a name this converter writes
	}
	return filepath.Join(bootconfig.TreesDir, cfg.Tree), nil
}

// isDir reports whether p is a directory.
func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// treeFiles are the entries of the profile's files (regular files, as
// imagemount.RegularFiles left them), which a tree holds with their data.
func (b *boot) treeFiles(x *index.Index) []uint32 {
	var entries []uint32
	for _, f := range b.profile.Files {
		if e, err := x.Resolve(f.Path); err == nil {
			entries = append(entries, e)
		}
	}
	return entries
}

// startTree makes the image's boot tree at dir in the background, its
// files read through st (the node cache, which keeps what it fetches);
// finishTree waits for it.
func (b *boot) startTree(x *index.Index, st store.Store, dir string) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	b.treeCancel, b.treeDone = cancel, done
	go func() {
		defer close(done)
		start := time.Now()
		entries := b.treeFiles(x)
		if err := makeTree(ctx, x, st, dir, entries); err != nil {
			b.log.Printf("boot tree not made: %v", err)
			noteFailure(dir, err)
			return
		}
		if err := nodecache.TreeMade(bootconfig.CacheDir, filepath.Base(dir), b.source); err != nil {
			b.log.Printf("boot tree not counted in the cache's size: %v", err)
		}
		b.log.Printf("made the boot tree %s (%d files with their data) in %v", dir, len(entries), time.Since(start).Round(time.Millisecond))
	}()
}

// finishTree waits, at most treeWait, for the tree startTree makes. One
// cut short removes its temporary directory, unless it is in a sync the
// kernel does not cut short (syncfs on a busy disk): that one is left for a
// later start to remove.
func (b *boot) finishTree() {
	if b.treeDone == nil {
		return
	}
	defer b.treeCancel()
	select {
	case <-b.treeDone:
		return
	case <-time.After(treeWait):
	}
	b.treeCancel()
	select {
	case <-b.treeDone:
	case <-time.After(time.Second):
		b.log.Printf("left the boot tree unmade: still syncing after %v", treeWait)
	}
}

// failedWait is how long a tree that failed for a reason of the node (the
// volume's filesystem is full, or refuses an xattr or a device; the kernel
// cannot mount it) is not made nor used again: every start would otherwise
// try, and fail.
const failedWait = 24 * time.Hour

// failedSuffix names, beside a tree, the note of why it could not be made.
const failedSuffix = ".failed"

// noteFailure notes why the tree at dir could not be made, unless the
// cause passes (the app exited first, the store is unreachable).
func noteFailure(dir string, err error) {
	var ce *store.ChunkError
	if errors.Is(err, context.Canceled) || errors.As(err, &ce) {
		return
	}
	os.WriteFile(dir+failedSuffix, []byte(err.Error()+"\n"), 0o644)
}

// heldOff reports whether the tree at dir failed lately.
func heldOff(dir string) bool {
	fi, err := os.Stat(dir + failedSuffix)
	return err == nil && time.Since(fi.ModTime()) < failedWait
}

// makeTree materializes the tree of x at dir, the regular files of entries
// with their data, the others as stubs (extract.Metadata): in a temporary
// directory beside it, synced to disk (a start reads the tree unverified:
// it must not find torn files after a crash), then renamed. Another start
// making the same tree at the same time is no error: the first rename wins.
func makeTree(ctx context.Context, x *index.Index, st store.Store, dir string, entries []uint32) error {
	if len(entries) == 0 {
		return errors.New("the profile holds no file a tree can hold")
	}
	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return err
	}
	removeStaleTemps(parent, staleTemp)
	tmp, err := os.MkdirTemp(parent, treeTempPrefix)
	if err != nil {
		return err
	}
	if err := extract.Metadata(ctx, x, st, tmp, entries); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	if err := syncDir(tmp, true); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	if err := os.Rename(tmp, dir); err != nil {
		os.RemoveAll(tmp)
		if isDir(dir) {
			return nil
		}
		return err
	}
	return syncDir(parent, false)
}

// syncDir syncs the directory p or, with all, the whole filesystem it is
// on: one syncfs writes a new tree's files at once, where an fsync per
// file would commit the journal once for each.
func syncDir(p string, all bool) error {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if all {
		err = unix.Syncfs(fd)
	} else {
		err = unix.Fsync(fd)
	}
	if err != nil {
		return fmt.Errorf("syncing %s: %w", p, err)
	}
	return nil
}

// removeStaleTemps removes the temporary trees in dir older than age: those
// of bootinits killed while making one.
func removeStaleTemps(dir string, age time.Duration) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), treeTempPrefix) {
			continue
		}
		// Not the mtime: a tree's root takes the image root's.
		p := filepath.Join(dir, e.Name())
		var st unix.Stat_t
		if unix.Lstat(p, &st) == nil && time.Since(time.Unix(st.Ctim.Unix())) >= age {
			os.RemoveAll(p)
		}
	}
}
