package lazyfs_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/index"
	"github.com/mkbootfs/mkbootfs/internal/testenv"
	"github.com/mkbootfs/mkbootfs/lazyfs"
	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/local"
)

// mountFS mounts x over st at a new directory, as bootinit does (setuid
// bits and devices honoured), and unmounts it when the test ends.
func mountFS(t testing.TB, x *index.Index, st store.Store, o lazyfs.Options) (*lazyfs.Server, string) {
	t.Helper()
	return mountWith(t, x, st, o, lazyfs.MountOptions{AllowOther: true, SUID: true, Dev: true})
}

func mountWith(t testing.TB, x *index.Index, st store.Store, o lazyfs.Options, mo lazyfs.MountOptions) (*lazyfs.Server, string) {
	t.Helper()
	testenv.FUSE(t)
	dir := t.TempDir()
	srv, err := lazyfs.Mount(dir, lazyfs.New(x, st, o), mo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Error(err)
		}
		srv.Wait()
	})
	return srv, dir
}

func openLocal(t testing.TB, dir string) *local.Store {
	t.Helper()
	s, err := local.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// fileData is what reading inode n of x returns, built from the tree.
func fileData(f tfile) []byte {
	if f.extents == nil {
		return f.data
	}
	b := make([]byte, f.size)
	data := f.data
	for _, e := range f.extents {
		copy(b[e.Off:], data[:e.Len])
		data = data[e.Len:]
	}
	return b
}

// TestTree mounts the edge-case tree and checks every entry against the
// index: attributes, inode numbers, links, xattrs, listings and data.
func TestTree(t *testing.T) {
	storeDir := t.TempDir()
	files := edgeTree()
	x := buildTree(t, storeDir, files)
	counted := &faultStore{Store: openLocal(t, storeDir)}
	_, mnt := mountFS(t, x, counted, lazyfs.Options{})

	for e := range x.Entries {
		p := x.Path(uint32(e))
		n := &x.Inodes[x.Entries[e].Inode]
		var st unix.Stat_t
		if err := unix.Lstat(mnt+p, &st); err != nil {
			t.Errorf("lstat %s: %v", p, err)
			continue
		}
		mtime := time.Unix(0, n.Mtime)
		want := unix.Stat_t{
			Ino: uint64(x.Entries[e].Inode) + 1, Mode: n.Mode, Nlink: uint64(n.Nlink), Uid: n.UID, Gid: n.GID,
			Mtim: unix.NsecToTimespec(mtime.UnixNano()),
		}
		got := unix.Stat_t{Ino: st.Ino, Mode: st.Mode, Nlink: st.Nlink, Uid: st.Uid, Gid: st.Gid, Mtim: st.Mtim}
		if got != want {
			t.Errorf("%s: lstat = %+v, want %+v", p, got, want)
		}
		if st.Atim != st.Mtim || st.Ctim != st.Mtim {
			t.Errorf("%s: atime %v, ctime %v, want both the mtime %v", p, st.Atim, st.Ctim, st.Mtim)
		}
		switch n.Type() {
		case syscall.S_IFREG, syscall.S_IFLNK:
			if st.Size != n.Size && !(n.Type() == syscall.S_IFLNK && st.Size == int64(len(n.Target))) {
				t.Errorf("%s: size %d, want %d", p, st.Size, n.Size)
			}
			if n.Type() == syscall.S_IFLNK {
				if got, err := os.Readlink(mnt + p); err != nil || got != n.Target {
					t.Errorf("readlink %s = %q, %v; want %q", p, got, err, n.Target)
				}
			}
		case syscall.S_IFCHR, syscall.S_IFBLK:
			if st.Rdev != n.Rdev {
				t.Errorf("%s: rdev %#x (%d:%d), want %#x (%d:%d)", p, st.Rdev, unix.Major(st.Rdev), unix.Minor(st.Rdev),
					n.Rdev, unix.Major(n.Rdev), unix.Minor(n.Rdev))
			}
		case syscall.S_IFDIR:
			ents, err := os.ReadDir(mnt + p)
			if err != nil {
				t.Errorf("readdir %s: %v", p, err)
			}
			var names []string
			for _, d := range ents {
				names = append(names, d.Name())
			}
			first, count := x.Children(uint32(e))
			var want []string
			for c := first; c < first+count; c++ {
				want = append(want, x.Entries[c].Name)
			}
			if !slices.Equal(names, want) {
				t.Errorf("readdir %s = %q, want %q", p, names, want)
			}
		}
		checkXattrs(t, mnt+p, n.Xattrs)
	}

	// Blocks as ext4 counts them: whole 4 KiB blocks of data, none for holes
	// or fast symlinks; hard links share an inode number.
	for _, tc := range []struct {
		path   string
		blocks int64
	}{
		{"/etc/hostname", 8}, {"/etc/empty", 0}, {"/bin/big", 600}, {"/var/sparse", 24},
		{"/lib/short", 0}, {"/lib/long", 8}, {"/dev/null", 0},
	} {
		var st unix.Stat_t
		if err := unix.Lstat(mnt+tc.path, &st); err != nil || st.Blocks != tc.blocks {
			t.Errorf("%s: %d blocks, %v; want %d", tc.path, st.Blocks, err, tc.blocks)
		}
	}
	var a, b unix.Stat_t
	unix.Lstat(mnt+"/bin/big", &a)
	unix.Lstat(mnt+"/bin/big-hardlink", &b)
	if a.Ino != b.Ino || a.Nlink != 2 {
		t.Errorf("hard links: inodes %d and %d, nlink %d; want one inode, nlink 2", a.Ino, b.Ino, a.Nlink)
	}
	var root unix.Stat_t
	if unix.Stat(mnt, &root); root.Ino != 1 {
		t.Errorf("root inode %d, want 1", root.Ino)
	}
	// Lookups, stats, listings, links and xattrs all come from the index.
	if n := counted.gets.Load(); n != 0 {
		t.Errorf("metadata of the whole tree fetched %d chunks, want none", n)
	}

	for _, f := range files {
		if f.mode&syscall.S_IFMT != syscall.S_IFREG {
			continue
		}
		got, err := os.ReadFile(mnt + f.path)
		if err != nil || !bytes.Equal(got, fileData(f)) {
			t.Errorf("%s: read %d bytes, %v; want %d bytes", f.path, len(got), err, len(fileData(f)))
		}
	}

	var sfs unix.Statfs_t
	if err := unix.Statfs(mnt, &sfs); err != nil {
		t.Fatal(err)
	}
	if sfs.Flags&unix.ST_RDONLY == 0 || sfs.Flags&(unix.ST_NOSUID|unix.ST_NODEV) != 0 {
		t.Errorf("mount flags %#x: want read-only, setuid and devices allowed", sfs.Flags)
	}
	// A device node is usable, and the tree is read-only.
	if err := os.WriteFile(mnt+"/dev/null", []byte("x"), 0); err != nil {
		t.Errorf("writing the image's /dev/null: %v", err)
	}
	if err := os.WriteFile(mnt+"/etc/hostname", []byte("x"), 0); !errors.Is(err, syscall.EROFS) {
		t.Errorf("writing a file: %v, want EROFS", err)
	}
}

func checkXattrs(t *testing.T, p string, want []index.Xattr) {
	t.Helper()
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		t.Errorf("listxattr %s: %v", p, err)
		return
	}
	var names []string
	for _, s := range strings.Split(string(buf[:n]), "\x00") {
		if s != "" {
			names = append(names, s)
		}
	}
	var wantNames []string
	for _, a := range want {
		wantNames = append(wantNames, a.Name)
		v := make([]byte, 64<<10)
		n, err := unix.Lgetxattr(p, a.Name, v)
		if err != nil || !bytes.Equal(v[:n], a.Value) {
			t.Errorf("getxattr %s %s = %q, %v; want %q", p, a.Name, v[:max(n, 0)], err, a.Value)
		}
	}
	if !slices.Equal(names, wantNames) {
		t.Errorf("listxattr %s = %q, want %q", p, names, wantNames)
	}
	if _, err := unix.Lgetxattr(p, "user.absent", buf); !errors.Is(err, unix.ENODATA) {
		t.Errorf("getxattr of a missing name: %v, want ENODATA", err)
	}
}

