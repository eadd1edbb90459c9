package bootinit

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/bootinit/bootconfig"
	"github.com/mkbootfs/mkbootfs/boottree"
	"github.com/mkbootfs/mkbootfs/extract"
	"github.com/mkbootfs/mkbootfs/imagemount"
	"github.com/mkbootfs/mkbootfs/index"
	"github.com/mkbootfs/mkbootfs/nodecache"
	"github.com/mkbootfs/mkbootfs/profile"
	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/local"
)

// The boot tree. Every start reads its working set again through a new
// FUSE mount: the kernel's page cache of one mount is not another's, so a
// warm start refills it (reading, verifying and copying the chunks), where
// a plain container finds all that in memory. On a node that has started
// an image before, bootinit therefore keeps in the node cache
// (bootconfig.TreesDir) the profile's files as plain files, with their
// data, and the directories above them (extract.Files): a subset of the
// image, stacked over the lazy mount as a lower layer of its own, so that
// lookups of the rest fall through to it. Later starts read their working
// set from a local filesystem, sharing the page cache as plain containers
// do. A tree of the whole image (every other file an overlayfs metacopy
// stub over a data-only lazy mount) would spare the lazy mount's lookups
// too, but took a short command's starts dozens of times longer to make
// and check (6768 entries, 1.1 s of a core and 0.6 s, against 50-90 ms for
// the 13 files `python3 -c 'print(42)'` reads), so that one such command
// ran about 50 times before it had one.
//
// No start waits for the tree, nor fetches anything for it: once a start
// has its profile's chunks in the cache, a process of its own (the tree
// maker, bootinit in tree mode, at the lowest CPU and I/O priority) makes
// the tree from the cache alone, in trees/.tmp-NAME, and dies with the
// container. The next start goes on from what it left (extract.Files
// resumes), until the tree is whole; it is then renamed into place,
// checked against the index and sealed (boottree.Seal). Every start
// checks the seal before it stacks the tree; a tree that fails is set
// aside (trees/.aside-*), and the start goes on without it.

// treeMakerName as argv[0] puts bootinit in tree mode; its arguments are
// the tree's name and the image's source, the profile comes on stdin.
const treeMakerName = "mkbootfs-tree"

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
	return filepath.Join(bootconfig.TreesDir, subsetName(cfg.Tree)), nil
}

// subsetName is the name of the boot tree (extract.Files) of the tree the
// converter, or a learned profile, names tree: not tree, which an earlier
// bootinit, that made trees of the whole image, stacked and checked as
// one.
func subsetName(tree string) string {
	h := sha256.Sum256([]byte("mkbootfs subset tree\n" + tree))
	return hex.EncodeToString(h[:])
}

// trees are the boot trees a start may stack and make: own, of the
// profile it boots with; when that is a profile learned on this node,
// other, the image's own tree (of its static profile: its program, loader
// and libraries), and delta, of the learned profile's files that other
// lacks.
type trees struct{ own, other, delta string }

