// Package testtree builds a directory tree holding every kind of entry and
// attribute an image can carry, and compares trees the way the fidelity
// bar does: rsync, itemized, by checksum, with hard links, ACLs and xattrs.
package testtree

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/converter"
	"github.com/mkbootfs/mkbootfs/index"
	"github.com/mkbootfs/mkbootfs/internal/testenv"
	"github.com/mkbootfs/mkbootfs/store/local"
)

// capability is a valid security.capability value (VFS_CAP_REVISION_2)
// granting cap_net_bind_service, as setcap writes it.
var capability = []byte{0, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

// Build fills dir (which must exist) with the edge cases: regular, empty,
// sparse and hard-linked files, symlinks of every shape, devices, a FIFO,
// a socket, setuid/setgid/sticky modes, owners, nanosecond mtimes, xattrs
// (security.capability among them), 255-byte and non-UTF-8 names, and a
// deep path. It needs root.
func Build(t testing.TB, dir string) {
	t.Helper()
	testenv.Root(t)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	p := func(name string) string { return filepath.Join(dir, name) }
	write := func(name string, data []byte, mode os.FileMode) {
		t.Helper()
		must(os.WriteFile(p(name), data, mode))
		must(os.Chmod(p(name), mode)) // WriteFile's mode is masked by the umask
	}
	rnd := rand.New(rand.NewSource(1))
	random := func(n int) []byte { b := make([]byte, n); rnd.Read(b); return b }

	write("small", []byte("hello\n"), 0o644)
	write("empty", nil, 0o600)
	write("random", random(3<<20+17), 0o644)
	write("zeros", make([]byte, 1<<20), 0o644)
	write("text", bytes.Repeat([]byte("the same line again\n"), 50000), 0o444)

	// Sparse: data at the start, in the middle and a hole at the end.
	f, err := os.Create(p("sparse"))
	must(err)
	_, err = f.WriteAt(random(8192), 0)
	must(err)
	_, err = f.WriteAt(random(4096), 5<<20)
	must(err)
	must(f.Truncate(16 << 20))
	must(f.Close())

	must(os.Mkdir(p("dir"), 0o755))
	write("dir/linked", []byte("one inode, three names\n"), 0o640)
	must(os.Link(p("dir/linked"), p("linked2")))
	must(os.Link(p("dir/linked"), p("dir/linked3")))

	must(os.Symlink("small", p("rel-link")))
	must(os.Symlink("/etc/passwd", p("abs-link")))
	must(os.Symlink("does/not/exist", p("dangling")))
	must(os.Symlink("dir", p("dir-link")))
	must(os.Symlink("../../../../../outside", p("dir/climbing-link")))

	must(unix.Mknod(p("null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(unix.Mknod(p("loop9"), unix.S_IFBLK|0o660, int(unix.Mkdev(7, 9))))
	must(unix.Mknod(p("fifo"), unix.S_IFIFO|0o600, 0))
	must(unix.Mknod(p("socket"), unix.S_IFSOCK|0o755, 0))

	write("setuid", []byte("#!/bin/sh\n"), 0o755)
	must(os.Chmod(p("setuid"), 0o755|os.ModeSetuid))
	write("setgid", []byte("#!/bin/sh\n"), 0o755)
	must(os.Chmod(p("setgid"), 0o755|os.ModeSetgid))
	must(os.Mkdir(p("sticky"), 0o755))
	must(os.Chmod(p("sticky"), 0o777|os.ModeSticky))
	write("no-perms", []byte("x"), 0)

	write("owned", []byte("owned\n"), 0o644)
	must(os.Lchown(p("owned"), 1234, 5678))
	must(os.Lchown(p("rel-link"), 4321, 8765))
	must(os.Mkdir(p("owned-dir"), 0o750))
	must(os.Chown(p("owned-dir"), 1000, 1000))

	write("capable", []byte("\x7fELF"), 0o755)
	must(unix.Setxattr(p("capable"), "security.capability", capability, 0))
	must(unix.Setxattr(p("small"), "user.note", []byte("a note"), 0))
	must(unix.Setxattr(p("small"), "user.binary", []byte{0, 1, 2, 255}, 0))
	must(unix.Setxattr(p("dir"), "trusted.overlay.test", []byte("y"), 0))
	must(unix.Lsetxattr(p("abs-link"), "trusted.link", []byte("on the link"), 0))

	write(strings.Repeat("n", 255), []byte("long name\n"), 0o644)
	write("not-utf8-\xff\xfe", []byte("bytes\n"), 0o644)
	write("with space and\nnewline", nil, 0o644)
	deep := dir
	for i := 0; i < 40; i++ {
		deep = filepath.Join(deep, "deep")
	}
	must(os.MkdirAll(deep, 0o755))
	write(strings.TrimPrefix(filepath.Join(deep, "bottom"), dir+"/"), []byte("bottom\n"), 0o644)
	must(os.Mkdir(p("empty-dir"), 0o700))

	// Nanosecond mtimes on everything, directories last (children touch them).
	var dirs []string
	ts := []unix.Timespec{{Sec: 1600000000, Nsec: 987654321}, {Sec: 1600000000, Nsec: 987654321}}
	must(filepath.Walk(dir, func(path string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if fi.IsDir() {
			dirs = append(dirs, path)
			return nil
		}
		ts[1].Nsec++
		return unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, unix.AT_SYMLINK_NOFOLLOW)
	}))
	for i := len(dirs) - 1; i >= 0; i-- {
		ts[1].Nsec++
		must(unix.UtimesNanoAt(unix.AT_FDCWD, dirs[i], ts, 0))
	}
}

// Diff lists every difference between two trees: rsync in dry-run with
// itemized changes (without -i it prints nothing at all), checksums instead
// of times for file contents, hard links, ACLs, xattrs, devices and specials,
// owners, permissions and times. An empty result means identical.
func Diff(t testing.TB, want, got string) string {
	t.Helper()
	testenv.Command(t, "rsync")
	out, err := exec.Command("rsync", "-naHAXci", "--delete", want+"/", got+"/").CombinedOutput()
	if err != nil {
		t.Fatalf("rsync %s %s: %v\n%s", want, got, err, out)
	}
	return string(out)
}

// Convert converts source (a converter source: dir:PATH, oci:PATH, ...)
// into a new local store, and returns the index and the store.
func Convert(t testing.TB, source string) (*index.Index, *local.Store) {
	t.Helper()
	s, err := local.Open(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	res, err := converter.Convert(context.Background(), converter.Options{Source: source, Store: s, TmpDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	return res.Index, s
}

// EditTar copies the tar stream layer through edit, which gets each
// entry's name and content and returns the content to keep; nil drops a
// regular file.
func EditTar(t testing.TB, layer []byte, edit func(name string, data []byte) []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	tw := tar.NewWriter(&out)
	tr := tar.NewReader(bytes.NewReader(layer))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if data = edit(h.Name, data); data == nil && h.Typeflag == tar.TypeReg {
			continue
		}
		h.Size = int64(len(data))
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// Related makes dir a tree related to base, as a new version of an image
// is: base's files (hard links, when base is on the same file system),
// less 20 of them, with 10 replaced by edited copies, and seed's own 3 MiB
// of new files under /opt. base itself is never written: a file is
// edited by writing a new one in its place.
func Related(t testing.TB, base, dir string, seed uint64) string {
	t.Helper()
	if out, err := exec.Command("cp", "-al", base, dir).CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		if out, err := exec.Command("cp", "-a", base, dir).CombinedOutput(); err != nil {
			t.Fatalf("copying %s: %v\n%s", base, err, out)
		}
		t.Logf("cp -al %s: %s; copied instead", base, out)
	}
	var files []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			files = append(files, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	rnd := rand.New(rand.NewSource(int64(seed)))
	rnd.Shuffle(len(files), func(i, j int) { files[i], files[j] = files[j], files[i] })
	for _, p := range files[:20] {
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range files[20:30] {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		for range 1 + len(data)/4096 {
			if len(data) > 0 {
				data[rnd.Intn(len(data))] ^= 0x55
			}
		}
		data = append(data, fmt.Sprintf("edited for %d\n", seed)...)
		os.Remove(p) // a hard link to base: write a new file, not base's
		if err := os.WriteFile(p, data, fi.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if err := os.Chown(p, int(st.Uid), int(st.Gid)); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, fi.Mode()&(os.ModePerm|os.ModeSetuid|os.ModeSetgid|os.ModeSticky)); err != nil {
			t.Fatal(err) // after the chown, which clears setuid
		}
	}
	own := filepath.Join(dir, "opt", fmt.Sprintf("related-%d", seed))
	if err := os.MkdirAll(own, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		data := make([]byte, 1<<20)
		rnd.Read(data)
		if err := os.WriteFile(filepath.Join(own, fmt.Sprint(i)), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
