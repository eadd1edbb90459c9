package execdeps

import (
	"io/fs"
	"os"
	"os/exec"
	"path"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/mkbootfs/mkbootfs/internal/testenv"
)

// inRoot runs name in the chroot root and returns its output.
func inRoot(t *testing.T, root string, args ...string) string {
	t.Helper()
	testenv.Root(t)
	out, err := exec.Command("chroot", append([]string{root}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("chroot %s %s: %v: %s", root, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// loaderList is what the image's own loader says the program at p loads
// (ld.so --list), each library's path free of symlinks (realpath).
func loaderList(t *testing.T, root, p string) []string {
	var libs []string
	for _, line := range strings.Split(inRoot(t, root, "/lib64/ld-linux-x86-64.so.2", "--list", p), "\n") {
		// "libm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x...)"; the
		// loader's own line has no "=>", the vDSO no path.
		if _, rest, ok := strings.Cut(line, "=> "); ok {
			libs = append(libs, strings.Fields(rest)[0])
		}
	}
	if len(libs) == 0 {
		return nil
	}
	return strings.Fields(inRoot(t, root, append([]string{"realpath", "-e"}, libs...)...))
}

// TestFilesDebian checks the files found for programs and scripts of the
// Debian rootfs against its own loader's list of what they load.
func TestFilesDebian(t *testing.T) {
	root := testenv.DebianRootfs(t)
	const (
		ld    = "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
		cache = "/etc/ld.so.cache"
	)
	for _, tc := range []struct {
		argv    []string
		program string   // what the loader loads for: the last ELF program
		before  []string // the scripts and interpreters read before it
	}{
		{argv: []string{"apt-get", "--version"}, program: "/usr/bin/apt-get"},
		{argv: []string{"/bin/ls"}, program: "/usr/bin/ls"},
		{argv: []string{"bash"}, program: "/usr/bin/bash"},
		{argv: []string{"perl", "-e", "1"}, program: "/usr/bin/perl"},
		{argv: []string{"ldd"}, program: "/usr/bin/bash", before: []string{"/usr/bin/ldd"}},
		{argv: []string{"debconf"}, program: "/usr/bin/perl", before: []string{"/usr/bin/debconf"}},
		{argv: []string{"savelog"}, program: "/usr/bin/dash", before: []string{"/usr/bin/savelog"}},
		{argv: []string{"/bin/sh", "-c", "exec apt-get --version"}, program: "/usr/bin/apt-get", before: []string{"/usr/bin/dash", ld, cache, "/usr/lib/x86_64-linux-gnu/libc.so.6"}},
	} {
		t.Run(strings.Join(tc.argv, " "), func(t *testing.T) {
			got, err := Files(os.DirFS(root), tc.argv, Options{})
			if err != nil {
				t.Fatal(err)
			}
			var want []string
			add := func(p string) {
				if !slices.Contains(want, p) {
					want = append(want, p)
				}
			}
			for _, p := range append(slices.Clone(tc.before), tc.program, ld) {
				add(p)
			}
			libs := loaderList(t, root, tc.program)
			if len(libs) > 0 {
				add(cache)
			}
			for _, l := range libs {
				add(l)
			}
			if !slices.Equal(got, want) {
				t.Errorf("Files(%q):\n got %q\nwant %q", tc.argv, got, want)
			}
		})
	}
}

// TestLDCacheDebian reads the rootfs's ld.so.cache and compares it with
// what its ldconfig -p lists.
func TestLDCacheDebian(t *testing.T) {
	root := testenv.DebianRootfs(t)
	b, err := os.ReadFile(root + "/etc/ld.so.cache")
	if err != nil {
		t.Fatal(err)
	}
	c, err := parseLDCache(b)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(inRoot(t, root, "/sbin/ldconfig", "-p"), "\n")[1:] {
		// "\tlibz.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libz.so.1"
		f := strings.Fields(line)
		if len(f) < 4 || f[len(f)-2] != "=>" {
			continue
		}
		n++
		if got := c.lookup(f[0]); !slices.Contains(got, f[len(f)-1]) {
			t.Errorf("lookup(%s) = %q, ldconfig -p says %s", f[0], got, f[len(f)-1])
		}
	}
	if n < 50 {
		t.Fatalf("ldconfig -p listed %d libraries", n)
	}
	total := 0
	for _, e := range c {
		total += len(e)
	}
	if total != n {
		t.Errorf("the cache holds %d entries, ldconfig -p lists %d", total, n)
	}
}

// cacheFile builds a loader cache: entries of (flags, soname, path), in
// the new format, or the old one with (withNew) or without the new one
// after it.
func cacheFile(old, withNew bool, entries ...[3]string) []byte {
	le := func(b []byte, v uint64, n int) []byte {
		for i := range n {
			b = append(b, byte(v>>(8*i)))
		}
		return b
	}
	flags := map[string]uint64{"elf": flagELFLibc6 | 0x0300, "libc5": 2}
	newPart := func() []byte {
		b := []byte(newMagic)
		b = le(b, uint64(len(entries)), 4)
		b = append(b, make([]byte, newHeaderSize-len(b))...)
		strs := newHeaderSize + len(entries)*newEntrySize
		var table []byte
		for _, e := range entries {
			b = le(b, flags[e[0]], 4)
			b = le(b, uint64(strs+len(table)), 4)
			table = append(append(table, e[1]...), 0)
			b = le(b, uint64(strs+len(table)), 4)
			table = append(append(table, e[2]...), 0)
			b = le(b, 0, 4)
			b = le(b, 0, 8)
		}
		return append(b, table...)
	}
	if !old {
		return newPart()
	}
	b := append([]byte(oldMagic), 0)
	b = le(b, uint64(len(entries)), 4)
	var table []byte
	for _, e := range entries {
		b = le(b, flags[e[0]], 4)
		b = le(b, uint64(len(table)), 4)
		table = append(append(table, e[1]...), 0)
		b = le(b, uint64(len(table)), 4)
		table = append(append(table, e[2]...), 0)
	}
	if withNew {
		for len(b)%8 != 0 {
			b = append(b, 0)
		}
		return append(b, newPart()...)
	}
	return append(b, table...)
}

func TestLDCacheFormats(t *testing.T) {
	entries := [][3]string{{"elf", "libz.so.1", "/lib/libz.so.1"}, {"libc5", "libold.so.1", "/lib/libold.so.1"}, {"elf", "libz.so.1", "/lib32/libz.so.1"}}
	for _, tc := range []struct {
		name         string
		old, withNew bool
	}{{"new", false, false}, {"old then new", true, true}, {"old", true, false}} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseLDCache(cacheFile(tc.old, tc.withNew, entries...))
			if err != nil {
				t.Fatal(err)
			}
			if got := c.lookup("libz.so.1"); !slices.Equal(got, []string{"/lib/libz.so.1", "/lib32/libz.so.1"}) {
				t.Errorf("lookup(libz.so.1) = %q", got)
			}
			if got := c.lookup("libold.so.1"); got != nil {
				t.Errorf("lookup(libold.so.1), a libc5 library = %q, want none", got)
			}
		})
	}
	good := cacheFile(false, false, entries...)
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"other magic", []byte("glibc-ld.so.cache1.2" + strings.Repeat("\x00", 40))},
		{"truncated header", good[:30]},
		{"more entries than bytes", append(append(slices.Clone(good[:20]), 0xff, 0xff, 0xff, 0x0f), good[24:]...)},
		{"old, truncated", []byte(oldMagic + "\x00\xff\xff")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if c, err := parseLDCache(tc.b); err == nil {
				t.Fatalf("parseLDCache gave %v, want an error", c)
			}
		})
	}
	t.Run("strings outside the file", func(t *testing.T) {
		b := slices.Clone(good)
		b[newHeaderSize+4] = 0xff // the first entry's key offset
		b[newHeaderSize+5] = 0xff
		c, err := parseLDCache(b)
		if err != nil {
			t.Fatal(err)
		}
		if got := c.lookup("libz.so.1"); !slices.Equal(got, []string{"/lib32/libz.so.1"}) {
			t.Errorf("lookup(libz.so.1) = %q, want the entry whose strings are in the file", got)
		}
	})
}

