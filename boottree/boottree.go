// Package boottree decides whether a boot tree in the node cache may be
// trusted: a start stacks the tree below the app's root unverified, so a
// container that can write the cache volume could otherwise plant a file,
// or a setuid bit, in another image's root.
//
// A boot tree holds a part of the image (made by extract.Files) and is
// stacked over the lazy mount as a lower layer of its own, lookups of what
// it lacks falling through. Seal checks it against its index (every entry
// it holds is the image's, at the same path: a directory, or a regular
// file of one name with all its bytes, of the image's owner, mode, size
// and xattrs; none steers the overlay) and records a seal: the time T0 at
// which the check began, and the tree's name, in a trusted.* xattr, which
// only a process with CAP_SYS_ADMIN can write (bootinit drops it before
// the app runs).
// Check, which every start runs before stacking the tree, finds every
// entry's ctime at or before T0. The kernel sets a file's ctime on every
// change to it (content, mode, owner, xattrs, links; a directory's on
// every name added, removed or renamed in it) and no call sets it back,
// so a tree whose ctimes all precede T0 is the one Seal read after T0.
//
// What is not covered: a change made while a container has the tree
// stacked is seen by that container (the check is at its start), and the
// next start sets the tree aside.
package boottree

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/index"
	"github.com/mkbootfs/mkbootfs/store"
)

// sealXattr holds the seal, on the file Seal is given (the tree's lock file
// in the node cache: it lives as long as the tree's name).
const sealXattr = "trusted.mkbootfs.seal"

// ErrChanged is in the error of a Seal or Check that found the tree
// different from its index, or changed since its seal.
var ErrChanged = errors.New("the boot tree is not its image's")

// changed returns a mismatch, wrapping ErrChanged.
func changed(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrChanged}, a...)...)
}

// ErrUnsealed is Check's answer for a tree that was never sealed, or whose
// seal is not its own.
var ErrUnsealed = errors.New("not sealed")