// pickTree picks the boot trees this start stacks (b.stacked), and the one
// its tree maker makes (b.tree). Any boot tree holds files of the image as
// the image has them, so any may be stacked, and one over another. A start
// that boots with a profile learned on this node stacks the image's own
// tree, once made (the start that learned the profile made it), and over
// it, once made, the delta tree: a few small files (python's .pyc files
// and locale), made in a few ms, where a tree of every file of the learned
// profile copied the image's own tree's 10 MB again and took a short
// command's next two starts 60 ms more each. Until the image's own tree is
// made, the tree of every file of the learned profile stands in for both.
// Otherwise the tree of the profile the start boots with, once made. A
// learning start stacks none: its reads must reach the lazy mount to be
// learned. Each is held in use for the container's life (release), so
// that no eviction removes it; one being removed now is done without. The
// trees picked are checked while the image is mounted, and taken as good
// until then: checked gets those that passed.
func (b *boot) pickTree(x *index.Index, source string, t trees, learning bool) (checked chan []string, release func()) {
	var releases []func()
	release = func() {
		for _, r := range releases {
			r()
		}
	}
	use := func(p string) bool {
		name := filepath.Base(p)
		r, ok := nodecache.UseTree(bootconfig.CacheDir, name)
		if ok {
			releases = append(releases, r)
		}
		return ok
	}
	b.source = source
	made := func(p string) bool {
		name := filepath.Base(p)
		return !heldOff(p) && isDir(p) && boottree.Sealed(name, nodecache.TreeLock(bootconfig.CacheDir, name))
	}
	switch {
	case learning:
		if use(t.own) {
			b.tree = t.own
		}
		return nil, release
	case t.other != "" && t.delta != "" && use(t.other) && made(t.other):
		b.stacked = []string{t.other}
		if use(t.delta) {
			b.tree, b.treeLacks = t.delta, b.otherProfile
			if made(t.delta) {
				b.treeInUse, b.stacked = true, []string{t.delta, t.other}
			}
		}
	case use(t.own):
		b.tree = t.own
		if !made(t.own) {
			return nil, release
		}
		b.treeInUse, b.stacked = true, []string{t.own}
	default:
		return nil, release
	}
	checked = make(chan []string, 1)
	stacked := slices.Clone(b.stacked)
	go func() {
		var good []string
		for _, p := range stacked {
			if checkTree(b.log, x, bootconfig.CacheDir, filepath.Base(p)) {
				good = append(good, p)
			}
		}
		checked <- good
	}()
	return checked, release
}

// isDir reports whether p is a directory.
func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// checkTree reports whether tree name of the node cache at cacheDir may be
// stacked: it is sealed and unchanged since. One that changed is set
// aside, with one line on stderr: another container that shares the cache
// volume wrote it.
func checkTree(log *log.Logger, x *index.Index, cacheDir, name string) bool {
	start := time.Now()
	dir := nodecache.TreeDir(cacheDir, name)
	err := boottree.Check(x, dir, name, nodecache.TreeLock(cacheDir, name))
	switch {
	case err == nil:
		log.Printf("checked the boot tree %s in %v", dir, time.Since(start).Round(time.Microsecond))
		return true
	case errors.Is(err, boottree.ErrUnsealed), errors.Is(err, fs.ErrNotExist):
		return false
	case !errors.Is(err, boottree.ErrChanged):
		fmt.Fprintf(os.Stderr, "bootinit: checking the boot tree: %v; booting without it\n", err)
		return false
	}
	fmt.Fprintf(os.Stderr, "bootinit: %v; the tree is set aside, and the image read without it\n", err)
	if err := nodecache.SetAside(cacheDir, name); err != nil {
		fmt.Fprintln(os.Stderr, "bootinit:", err)
	}
	return false
}

// startTreeMaker starts the tree maker of b.tree on the files of p and
// returns what stops it: it is given wait to end, then killed. It is a
// process of its own so that the kernel runs it only on time and disk the
// container leaves idle, and so that a container's exit, which kills it,
// never waits long for it.
func (b *boot) startTreeMaker(p *profile.Profile) (stop func(wait time.Duration)) {
	// In a mount namespace of its own, where it mounts the /proc that
	// bootinit's root lacks.
	proc := b.startWithProfile([]string{treeMakerName, filepath.Base(b.tree), b.source}, &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS}, p)
	if proc == nil {
		return func(time.Duration) {}
	}
	b.log.Printf("making the boot tree %s in the background (pid %d)", b.tree, proc.Pid)
	return stopper(proc)
}

// stopper returns what stops proc, a child: it waits up to wait for proc
// to end, then kills it, and returns.
func stopper(proc *os.Process) func(wait time.Duration) {
	return func(wait time.Duration) {
		exited := make(chan struct{})
		go func() { proc.Wait(); close(exited) }()
		select {
		case <-exited:
		case <-time.After(wait):
			proc.Kill()
		}
	}
}

// treeFinishWait bounds how long the exit lets the tree maker go on once
// the app has exited. It runs at the lowest priority, and a short
// command's start left it a few ms of a core: `python3 -c 'print(42)'`'s
// learned tree took 8 starts to make on an idle node, while it takes
// 40-100 ms of a core whose app has exited. A tree that takes longer goes
// on at the next start; a maker still waiting for chunks of the profile's
// files (on a slow link, a warm start fetches them a few at a time) would
// not finish, and is killed at once.
const treeFinishWait = 60 * time.Millisecond