func FuzzLDCache(f *testing.F) {
	f.Add(cacheFile(false, false, [3]string{"elf", "libz.so.1", "/lib/libz.so.1"}))
	f.Add(cacheFile(true, true, [3]string{"elf", "libz.so.1", "/lib/libz.so.1"}))
	f.Add(cacheFile(true, false, [3]string{"elf", "libz.so.1", "/lib/libz.so.1"}))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := parseLDCache(b)
		if err != nil {
			return
		}
		for name, es := range c {
			if len(name) > maxCacheString || len(es) == 0 {
				t.Fatalf("entry %q: %d paths", name, len(es))
			}
		}
	})
}

// TestScripts follows #! chains in an image whose programs are no ELF
// files: what the kernel reads, each file once.
func TestScripts(t *testing.T) {
	exe := &fstest.MapFile{Data: []byte("not ELF"), Mode: 0o755}
	script := func(line string) *fstest.MapFile {
		return &fstest.MapFile{Data: []byte(line + "\nbody\n"), Mode: 0o755}
	}
	fsys := fstest.MapFS{
		"usr/bin/python3.11":  exe,
		"usr/bin/python3":     &fstest.MapFile{Data: []byte("python3.11"), Mode: 0o777 | os.ModeSymlink},
		"bin":                 &fstest.MapFile{Data: []byte("usr/bin"), Mode: 0o777 | os.ModeSymlink},
		"usr/bin/env":         exe,
		"usr/bin/sh":          exe,
		"app/run":             script("#!/usr/bin/env python3"),
		"app/run-s":           script("#!/usr/bin/env -S LANG=C python3 -u"),
		"app/run-direct":      script("#! /bin/python3 -u"),
		"app/run-tab":         script("#!\t/bin/sh\t-e"),
		"app/nested":          script("#!/app/run-direct"),
		"app/loop":            script("#!/app/loop"),
		"app/missing":         script("#!/usr/bin/ruby"),
		"app/rel":             script("#!python3"),
		"usr/local/bin/tool":  script("#!/bin/sh"),
		"app/link-loop":       &fstest.MapFile{Data: []byte("link-loop"), Mode: 0o777 | os.ModeSymlink},
		"app/up":              &fstest.MapFile{Data: []byte("../../../../usr/bin/sh"), Mode: 0o777 | os.ModeSymlink},
		"app/not-executable":  &fstest.MapFile{Data: []byte("x"), Mode: 0o644},
		"usr/bin/nonexec-cmd": &fstest.MapFile{Data: []byte("x"), Mode: 0o644},
	}
	for _, tc := range []struct {
		argv    []string
		opts    Options
		want    []string
		wantErr string
	}{
		{argv: []string{"/app/run"}, want: []string{"/app/run", "/usr/bin/env", "/usr/bin/python3.11"}},
		{argv: []string{"/app/run-s"}, want: []string{"/app/run-s", "/usr/bin/env", "/usr/bin/python3.11"}},
		{argv: []string{"/app/run-direct"}, want: []string{"/app/run-direct", "/usr/bin/python3.11"}},
		{argv: []string{"/app/run-tab"}, want: []string{"/app/run-tab", "/usr/bin/sh"}},
		{argv: []string{"/app/nested"}, want: []string{"/app/nested", "/app/run-direct", "/usr/bin/python3.11"}},
		{argv: []string{"/app/loop"}, want: []string{"/app/loop"}},
		{argv: []string{"/app/missing"}, want: []string{"/app/missing"}},
		{argv: []string{"rel"}, opts: Options{WorkDir: "/app", Env: []string{"PATH=/app"}}, want: []string{"/app/rel"}},
		{argv: []string{"./run-direct"}, opts: Options{WorkDir: "/app"}, want: []string{"/app/run-direct", "/usr/bin/python3.11"}},
		{argv: []string{"tool"}, want: []string{"/usr/local/bin/tool", "/usr/bin/sh"}},
		{argv: []string{"tool"}, opts: Options{Env: []string{"PATH=/bin"}}, wantErr: "not found in PATH /bin"},
		{argv: []string{"nonexec-cmd"}, wantErr: "not found in PATH"},
		{argv: []string{"/app/up"}, want: []string{"/usr/bin/sh"}},
		{argv: []string{"/app/link-loop"}, wantErr: "too many symlinks"},
		{argv: []string{"/bin/sh", "-c", "exec tool --flag"}, want: []string{"/usr/bin/sh", "/usr/local/bin/tool"}},
		{argv: []string{"sh", "-c", "A=1 python3 x.py"}, want: []string{"/usr/bin/sh", "/usr/bin/python3.11"}},
		{argv: []string{"sh", "-c", "$HOME/x"}, want: []string{"/usr/bin/sh"}},
		{argv: []string{"sh", "-c", "cd /app && ./run"}, want: []string{"/usr/bin/sh"}},
		{argv: nil, wantErr: "no command"},
	} {
		t.Run(strings.Join(tc.argv, " "), func(t *testing.T) {
			got, err := Files(fsys, tc.argv, tc.opts)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Files(%q) = %q, %v; want an error saying %q", tc.argv, got, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("Files(%q) = %q, want %q", tc.argv, got, tc.want)
			}
		})
	}
}