// Seal checks the tree at dir against x, reading the data of its files
// from s, and seals it as name on the file at sealFile. Every entry it
// holds must be the image's, at the same path (a directory, or a regular
// file of one name with all its bytes), and none may steer the overlay (no
// trusted.overlay.* xattr: no opaque directory, whiteout or redirect); what
// it lacks, the lazy mount shows as the image has it. A tree that is not
// so is not sealed: the error says where. It needs CAP_SYS_ADMIN, for the
// trusted xattrs.
//
// A check cut short (its process killed: a short container's exit) is
// gone on with by the next Seal of the tree, from the entry it had reached
// and with the T0 it began with, both kept on sealFile as it goes: the
// entries checked before are stat'ed alone, and any of them changed since
// T0 fails the check all the same.
func Seal(ctx context.Context, x *index.Index, s store.Store, dir, name, sealFile string) error {
	f, err := os.OpenFile(sealFile, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	fd := int(f.Fd())
	t0, done, off, ok := readProgress(fd, name)
	if !ok {
		if t0, err = coarseNow(filepath.Dir(dir)); err != nil {
			return err
		}
	}
	w := &walker{ctx: ctx, x: x, t0: t0, full: true, chunks: chunkReader(ctx, x, s), skip: done, skipOff: off}
	w.progress = func(n int, off int64) { unix.Fsetxattr(fd, progressXattr, progressValue(name, t0, n, off), 0) }
	if err := w.tree(dir); err != nil {
		if !errors.Is(err, context.Canceled) {
			unix.Fremovexattr(fd, progressXattr) // a check that failed begins again
		}
		return err
	}
	// Each file was written back before it was read (see data): a write
	// through a mapping made before T0 faults, and changes its ctime.
	if err := unix.Fsetxattr(fd, sealXattr, sealValue(name, t0, 0), 0); err != nil {
		return fmt.Errorf("sealing %s: xattr %s: %w", dir, sealXattr, err)
	}
	unix.Fremovexattr(fd, progressXattr)
	return f.Sync()
}

// progressXattr holds, on the seal file, how far a check cut short got.
const progressXattr = "trusted.mkbootfs.checking"

// readProgress reads the progress of a check of tree name cut short:
// done entries checked, and off bytes of the next one's data.
func readProgress(fd int, name string) (t0 unix.Timespec, done int, off int64, ok bool) {
	buf := make([]byte, 128)
	n, err := unix.Fgetxattr(fd, progressXattr, buf)
	if err != nil {
		return t0, 0, 0, false
	}
	v, rest, found := bytes.Cut(buf[:n], []byte(" +"))
	if found {
		var err error
		if off, err = strconv.ParseInt(string(rest), 10, 64); err != nil || off < 0 {
			return t0, 0, 0, false
		}
	}
	t0, done, ok = parseSeal(v, name)
	return t0, done, off, ok
}

// progressValue is a check's progress: done entries, and off bytes of the
// next one's data. A big file's check cut short goes on from where it
// was: a short container's maker had too little time to check python's
// binary (6.8 MB) whole, and began it again start after start.
func progressValue(name string, t0 unix.Timespec, done int, off int64) []byte {
	return fmt.Appendf(sealValue(name, t0, done), " +%d", off)
}

// Unseal removes the seal of the file at sealFile, before a new tree takes
// the name.
func Unseal(sealFile string) error {
	unix.Removexattr(sealFile, progressXattr)
	err := unix.Removexattr(sealFile, sealXattr)
	if err == nil || errors.Is(err, unix.ENODATA) || errors.Is(err, unix.ENOENT) {
		return nil
	}
	return fmt.Errorf("unsealing %s: %w", sealFile, err)
}

// Check reports whether the tree at dir is sealed as name on sealFile and
// unchanged since: nil, ErrUnsealed, or an error naming what changed. It
// reads no data: it lists every directory of the tree and stats every
// entry.
func Check(x *index.Index, dir, name, sealFile string) error {
	t0, ok := readSeal(name, sealFile)
	if !ok {
		return ErrUnsealed
	}
	w := &walker{ctx: context.Background(), x: x, t0: t0}
	return w.tree(dir)
}

// Sealed reports whether sealFile holds a seal of tree name, without
// checking the tree: a start that finds one checks the tree while it
// does other work.
func Sealed(name, sealFile string) bool {
	_, ok := readSeal(name, sealFile)
	return ok
}

func readSeal(name, sealFile string) (unix.Timespec, bool) {
	buf := make([]byte, 128)
	n, err := unix.Getxattr(sealFile, sealXattr, buf)
	if err != nil {
		return unix.Timespec{}, false
	}
	t0, _, ok := parseSeal(buf[:n], name)
	return t0, ok
}

// sealValue is a seal, or with done > 0 a check's progress: the tree's
// name, T0, and the entries checked.
func sealValue(name string, t0 unix.Timespec, done int) []byte {
	return fmt.Appendf(nil, "1 %s %d %d %d", name, t0.Sec, t0.Nsec, done)
}

func parseSeal(v []byte, name string) (unix.Timespec, int, bool) {
	f := strings.Fields(string(v))
	if len(f) != 5 || f[0] != "1" || f[1] != name {
		return unix.Timespec{}, 0, false
	}
	sec, err1 := strconv.ParseInt(f[2], 10, 64)
	nsec, err2 := strconv.ParseInt(f[3], 10, 64)
	done, err3 := strconv.Atoi(f[4])
	return unix.Timespec{Sec: sec, Nsec: nsec}, done, err1 == nil && err2 == nil && err3 == nil && done >= 0
}

// coarseNow returns T0: the ctime the kernel gives a change now, once its
// clock (the coarse one of file times) has moved past it, so that any
// change made after coarseNow returns has a later ctime. It makes an
// unnamed file in dir to read the clock.
func coarseNow(dir string) (unix.Timespec, error) {
	fd, err := unix.Open(dir, unix.O_RDWR|unix.O_TMPFILE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return unix.Timespec{}, fmt.Errorf("reading the file clock in %s: %w", dir, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return unix.Timespec{}, err
	}
	t0 := st.Ctim
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if err := unix.Fchmod(fd, 0o600); err != nil {
			return unix.Timespec{}, err
		}
		if err := unix.Fstat(fd, &st); err != nil {
			return unix.Timespec{}, err
		}
		if after(st.Ctim, t0) {
			return t0, nil
		}
	}
	return unix.Timespec{}, fmt.Errorf("the file clock in %s does not move", dir)
}

func after(a, b unix.Timespec) bool {
	return a.Sec > b.Sec || a.Sec == b.Sec && a.Nsec > b.Nsec
}

// walker goes through the tree and the index side by side.
type walker struct {
	ctx    context.Context
	x      *index.Index
	t0     unix.Timespec
	full   bool                        // Seal's check: all of each entry, not only its ctime
	chunks func(i int) ([]byte, error) // the index's chunks, for file data
	buf    []byte                      // file data read from the tree
	want   []byte                      // file data as the index has it

	// A check going on from one cut short: the first skip entries, checked
	// then, are stat'ed alone; progress records how far it got, now and
	// then.
	skip     int
	skipOff  int64 // bytes of the data of entry skip+1 checked then
	progress func(done int, off int64)
	seen     int       // entries walked
	noted    time.Time // when progress was last recorded
}

// tree walks the tree at dir from the index's root.
func (w *walker) tree(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if err := w.entry(fd, "", index.Root, &st); err != nil {
		return fmt.Errorf("boot tree %s: /: %w", dir, err)
	}
	if err := w.dir(fd, index.Root); err != nil {
		return fmt.Errorf("boot tree %s: %w", dir, err)
	}
	return nil
}

// dir checks the names in directory entry de, open at fd: each must be
// one of de's children in the image. A name added or removed since T0
// changed the directory's ctime.
func (w *walker) dir(fd int, de uint32) error {
	names, err := listNames(fd)
	if err != nil {
		return fmt.Errorf("%s: %w", w.x.Path(de), err)
	}
	for _, name := range names {
		if err := w.ctx.Err(); err != nil {
			return err
		}
		c, ok := w.x.Lookup(de, name)
		if !ok {
			return changed("%s/%s: not in the image", strings.TrimSuffix(w.x.Path(de), "/"), name)
		}
		if err := w.child(fd, name, c); err != nil {
			return err
		}
	}
	return nil
}

// child checks entry c, name in the directory open at fd, and its
// children if it is a directory.
func (w *walker) child(fd int, name string, c uint32) error {
	var st unix.Stat_t
	if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); errors.Is(err, unix.ENOENT) {
		return changed("%s: missing", w.x.Path(c))
	} else if err != nil {
		return fmt.Errorf("%s: %w", w.x.Path(c), err)
	}
	if err := w.entry(fd, name, c, &st); err != nil {
		return fmt.Errorf("%s: %w", w.x.Path(c), err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return nil
	}
	sub, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("%s: %w", w.x.Path(c), err)
	}
	defer unix.Close(sub)
	return w.dir(sub, c)
}