// runTreeMaker runs in the tree maker.
func runTreeMaker(logger *log.Logger, args []string) error {
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return err
	}
	if len(args) != 3 {
		return errors.New("tree mode: want NAME SOURCE")
	}
	name, source := args[1], args[2]
	lowerPriority()
	if err := mountProc(); err != nil {
		return fmt.Errorf("making the boot tree: %w", err)
	}
	x, err := index.ReadFile(bootconfig.Index)
	if err != nil {
		return err
	}
	p, err := profile.Parse(bufio.NewReader(os.Stdin), "the profile")
	if err != nil {
		return fmt.Errorf("making the boot tree: %w", err)
	}
	// The cache alone: a tree never costs the network.
	s, err := local.Open(bootconfig.CacheDir, false)
	if err != nil {
		return err
	}
	// bootinit checked the size it was given; the default is the volume's.
	bound, err := nodecache.ParseSize(os.Getenv(bootconfig.EnvCacheSize), bootconfig.CacheDir)
	if err != nil || bound == 0 {
		bound = nodecache.DefaultMaxSize(bootconfig.CacheDir)
	}
	start := time.Now()
	err = makeTree(context.Background(), x, s, bootconfig.CacheDir, name, source, profileEntries(p, x), nodecache.MaxTreeBytes(bound))
	dir := nodecache.TreeDir(bootconfig.CacheDir, name)
	switch {
	case errors.Is(err, errBusy), errors.Is(err, errTooBig), errors.Is(err, errNotYet):
		logger.Printf("boot tree not made: %v", err)
		return nil
	case errors.Is(err, boottree.ErrChanged):
		fmt.Fprintf(os.Stderr, "bootinit: %v; the tree is set aside\n", err)
		return nodecache.SetAside(bootconfig.CacheDir, name)
	case passing(err):
		logger.Printf("boot tree not made yet: %v", err)
		return nil
	case err != nil:
		noteFailure(dir, err)
		return fmt.Errorf("boot tree not made: %w", err)
	}
	logger.Printf("made the boot tree %s in %v", dir, time.Since(start).Round(time.Millisecond))
	return nil
}

// mountProc makes the tree maker's own mount namespace: the image's mounts
// out of it, and /proc, which extract and boottree name files through
// (/proc/self/fd/N), in it.
func mountProc() error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making the mounts private: %w", err)
	}
	// The maker never reads the image through them, and a copy of the lazy
	// mount here would keep its FUSE connection from ending with the
	// container until this namespace is gone.
	for _, m := range []string{bootconfig.RootDir, bootconfig.LowerDir} {
		unix.Unmount(m, unix.MNT_DETACH)
	}
	if _, err := os.Stat("/proc/self/fd"); err == nil {
		return nil
	}
	if err := os.MkdirAll("/proc", 0o555); err != nil {
		return err
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mounting /proc: %w", err)
	}
	return nil
}

// profileEntries are the entries of the profile's regular files.
func profileEntries(p *profile.Profile, x *index.Index) []uint32 {
	var entries []uint32
	for _, f := range imagemount.RegularFiles(p, x).Files {
		if e, err := x.Resolve(f.Path); err == nil {
			entries = append(entries, e)
		}
	}
	return entries
}

// lowerPriority puts every thread of the process, and so those it starts
// later, at the lowest CPU priority of its class (nice 19: a sixty-fourth
// of a normal thread's share of a busy core, all of an idle one) and in the
// idle I/O class. Not SCHED_IDLE: on a busy node it starved the maker
// outright, and no start made any progress on its tree.
func lowerPriority() {
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, t := range tasks {
		var tid int
		if _, err := fmt.Sscan(t.Name(), &tid); err != nil {
			continue
		}
		unix.Setpriority(unix.PRIO_PROCESS, tid, 19)
		const ioprioWhoProcess, ioprioIdle = 1, 3 << 13
		unix.Syscall(unix.SYS_IOPRIO_SET, ioprioWhoProcess, uintptr(tid), ioprioIdle)
	}
}

// errBusy is makeTree's answer when another start is making the tree.
var errBusy = errors.New("another start is making the tree")

