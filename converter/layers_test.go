package converter_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/mkbootfs/mkbootfs/converter"
	"github.com/mkbootfs/mkbootfs/extract"
	"github.com/mkbootfs/mkbootfs/internal/testtree"
	"github.com/mkbootfs/mkbootfs/store/local"
)

// entry is one tar entry of a test layer.
type entry struct {
	name, body, link string
	typ              byte
	mode             int64
	size             int64 // the header's, when not the body's
}

func file(name, body string) entry {
	return entry{name: name, body: body, typ: tar.TypeReg, mode: 0o644}
}
func dir(name string) entry          { return entry{name: name, typ: tar.TypeDir, mode: 0o755} }
func hardlink(name, to string) entry { return entry{name: name, link: to, typ: tar.TypeLink} }
func symlink(name, to string) entry {
	return entry{name: name, link: to, typ: tar.TypeSymlink, mode: 0o777}
}

func layerOf(t *testing.T, entries ...entry) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(1700000000, 123456789)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Linkname: e.link, ModTime: mtime, Format: tar.FormatPAX}
		if e.typ == tar.TypeReg {
			hdr.Size = int64(len(e.body))
		}
		if e.size != 0 {
			hdr.Size = e.size
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, e.body)
	}
	tw.Close()
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// ociImage writes the layers as an image in an OCI layout and returns its source name.
func ociImage(t *testing.T, layers ...v1.Layer) string {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	return ociSource(t, img)
}

// ociSource writes img in an OCI layout and returns its source name.
func ociSource(t *testing.T, img v1.Image) string {
	t.Helper()
	dir := t.TempDir()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img); err != nil {
		t.Fatal(err)
	}
	return "oci:" + dir
}

// extracted converts source, extracts it and returns the directory.
func extracted(t *testing.T, source string) string {
	t.Helper()
	x, s := testtree.Convert(t, source)
	out := filepath.Join(t.TempDir(), "out")
	if _, err := extract.Extract(context.Background(), x, s, out, extract.Options{Devices: true, SamePermissions: true}); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestFlattenWhiteoutsAndLinks(t *testing.T) {
	src := ociImage(t,
		layerOf(t, dir("a"), file("a/x", "x1"), file("a/y", "y1"), dir("d"), file("d/f", "f"),
			file("keep", "K"), file("h1", "H"), hardlink("h2", "h1"), dir("opq"), file("opq/old", "o")),
		layerOf(t, file("a/.wh.x", ""), file(".wh.d", ""), file("opq/.wh..wh..opq", ""), file("opq/new", "n"),
			file("h1", "NEW"), hardlink("hk", "keep"), file("a/y", "y2")),
		layerOf(t, dir("d"), file("d/g", "g")),
	)
	x, _ := testtree.Convert(t, src)
	out := extracted(t, src)

	want := map[string]string{"a/y": "y2", "d/g": "g", "keep": "K", "hk": "K", "h1": "NEW", "h2": "H", "opq/new": "n"}
	for p, body := range want {
		b, err := os.ReadFile(filepath.Join(out, p))
		if err != nil || string(b) != body {
			t.Errorf("%s = %q, %v; want %q", p, b, err, body)
		}
	}
	for _, gone := range []string{"a/x", "d/f", "opq/old", "a/.wh.x", ".wh.d", "opq/.wh..wh..opq"} {
		if _, err := os.Lstat(filepath.Join(out, gone)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s survived flattening", gone)
		}
	}
	// keep and hk are one file; h1 was replaced, so h2 keeps the old inode alone.
	if sameFile(t, out, "keep", "hk") != true || sameFile(t, out, "h1", "h2") != false {
		t.Errorf("hard links: keep~hk %v, h1~h2 %v", sameFile(t, out, "keep", "hk"), sameFile(t, out, "h1", "h2"))
	}
	e, err := x.Resolve("/keep")
	if err != nil || x.Inodes[x.Entries[e].Inode].Nlink != 2 {
		t.Errorf("keep: nlink in index = %d, %v", x.Inodes[x.Entries[e].Inode].Nlink, err)
	}
}

func sameFile(t *testing.T, dir, a, b string) bool {
	fa, err1 := os.Lstat(filepath.Join(dir, a))
	fb, err2 := os.Lstat(filepath.Join(dir, b))
	if err1 != nil || err2 != nil {
		t.Fatalf("lstat: %v %v", err1, err2)
	}
	return os.SameFile(fa, fb)
}

func TestFlattenSameLayerWhiteoutKeepsSameLayerEntries(t *testing.T) {
	// Whiteouts hide what lower layers made, not what their own layer makes.
	src := ociImage(t,
		layerOf(t, dir("d"), file("d/old", "o")),
		layerOf(t, file("d/new", "n"), file("d/.wh..wh..opq", ""), file("z", "z"), file(".wh.z", "")),
	)
	out := extracted(t, src)
	for p, want := range map[string]bool{"d/new": true, "d/old": false, "z": true} {
		_, err := os.Lstat(filepath.Join(out, p))
		if (err == nil) != want {
			t.Errorf("%s exists = %v, want %v", p, err == nil, want)
		}
	}
}

func TestHostileLayers(t *testing.T) {
	for _, tc := range []struct {
		name    string
		entries []entry
		err     string
	}{
		{"dotdot", []entry{file("../evil", "x")}, "climbs out"},
		{"nested dotdot", []entry{dir("a"), file("a/../../evil", "x")}, "climbs out"},
		{"hardlink outside", []entry{hardlink("l", "../../etc/passwd")}, "climbs out"},
		{"hardlink to nothing", []entry{hardlink("l", "missing")}, "does not exist"},
		{"hardlink to a dir", []entry{dir("d"), hardlink("l", "d")}, "directory"},
		{"unknown type", []entry{{name: "x", typ: 'Z'}}, "unsupported"},
		{"hardlink to itself", []entry{file("f", "x"), hardlink("l", "l")}, "does not exist"},
		{"hardlink loop", []entry{hardlink("a", "b"), hardlink("b", "a")}, "does not exist"},
		{"name of 256 bytes", []entry{file(strings.Repeat("n", 256), "x")}, "longer than 255 bytes"},
		{"1 TB file, 4 KB of it", []entry{{name: "huge", typ: tar.TypeReg, mode: 0o644, body: strings.Repeat("x", 4096), size: 1 << 40}}, "unexpected EOF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := local.Open(t.TempDir(), true)
			_, err := converter.Convert(context.Background(), converter.Options{Source: ociImage(t, layerOf(t, tc.entries...)), Store: s, TmpDir: t.TempDir()})
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.err)
			}
		})
	}
}