// listNames returns the names in the directory open at fd, sorted: a
// check cut short goes on by counting the entries walked.
func listNames(fd int) ([]string, error) {
	d, err := unix.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(d), "dir")
	defer f.Close()
	names, err := f.Readdirnames(-1)
	slices.Sort(names)
	return names, err
}

// entry checks entry c, whose stat is st: it is name in the directory open
// at dirfd or, with name "", that directory.
func (w *walker) entry(dirfd int, name string, c uint32, st *unix.Stat_t) error {
	if after(st.Ctim, w.t0) {
		return changed("changed at %s, after the tree was checked at %s", fmtTime(st.Ctim), fmtTime(w.t0))
	}
	if !w.full {
		return nil
	}
	w.seen++
	if w.seen <= w.skip {
		return nil
	}
	if w.progress != nil && time.Since(w.noted) > 20*time.Millisecond {
		w.progress(w.seen-1, 0)
		w.noted = time.Now()
	}
	ino := w.x.Entries[c].Inode
	n := &w.x.Inodes[ino]
	typ := st.Mode & unix.S_IFMT
	switch {
	case typ != unix.S_IFDIR && typ != unix.S_IFREG:
		return changed("type %o, where a boot tree holds only directories and regular files", typ)
	case typ == unix.S_IFREG && (st.Nlink != 1 || n.Nlink != 1):
		return changed("%d names, where a boot tree holds only files of one name (the image's has %d)", st.Nlink, n.Nlink)
	case typ != n.Type():
		return changed("type %o, the image's is %o", typ, n.Type())
	case st.Mode&0o7777 != n.Mode&0o7777:
		return changed("mode %o, the image's is %o", st.Mode&0o7777, n.Mode&0o7777)
	case st.Uid != n.UID || st.Gid != n.GID:
		return changed("owner %d:%d, the image's is %d:%d", st.Uid, st.Gid, n.UID, n.GID)
	case typ == unix.S_IFREG && st.Size != n.Size:
		return changed("size %d, the image's is %d", st.Size, n.Size)
	}
	xattrs, err := readXattrs(dirfd, name)
	if err != nil {
		return err
	}
	for k := range xattrs {
		if strings.HasPrefix(k, overlayXattrs) {
			return changed("xattr %s, which would steer the overlay", k)
		}
	}
	if err := sameXattrs(xattrs, n.Xattrs); err != nil {
		return err
	}
	if typ == unix.S_IFREG {
		return w.data(dirfd, name, ino, n)
	}
	return nil
}

// overlayXattrs is the prefix of overlayfs's own xattrs: a tree holds none
// (the image's own would steer the overlay; extract.Files leaves them out).
const overlayXattrs = "trusted.overlay."

// sameXattrs compares a tree file's xattrs to the image's but overlayfs's.
func sameXattrs(got map[string][]byte, want []index.Xattr) error {
	n := 0
	for _, a := range want {
		if strings.HasPrefix(a.Name, overlayXattrs) {
			continue
		}
		if v, ok := got[a.Name]; !ok || !bytes.Equal(v, a.Value) {
			return changed("xattr %s is not the image's", a.Name)
		}
		n++
	}
	for k := range got {
		if !strings.HasPrefix(k, overlayXattrs) {
			n--
		}
	}
	if n != 0 {
		return changed("xattrs the image does not have")
	}
	return nil
}