// errNotYet is makeTree's answer when the cache does not hold every one of
// the profile's files whole: a later start makes the tree.
var errNotYet = errors.New("not yet")

// errTooBig is makeTree's answer for a tree bigger than maxBytes.
var errTooBig = errors.New("the tree would take more of the node cache than its bound allows (MKBOOTFS_CACHE_SIZE)")

// makeTree makes, or goes on making, boot tree name in the node cache at
// cacheDir, and seals it: the regular files of entries, once s holds all
// their chunks, and the directories above them (extract.Files), in
// trees/.tmp-NAME, renamed into place, then checked and sealed
// (boottree.Seal).
// A start that finds a tree being made by another (it holds a flock on the
// tree's directory) leaves it to it: errBusy. A tree that would take more
// than maxBytes of disk is not made: errTooBig.
func makeTree(ctx context.Context, x *index.Index, s store.Store, cacheDir, name, source string, entries []uint32, maxBytes int64) error {
	if len(entries) == 0 {
		return errors.New("the profile holds no file a tree can hold")
	}
	dir := nodecache.TreeDir(cacheDir, name)
	trees := filepath.Dir(dir)
	removeDeadTemps(trees)
	s = &keptChunks{Store: s, kept: map[store.ID][]byte{}}
	lockFile := nodecache.TreeLock(cacheDir, name)
	if !isDir(dir) {
		tmp := treeTemp(dir)
		if err := os.MkdirAll(tmp, 0o700); err != nil {
			return err
		}
		unlock, err := lockDir(tmp)
		if err != nil {
			return err
		}
		defer unlock()
		// Another maker renamed its temporary into place after the check
		// above, and this one made a temporary anew: the tree is that one's.
		if isDir(dir) {
			os.RemoveAll(tmp)
			return errBusy
		}
		// The start's prefetch may still be writing the profile's chunks
		// into the cache: a file missed now would be missing from the
		// tree for good. The maker waits while more come.
		data := wholeInCache(ctx, x, s, entries)
		for deadline := time.Now().Add(chunkWait); len(data) < len(entries) && time.Now().Before(deadline) && ctx.Err() == nil; {
			time.Sleep(chunkWait / 20)
			if more := wholeInCache(ctx, x, s, entries); len(more) > len(data) {
				data, deadline = more, time.Now().Add(chunkWait)
			}
		}
		// A tree is sealed as it is: one made of part of the profile would
		// never hold the rest. A warm start fetches the rest of the
		// profile's files for it (prefetch).
		if len(data) < len(entries) {
			return fmt.Errorf("%w: %d of the profile's %d files are whole in the node cache", errNotYet, len(data), len(entries))
		}
		if n := treeBytes(x, data); n > maxBytes {
			os.RemoveAll(tmp)
			return fmt.Errorf("%w: about %s, at most %s", errTooBig, nodecache.FormatSize(n), nodecache.FormatSize(maxBytes))
		}
		if err := extract.Files(ctx, x, s, tmp, data); err != nil {
			if !passing(err) {
				os.RemoveAll(tmp) // the volume is full, or refuses what a tree needs: no start goes on with it
			}
			return err
		}
		// Not synced: the seal writes back each file before it checks it,
		// and the check of a tree a crash left half written fails.
		// A seal left by a tree of this name that was removed must not
		// pass for this one's.
		if err := boottree.Unseal(lockFile); err != nil {
			return err
		}
		if err := os.Rename(tmp, dir); err != nil {
			return err
		}
		if err := syncDir(trees, false); err != nil {
			return err
		}
	} else {
		unlock, err := lockDir(dir)
		if err != nil {
			return err
		}
		defer unlock()
	}
	if err := boottree.Seal(ctx, x, s, dir, name, lockFile); err != nil {
		return err
	}
	return nodecache.TreeMade(cacheDir, name, source)
}

// keptChunks keeps the chunks loaded from its store, up to maxKept
// bytes: the check that seals a tree compares its files with the chunks
// they were just made of, and loading them again (read, decompress,
// verify) took a third of the time a python start's tree took to make and
// seal.
type keptChunks struct {
	store.Store
	mu   sync.Mutex
	kept map[store.ID][]byte
	size int
}