// faultStore is a store whose Get of chosen chunks fails in a chosen way,
// and that counts Gets.
type faultStore struct {
	store.Store
	mu    sync.Mutex
	fault map[store.ID]string // "missing", "corrupt", "hang"
	gets  atomic.Int64
}

func (s *faultStore) set(id store.ID, fault string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fault == nil {
		s.fault = map[store.ID]string{}
	}
	if fault == "" {
		delete(s.fault, id)
	} else {
		s.fault[id] = fault
	}
}

func (s *faultStore) Get(ctx context.Context, id store.ID) ([]byte, error) {
	s.gets.Add(1)
	s.mu.Lock()
	fault := s.fault[id]
	s.mu.Unlock()
	switch fault {
	case "missing":
		return nil, &store.ChunkError{ID: id, Store: s.String(), Err: store.ErrNotFound}
	case "corrupt":
		raw, err := s.Store.Get(ctx, id)
		if err == nil {
			raw = store.Encode(append(bytes.Clone(raw), "bit rot"...))
		}
		return raw, err
	case "hang":
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return s.Store.Get(ctx, id)
}

// syncBuffer is a log sink the test reads while the mount writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) take() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.b.String()
	b.b.Reset()
	return s
}

// TestFaults breaks one chunk of /bin/big in each way a store can: the
// read that needs it fails with EIO and one log line, other files read,
// and once the store recovers the same read succeeds.
func TestFaults(t *testing.T) {
	storeDir := t.TempDir()
	files := edgeTree()
	x := buildTree(t, storeDir, files)
	big, _ := x.Resolve("/bin/big")
	first, last, _ := x.ChunkSpan(x.Entries[big].Inode)
	for _, fault := range []string{"missing", "corrupt", "hang"} {
		t.Run(fault, func(t *testing.T) {
			for _, cached := range []bool{false, true} {
				t.Run(fmt.Sprintf("cache=%v", cached), func(t *testing.T) {
					fs := &faultStore{Store: openLocal(t, storeDir)}
					var st store.Store = fs
					if cached {
						l, err := local.Open(t.TempDir(), true)
						if err != nil {
							t.Fatal(err)
						}
						c, err := store.NewCache(l, fs)
						if err != nil {
							t.Fatal(err)
						}
						// Before the temp dir goes: Close waits for the
						// cache's writes behind the reads.
						t.Cleanup(func() { c.Close() })
						st = c
					}
					var logs syncBuffer
					srv, mnt := mountFS(t, x, st, lazyfs.Options{
						FetchTimeout: 200 * time.Millisecond, Readahead: -1, Log: log.New(&logs, "", 0),
					})
					bad := store.ID(x.Chunks[(first+last)/2].ID)
					fs.set(bad, fault)

					if _, err := os.ReadFile(mnt + "/bin/big"); !errors.Is(err, syscall.EIO) {
						t.Fatalf("reading /bin/big with a %s chunk: %v, want EIO", fault, err)
					}
					line := logs.take()
					for _, want := range []string{"/bin/big", bad.Short(), storeDir, "EIO"} {
						if !strings.Contains(line, want) {
							t.Errorf("log %q does not name %q", line, want)
						}
					}
					if got, err := os.ReadFile(mnt + "/etc/hostname"); err != nil || string(got) != "lazy\n" {
						t.Errorf("another file: %q, %v", got, err)
					}
					if srv.Stats().ReadErrors == 0 {
						t.Error("no read error counted")
					}

					fs.set(bad, "")
					got, err := os.ReadFile(mnt + "/bin/big")
					if err != nil || !bytes.Equal(got, files[4].data) {
						t.Fatalf("reading /bin/big after the store recovered: %d bytes, %v", len(got), err)
					}
				})
			}
		})
	}
}