func TestHostileButHarmlessEntries(t *testing.T) {
	// Absolute names land inside the root, symlinks pointing out or in a
	// loop are kept as they are and never followed, and a duplicate entry
	// replaces the first.
	outside := t.TempDir()
	src := ociImage(t, layerOf(t,
		file("/abs", "a"), symlink("out", outside), symlink("up", "../../../.."),
		file("dup", "1"), file("dup", "2"), dir("/etc"), file("./etc/./f", "f"),
		symlink("loop1", "loop2"), symlink("loop2", "loop1"), symlink("self", "self")))
	out := extracted(t, src)
	if b, _ := os.ReadFile(filepath.Join(out, "abs")); string(b) != "a" {
		t.Errorf("abs = %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(out, "dup")); string(b) != "2" {
		t.Errorf("dup = %q, want the later entry", b)
	}
	if target, _ := os.Readlink(filepath.Join(out, "out")); target != outside {
		t.Errorf("out -> %q", target)
	}
	if target, _ := os.Readlink(filepath.Join(out, "loop1")); target != "loop2" {
		t.Errorf("loop1 -> %q, want a symlink kept as it is", target)
	}
	if names, _ := os.ReadDir(outside); len(names) != 0 {
		t.Errorf("extract wrote outside its directory: %v", names)
	}
}

func TestExtractRefusesNonEmptyDir(t *testing.T) {
	x, s := testtree.Convert(t, ociImage(t, layerOf(t, file("f", "x"))))
	out := t.TempDir()
	os.WriteFile(filepath.Join(out, "there"), nil, 0o644)
	if _, err := extract.Extract(context.Background(), x, s, out, extract.Options{}); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("err = %v", err)
	}
}