// TestSearchPaths builds a program and libraries with gcc and checks
// where each library is found: DT_RPATH before LD_LIBRARY_PATH before
// DT_RUNPATH before the cache, $ORIGIN taken from the object that needs
// it. The host's loader (ld.so --list) agrees on the same tree.
func TestSearchPaths(t *testing.T) {
	gcc := testenv.Command(t, "gcc")
	root := t.TempDir()
	build := func(out string, args ...string) {
		t.Helper()
		if err := os.MkdirAll(path.Dir(root+out), 0o755); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(gcc, append([]string{"-o", root + out}, args...)...)
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("gcc %v: %v: %s", args, err, b)
		}
	}
	src := func(name, text string) string {
		p := root + "/src/" + name
		os.MkdirAll(root+"/src", 0o755)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// libdep.so needs libleaf.so, found through libdep's own $ORIGIN;
	// another libdep.so needs nothing.
	build("/opt/a/lib/libleaf.so", "-shared", "-fPIC", src("leaf.c", "int g(void) { return 1; }\n"))
	build("/opt/a/lib/libdep.so", "-shared", "-fPIC", src("dep.c", "int g(void); int f(void) { return g(); }\n"),
		"-L"+root+"/opt/a/lib", "-lleaf", "-Wl,--enable-new-dtags", "-Wl,-rpath,$ORIGIN")
	build("/opt/b/libdep.so", "-shared", "-fPIC", src("lib.c", "int f(void) { return 1; }\n"))
	main := src("main.c", "int f(void); int main(void) { return f(); }\n")
	build("/opt/a/bin/runpath", main, "-L"+root+"/opt/a/lib", "-ldep", "-Wl,--enable-new-dtags", "-Wl,-rpath,$ORIGIN/../lib")
	build("/opt/a/bin/rpath", main, "-L"+root+"/opt/a/lib", "-ldep", "-Wl,--disable-new-dtags", "-Wl,-rpath,$ORIGIN/../lib")

	host := func(p string, env ...string) []string {
		cmd := exec.Command("/lib64/ld-linux-x86-64.so.2", "--list", root+p)
		cmd.Env = env
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("ld.so --list %s: %v", p, err)
		}
		var libs []string
		for _, line := range strings.Split(string(out), "\n") {
			if _, rest, ok := strings.Cut(line, "=> "+root); ok {
				libs = append(libs, path.Clean(strings.Fields(rest)[0]))
			}
		}
		return libs
	}
	for _, tc := range []struct {
		prog string
		env  []string
		want []string // the test's own libraries, in load order
	}{
		{"/opt/a/bin/runpath", nil, []string{"/opt/a/lib/libdep.so", "/opt/a/lib/libleaf.so"}},
		{"/opt/a/bin/runpath", []string{"LD_LIBRARY_PATH=/opt/b"}, []string{"/opt/b/libdep.so"}},
		{"/opt/a/bin/rpath", []string{"LD_LIBRARY_PATH=/opt/b"}, []string{"/opt/a/lib/libdep.so", "/opt/a/lib/libleaf.so"}},
	} {
		t.Run(path.Base(tc.prog)+" "+strings.Join(tc.env, " "), func(t *testing.T) {
			var hostEnv []string
			for _, e := range tc.env {
				k, v, _ := strings.Cut(e, "=")
				hostEnv = append(hostEnv, k+"="+root+v)
			}
			if got := host(tc.prog, hostEnv...); !slices.Equal(got, tc.want) {
				t.Fatalf("the host's loader finds %q, the test expects %q", got, tc.want)
			}
			// The image: the test's files over the host's root, where
			// libc and the loader come from.
			files, err := Files(overlay{os.DirFS(root), os.DirFS("/")}, []string{tc.prog}, Options{Env: tc.env})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, f := range files {
				if strings.HasPrefix(f, "/opt/") && f != tc.prog {
					got = append(got, f)
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("Files found %q of the test's libraries (all: %q), want %q", got, files, tc.want)
			}
		})
	}
}

// overlay shows top's files over bottom's.
type overlay struct{ top, bottom fs.FS }

func (o overlay) pick(name string) fs.FS {
	if _, err := o.top.(fs.ReadLinkFS).Lstat(name); err == nil {
		return o.top
	}
	return o.bottom
}
func (o overlay) Open(name string) (fs.File, error) { return o.pick(name).Open(name) }
func (o overlay) Lstat(name string) (fs.FileInfo, error) {
	return o.pick(name).(fs.ReadLinkFS).Lstat(name)
}
func (o overlay) ReadLink(name string) (string, error) {
	return o.pick(name).(fs.ReadLinkFS).ReadLink(name)
}