const maxKept = 32 << 20

func (k *keptChunks) Load(ctx context.Context, id store.ID) ([]byte, error) {
	k.mu.Lock()
	data, ok := k.kept[id]
	k.mu.Unlock()
	if ok {
		return data, nil
	}
	data, err := store.Load(ctx, k.Store, id)
	if err != nil {
		return nil, err
	}
	k.mu.Lock()
	if k.size+len(data) <= maxKept {
		k.kept[id] = data
		k.size += len(data)
	}
	k.mu.Unlock()
	return data, nil
}

// treeBytes estimates the disk a subset tree of the files of entries
// takes: a block for each of them and of the directories above them, and
// their data's blocks.
func treeBytes(x *index.Index, data []uint32) int64 {
	var n int64
	dirs := map[uint32]bool{}
	for _, e := range data {
		n += 4096 + (x.Inodes[x.Entries[e].Inode].Size+4095)&^4095
		for p := x.Entries[e].Parent; !dirs[p]; p = x.Entries[p].Parent {
			dirs[p] = true
			n += 4096
			if p == index.Root {
				break
			}
		}
	}
	return n
}

// treeTemp is where the tree at dir is made.
func treeTemp(dir string) string {
	return filepath.Join(filepath.Dir(dir), nodecache.TempPrefix+filepath.Base(dir))
}

// chunkWait is how long a tree maker waits for another of the profile's
// files to be whole in the cache (the start's prefetch writing them)
// before it gives up until a later start.
var chunkWait = time.Second

// wholeInCache returns the entries whose files' chunks s holds all: a tree
// maker never fetches.
func wholeInCache(ctx context.Context, x *index.Index, s store.Store, entries []uint32) []uint32 {
	var whole []uint32
	for _, e := range entries {
		ok := true
		first, last, data := x.ChunkSpan(x.Entries[e].Inode)
		for c := first; data && ok && c <= last; c++ {
			has, err := s.Has(ctx, store.ID(x.Chunks[c].ID))
			ok = has && err == nil
		}
		if ok {
			whole = append(whole, e)
		}
	}
	return whole
}

// lockDir takes an exclusive flock on directory p, without waiting: a
// flock ends with the process that holds it, however it dies.
func lockDir(p string) (unlock func(), err error) {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, errBusy
		}
		return nil, err
	}
	return func() { unix.Close(fd) }, nil
}

// removeDeadTemps removes the temporary trees in dir that no tree maker
// holds and that no start will go on with: those named otherwise than
// TempPrefix+NAME (a bootinit before resumable trees made them). Those of
// a NAME are the next start's to go on with; the cache's sweep removes
// them when no start has for an hour.
func removeDeadTemps(dir string) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		n, ok := strings.CutPrefix(e.Name(), nodecache.TempPrefix)
		if !ok || !e.IsDir() || validTreeName(n) {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if unlock, err := lockDir(p); err == nil {
			os.RemoveAll(p)
			unlock()
		}
	}
}

// validTreeName reports whether n is a name the converter gives trees.
func validTreeName(n string) bool {
	return len(n) == 64 && strings.Trim(n, "0123456789abcdef") == ""
}

// failedWait is how long a tree that failed for a reason of the node (the
// volume's filesystem is full, or refuses an xattr or a device; the kernel
// cannot mount it) is not made nor used again: every start would otherwise
// try, and fail.
const failedWait = 24 * time.Hour

// noteFailure notes why the tree at dir could not be made, unless the
// cause passes.
func noteFailure(dir string, err error) {
	if !passing(err) {
		os.WriteFile(dir+nodecache.FailedSuffix, []byte(err.Error()+"\n"), 0o644)
	}
}

// passing reports whether a tree's failure passes: the container exited
// first, a chunk left the cache meanwhile.
func passing(err error) bool {
	var ce *store.ChunkError
	return errors.Is(err, context.Canceled) || errors.As(err, &ce)
}

// heldOff reports whether the tree at dir failed lately.
func heldOff(dir string) bool {
	fi, err := os.Stat(dir + nodecache.FailedSuffix)
	return err == nil && time.Since(fi.ModTime()) < failedWait
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