func TestDevicesAndModes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("creating device nodes needs root")
	}
	src := ociImage(t, layerOf(t,
		entry{name: "null", typ: tar.TypeChar, mode: 0o666},
		entry{name: "suid", typ: tar.TypeReg, mode: 0o4755, body: "#!/bin/sh\n"},
		entry{name: "tmp", typ: tar.TypeDir, mode: 0o1777},
		entry{name: "fifo", typ: tar.TypeFifo, mode: 0o600},
	))
	out := extracted(t, src)
	for name, want := range map[string]fs.FileMode{
		"null": fs.ModeDevice | fs.ModeCharDevice | 0o666,
		"suid": fs.ModeSetuid | 0o755,
		"tmp":  fs.ModeDir | fs.ModeSticky | 0o777,
		"fifo": fs.ModeNamedPipe | 0o600,
	} {
		fi, err := os.Lstat(filepath.Join(out, name))
		if err != nil || fi.Mode() != want {
			t.Errorf("%s: mode %v, %v; want %v", name, fi.Mode(), err, want)
		}
	}
	var st syscall.Stat_t
	syscall.Lstat(filepath.Join(out, "suid"), &st)
	if st.Mtim.Nsec != 123456789 {
		t.Errorf("mtime nanoseconds = %d", st.Mtim.Nsec)
	}
}

// TestInvalidWhiteouts: an entry with a .wh. name that is no valid
// whiteout stops the conversion with an error naming the layer and the
// entry, where it was dropped, or kept for the boot image's own layer,
// which docker would then read as a whiteout.
func TestInvalidWhiteouts(t *testing.T) {
	lower := layerOf(t, dir("a"), file("a/x", "x"), dir("d"), file("d/f", "f"))
	for _, tc := range []struct {
		name  string
		entry entry
		err   string
	}{
		{"no name", file(".wh.", ""), "names no file"},
		{"dot", file("a/.wh..", ""), "names no file"},
		{"dot dot", file("a/.wh...", ""), "names no file"},
		{"a directory", dir(".wh.keep"), "must be a file, not a directory"},
		{"a directory over a file", dir("a/.wh.x"), "must be a file, not a directory"},
		{"a symlink", symlink("a/.wh.x", "/etc/passwd"), "must be a file, not a symlink"},
		{"a device", entry{name: "a/.wh.x", typ: tar.TypeChar, mode: 0o600}, "must be a file, not a character device"},
		{"opaque directory", dir("d/.wh..wh..opq"), "must be a file, not a directory"},
		{"opaque symlink", symlink("d/.wh..wh..opq", "x"), "must be a file, not a symlink"},
		{"other meta", file("d/.wh..wh.foo", ""), "only .wh..wh..opq"},
		{"entries under one", file("a/.wh.x/f", "f"), `"a/.wh.x" holds entries`},
		{"aufs meta below the root", file("d/.wh..wh.plnk/1", ""), `"d/.wh..wh.plnk" holds entries`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := local.Open(t.TempDir(), true)
			_, err := converter.Convert(context.Background(), converter.Options{Source: ociImage(t, lower, layerOf(t, tc.entry)), Store: s, TmpDir: t.TempDir()})
			if err == nil || !strings.Contains(err.Error(), "layer 2 of 2") || !strings.Contains(err.Error(), fmt.Sprintf("entry %q", tc.entry.name)) || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("err = %v; want layer 2 of 2, entry %q and %q", err, tc.entry.name, tc.err)
			}
		})
	}
}

// Whiteouts made by aufs-era docker: hard links to the whiteout base in
// .wh..wh.aufs, which docker skips with .wh..wh.plnk and .wh..wh.orph.
func TestAufsWhiteouts(t *testing.T) {
	src := ociImage(t,
		layerOf(t, dir("a"), file("a/x", "x"), file("a/y", "y")),
		layerOf(t, file(".wh..wh.aufs", ""), dir(".wh..wh.plnk"), file(".wh..wh.plnk/260.1", "p"), dir(".wh..wh.orph"),
			hardlink("a/.wh.x", ".wh..wh.aufs")),
	)
	out := extracted(t, src)
	for p, want := range map[string]bool{"a/x": false, "a/y": true, ".wh..wh.aufs": false, ".wh..wh.plnk": false, ".wh..wh.orph": false, "a/.wh.x": false} {
		if _, err := os.Lstat(filepath.Join(out, p)); (err == nil) != want {
			t.Errorf("%s exists = %v, want %v", p, err == nil, want)
		}
	}
}