// readXattrs reads every xattr of name in the directory open at dirfd (of
// that directory, with name ""), not following a symlink.
func readXattrs(dirfd int, name string) (map[string][]byte, error) {
	// No *at forms: a path through /proc names the file, and the l* calls
	// do not follow it (nor, so, /proc's link for the directory itself).
	list := func(buf []byte) (int, error) {
		if name == "" {
			return unix.Flistxattr(dirfd, buf)
		}
		return unix.Llistxattr(procPath(dirfd, name), buf)
	}
	get := func(k string, v []byte) (int, error) {
		if name == "" {
			return unix.Fgetxattr(dirfd, k, v)
		}
		return unix.Lgetxattr(procPath(dirfd, name), k, v)
	}
	buf := make([]byte, 4096)
	sz, err := list(buf)
	if errors.Is(err, unix.ERANGE) {
		if sz, err = list(nil); err == nil {
			buf = make([]byte, sz)
			sz, err = list(buf)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("listing xattrs: %w", err)
	}
	m := map[string][]byte{}
	for _, k := range bytes.Split(buf[:sz], []byte{0}) {
		if len(k) == 0 {
			continue
		}
		v := make([]byte, 64<<10)
		n, err := get(string(k), v)
		if err != nil {
			return nil, fmt.Errorf("xattr %s: %w", k, err)
		}
		m[string(k)] = v[:n]
	}
	return m, nil
}

// data compares a file's bytes with the image's.
func (w *walker) data(dirfd int, name string, ino uint32, n *index.Inode) error {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	// Written back, its pages are clean and write-protected: a write
	// through a mapping made before T0 faults now, and changes the file's
	// ctime, so what is read next stays what is checked.
	const all = unix.SYNC_FILE_RANGE_WAIT_BEFORE | unix.SYNC_FILE_RANGE_WRITE | unix.SYNC_FILE_RANGE_WAIT_AFTER
	if err := unix.SyncFileRange(fd, 0, 0, all); err != nil {
		return fmt.Errorf("writing back: %w", err)
	}
	if w.buf == nil {
		w.buf, w.want = make([]byte, 1<<20), make([]byte, 1<<20)
	}
	var off int64
	if w.seen == w.skip+1 {
		// Its first bytes were checked after T0, and the file was written
		// back before: a change since moved its ctime (see entry).
		off = min(w.skipOff, n.Size)
	}
	for off < n.Size {
		if err := w.ctx.Err(); err != nil {
			return err
		}
		if w.progress != nil && time.Since(w.noted) > 20*time.Millisecond {
			w.progress(w.seen-1, off)
			w.noted = time.Now()
		}
		k := int(min(int64(len(w.buf)), n.Size-off))
		if _, err := io.ReadFull(io.NewSectionReader(fdReader(fd), off, int64(k)), w.buf[:k]); err != nil {
			return fmt.Errorf("reading: %w", err)
		}
		if _, err := w.x.ReadAt(ino, w.want[:k], off, w.chunks); err != nil {
			return err
		}
		if !bytes.Equal(w.buf[:k], w.want[:k]) {
			return changed("bytes from %d are not the image's", off)
		}
		off += int64(k)
	}
	return nil
}

// fdReader reads a file descriptor at offsets.
type fdReader int

func (f fdReader) ReadAt(p []byte, off int64) (int, error) {
	n, err := unix.Pread(int(f), p, off)
	if err == nil && n == 0 && len(p) > 0 {
		return 0, io.EOF
	}
	return n, err
}

// chunkReader returns the index's chunks from s, keeping the last few: a
// file's pieces begin and end inside chunks.
func chunkReader(ctx context.Context, x *index.Index, s store.Store) func(i int) ([]byte, error) {
	type kept struct {
		i    int
		data []byte
	}
	var recent []kept
	return func(i int) ([]byte, error) {
		if j := slices.IndexFunc(recent, func(k kept) bool { return k.i == i }); j >= 0 {
			return recent[j].data, nil
		}
		data, err := store.Load(ctx, s, store.ID(x.Chunks[i].ID))
		if err != nil {
			return nil, err
		}
		recent = append(recent, kept{i, data})
		if len(recent) > 4 {
			recent = recent[1:]
		}
		return data, nil
	}
}

// procPath names entry name of the directory open at dirfd.
func procPath(dirfd int, name string) string {
	return "/proc/self/fd/" + strconv.Itoa(dirfd) + "/" + name
}

func fmtTime(t unix.Timespec) string {
	return time.Unix(t.Unix()).UTC().Format("2006-01-02T15:04:05.000000000Z")
}