// TestConcurrentReads reads the same and different files from many
// goroutines at once, through a cache, with readahead; each chunk is
// fetched from the store once.
func TestConcurrentReads(t *testing.T) {
	storeDir := t.TempDir()
	var files []tfile
	for i := range 24 {
		files = append(files, tfile{path: fmt.Sprintf("/data/f%02d", i), mode: syscall.S_IFREG | 0o644, data: randomBytes(uint64(i), 40<<10+i*9000)})
	}
	x := buildTree(t, storeDir, files)
	fs := &faultStore{Store: openLocal(t, storeDir)}
	l, err := local.Open(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	c, err := store.NewCache(l, fs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() }) // before its directory goes
	srv, mnt := mountFS(t, x, c, lazyfs.Options{MemCache: 64 << 10})
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for k := range files {
				f := files[(k*(g%3+1)+g)%len(files)]
				fd, err := os.Open(mnt + f.path)
				if err != nil {
					t.Error(err)
					return
				}
				// Reads at odd offsets and sizes, from the end backwards for
				// some goroutines.
				buf := make([]byte, 7000+g*131)
				for i := range (len(f.data) + len(buf) - 1) / len(buf) {
					if g%2 == 1 {
						i = (len(f.data)+len(buf)-1)/len(buf) - 1 - i
					}
					off := i * len(buf)
					n, err := fd.ReadAt(buf, int64(off))
					if (err != nil && n+off < len(f.data)) || !bytes.Equal(buf[:n], f.data[off:off+n]) {
						t.Errorf("%s at %d: %d bytes, %v", f.path, off, n, err)
					}
				}
				fd.Close()
			}
		})
	}
	wg.Wait()
	if got := fs.gets.Load(); got != int64(len(x.Chunks)) {
		t.Errorf("%d store gets for %d chunks, want one each", got, len(x.Chunks))
	}
	t.Logf("stats: %+v %+v", srv.Stats(), *srv.Stats().Cache)
}

// TestSharedCache mounts two trees that share files over one cache
// directory: together they fetch each distinct chunk once.
func TestSharedCache(t *testing.T) {
	storeDir, cacheDir := t.TempDir(), t.TempDir()
	shared := randomBytes(9, 5*testChunk)
	x1 := buildTree(t, storeDir, []tfile{
		{path: "/shared", mode: syscall.S_IFREG | 0o644, data: shared},
		{path: "/one", mode: syscall.S_IFREG | 0o644, data: randomBytes(10, 2*testChunk)},
	})
	x2 := buildTree(t, storeDir, []tfile{
		{path: "/shared", mode: syscall.S_IFREG | 0o644, data: shared},
		{path: "/two", mode: syscall.S_IFREG | 0o644, data: randomBytes(11, 3*testChunk)},
	})
	remote := &faultStore{Store: openLocal(t, storeDir)}
	var mnts []string
	for _, x := range []*index.Index{x1, x2} {
		l, err := local.Open(cacheDir, true)
		if err != nil {
			t.Fatal(err)
		}
		c, err := store.NewCache(l, remote)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() }) // before its directory goes
		_, mnt := mountFS(t, x, c, lazyfs.Options{})
		mnts = append(mnts, mnt)
	}
	var wg sync.WaitGroup
	for _, p := range []string{mnts[0] + "/shared", mnts[1] + "/shared", mnts[0] + "/one", mnts[1] + "/two"} {
		wg.Go(func() {
			if _, err := os.ReadFile(p); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if got, want := remote.gets.Load(), int64(5+2+3); got != want {
		t.Errorf("%d store gets, want %d: one per distinct chunk", got, want)
	}
}

// childEnv makes the test binary a mount server for TestKilledServer.
const childEnv = "LAZYFS_TEST_SERVE"

func TestMain(m *testing.M) {
	if dirs := os.Getenv(childEnv); dirs != "" {
		storeDir, mnt, _ := strings.Cut(dirs, "\n")
		x, err := index.Decode(must(os.ReadFile(filepath.Join(storeDir, "index"))))
		if err != nil {
			log.Fatal(err)
		}
		srv, err := lazyfs.Mount(mnt, lazyfs.New(x, must(local.Open(storeDir, false)), lazyfs.Options{}), lazyfs.MountOptions{})
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println("serving")
		srv.Wait()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func must[T any](v T, err error) T {
	if err != nil {
		log.Fatal(err)
	}
	return v
}

// TestKilledServer kills a mount's server with SIGKILL, which leaves a
// dead mount (ENOTCONN), and mounts again at the same place.
func TestKilledServer(t *testing.T) {
	testenv.FUSE(t)
	storeDir, mnt := t.TempDir(), t.TempDir()
	// A failing test must not leave the dead mount behind.
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	x := buildTree(t, storeDir, edgeTree())
	os.WriteFile(filepath.Join(storeDir, "index"), must(x.MarshalBinary()), 0o644)

	child := startChild(t, storeDir, mnt)
	if _, err := os.ReadFile(mnt + "/etc/hostname"); err != nil {
		t.Fatal(err)
	}
	child.Process.Kill()
	child.Wait()
	var st unix.Statfs_t
	if err := unix.Statfs(mnt, &st); !errors.Is(err, syscall.ENOTCONN) {
		t.Fatalf("statfs of a killed server's mount: %v, want ENOTCONN", err)
	}

	var logs syncBuffer
	srv, err := lazyfs.Mount(mnt, lazyfs.New(x, openLocal(t, storeDir), lazyfs.Options{Log: log.New(&logs, "", 0)}), lazyfs.MountOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := srv.Unmount(); err != nil {
			t.Error(err)
		}
		srv.Wait()
	}()
	if got, err := os.ReadFile(mnt + "/etc/hostname"); err != nil || string(got) != "lazy\n" {
		t.Fatalf("after remounting: %q, %v", got, err)
	}
	if !strings.Contains(logs.take(), "dead mount") {
		t.Error("remounting over a dead mount logged nothing")
	}
	if n := mountsAt(t, mnt); n != 1 {
		t.Errorf("%d mounts at %s, want 1", n, mnt)
	}
}

func mountsAt(t *testing.T, dir string) int {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[1] == dir {
			n++
		}
	}
	return n
}

// startChild starts the test binary serving the index in storeDir at mnt.
func startChild(t *testing.T, storeDir, mnt string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+storeDir+"\n"+mnt)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "serving\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("the server child said %q, %v", line, err)
	}
	return cmd
}

// TestInodeNumbers mounts an index whose root is not inode 0: the root is
// still inode 1 for the kernel, and the numbers stay distinct and stable.
func TestInodeNumbers(t *testing.T) {
	storeDir := t.TempDir()
	s, err := local.Open(storeDir, true)
	if err != nil {
		t.Fatal(err)
	}
	id, _, err := store.Save(context.Background(), s, []byte("data"))
	if err != nil {
		t.Fatal(err)
	}
	inodes := []index.Inode{
		{Mode: syscall.S_IFREG | 0o644, Size: 4},
		{Mode: syscall.S_IFDIR | 0o755},
		{Mode: syscall.S_IFDIR | 0o755},
	}
	root := &index.Node{Inode: 1, Children: []*index.Node{{Name: "file", Inode: 0}, {Name: "sub", Inode: 2}}}
	x, err := index.Build(root, inodes, []index.Chunk{{ID: id, Size: 4}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, mnt := mountFS(t, x, s, lazyfs.Options{})
	for _, tc := range []struct {
		path string
		ino  uint64
	}{{"", 1}, {"/file", 2}, {"/sub", 3}} {
		var st unix.Stat_t
		if err := unix.Lstat(mnt+tc.path, &st); err != nil || st.Ino != tc.ino {
			t.Errorf("%s: inode %d, %v; want %d", tc.path, st.Ino, err, tc.ino)
		}
	}
	if b, err := os.ReadFile(mnt + "/file"); err != nil || string(b) != "data" {
		t.Errorf("read %q, %v", b, err)
	}
	if ents, err := os.ReadDir(mnt + "/sub"); err != nil || len(ents) != 0 {
		t.Errorf("readdir of an empty directory: %v, %v", ents, err)
	}
}

// With SUID, the image's setuid binaries run as their owner for a user
// other than the mounter; without it (a host's mount) they do not, and
// without Dev its device nodes cannot be opened. The kernel enforces the
// image's modes (default_permissions) either way.
func TestSetuidAndPermissions(t *testing.T) {
	id, err := os.ReadFile("/usr/bin/id")
	if err != nil {
		t.Fatal(err)
	}
	testenv.Command(t, "setpriv")
	storeDir := t.TempDir()
	x := buildTree(t, storeDir, []tfile{
		{path: "/bin/id-setuid", mode: syscall.S_IFREG | 0o4755, data: id},
		{path: "/root/secret", mode: syscall.S_IFREG | 0o600, data: []byte("root only\n")},
		{path: "/dev/null", mode: syscall.S_IFCHR | 0o666, rdev: unix.Mkdev(1, 3)},
	})
	for _, tc := range []struct {
		name     string
		mo       lazyfs.MountOptions
		euid     string
		devFlags int64
	}{
		{"nosuid,nodev", lazyfs.MountOptions{AllowOther: true}, "65534", unix.ST_NOSUID | unix.ST_NODEV},
		{"suid,dev", lazyfs.MountOptions{AllowOther: true, SUID: true, Dev: true}, "0", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, mnt := mountWith(t, x, openLocal(t, storeDir), lazyfs.Options{}, tc.mo)
			// t.TempDir's directories are 0700: let the user reach the mount.
			for d := filepath.Dir(mnt); d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
				os.Chmod(d, 0o755)
			}
			asNobody := func(args ...string) (string, error) {
				out, err := exec.Command("setpriv", append([]string{"--reuid=65534", "--regid=65534", "--clear-groups", "--"}, args...)...).CombinedOutput()
				return strings.TrimSpace(string(out)), err
			}
			if out, err := asNobody(mnt+"/bin/id-setuid", "-u"); err != nil || out != tc.euid {
				t.Errorf("setuid id run by nobody: %q, %v; want euid %s", out, err, tc.euid)
			}
			if out, err := asNobody("cat", mnt+"/root/secret"); err == nil || !strings.Contains(out, "Permission denied") {
				t.Errorf("nobody reading a 0600 root file: %q, %v; want permission denied", out, err)
			}
			var sfs unix.Statfs_t
			if err := unix.Statfs(mnt, &sfs); err != nil || sfs.Flags&(unix.ST_NOSUID|unix.ST_NODEV) != tc.devFlags {
				t.Errorf("mount flags %#x, %v; want nosuid|nodev bits %#x", sfs.Flags, err, tc.devFlags)
			}
			err := os.WriteFile(mnt+"/dev/null", []byte("x"), 0)
			if tc.mo.Dev && err != nil {
				t.Errorf("writing the image's /dev/null with Dev: %v", err)
			} else if !tc.mo.Dev && !errors.Is(err, syscall.EACCES) {
				t.Errorf("writing the image's /dev/null without Dev: %v; want EACCES", err)
			}
		})
	}
}
