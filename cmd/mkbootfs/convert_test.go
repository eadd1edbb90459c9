package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mkbootfs/mkbootfs/bootimage"
	"github.com/mkbootfs/mkbootfs/converter"
	"github.com/mkbootfs/mkbootfs/index"
)

// TestConvertChunkSize converts with casync's --chunk-size syntax: the
// index records the sizes, and the chunks keep to them.
func TestConvertChunkSize(t *testing.T) {
	src := t.TempDir()
	data := make([]byte, 1<<20)
	rand.Read(data)
	os.WriteFile(filepath.Join(src, "random"), data, 0o644)
	idx := filepath.Join(t.TempDir(), "x.idx")
	convertCLI(t, "--chunk-size", "4K:16K:64K", "--store", t.TempDir(), "--index", idx, "dir:"+src)
	x, err := index.ReadFile(idx)
	if err != nil {
		t.Fatal(err)
	}
	if got := x.Meta[converter.MetaChunker]; got != "fastcdc 4096/16384/65536" {
		t.Errorf("the index records the chunker as %q", got)
	}
	for i, c := range x.Chunks[:len(x.Chunks)-1] {
		if c.Size < 4096 || c.Size > 65536 {
			t.Errorf("chunk %d is %d bytes, outside 4K..64K", i, c.Size)
		}
	}
	if n := len(x.Chunks); n < 32 || n > 128 {
		t.Errorf("1 MiB of random data in %d chunks of 16 KiB on average", n)
	}
}

// usage is a command line that must fail with an error saying want.
type usage struct {
	args []string
	want string
}

// checkUsage runs each command line and checks its error.
func checkUsage(t *testing.T, cases []usage) {
	t.Helper()
	for _, tc := range cases {
		cmd := newRootCmd()
		cmd.SetArgs(tc.args)
		cmd.SetOut(io.Discard)
		cmd.SetErr(io.Discard)
		if err := cmd.ExecuteContext(context.Background()); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("mkbootfs %s: %v; want an error saying %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
}

// TestConvertStaleProfile converts with a profile that names nothing in
// the tree: the conversion goes on and says so.
func TestConvertStaleProfile(t *testing.T) {
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "present"), []byte("data"), 0o644)
	prof := filepath.Join(t.TempDir(), "profile")
	os.WriteFile(prof, []byte("mkbootfs profile 1\n\"/gone\" 0+4096\n"), 0o644)
	out := convertCLI(t, "--profile-from", prof, "--store", t.TempDir(), "--index", filepath.Join(t.TempDir(), "x.idx"), "dir:"+src)
	if !strings.Contains(out, "warning: none of the profile's 1 files is a file with data in dir:"+src) {
		t.Errorf("no warning about a profile that matches nothing:\n%s", out)
	}
}

// TestConvertStaticProfile converts the busybox image, whose command is
// /bin/sh, a symlink to the static busybox: the boot image carries a
// static profile of busybox, whole, and says so; --static-profile=false
// leaves the image with no profile, as before.
func TestConvertStaticProfile(t *testing.T) {
	src := busybox(t)
	fakeBootinit := filepath.Join(t.TempDir(), "bootinit")
	if err := os.WriteFile(fakeBootinit, []byte("bootinit"), 0o755); err != nil {
		t.Fatal(err)
	}
	read := func(out, layout string) *bootimage.Boot {
		t.Helper()
		b, err := bootimage.Read(context.Background(), "oci:"+layout)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		return b
	}
	layout := filepath.Join(t.TempDir(), "layout")
	out := convertCLI(t, "--bootinit", fakeBootinit, "--store", t.TempDir(), "docker-daemon:"+src, "oci:"+layout)
	b := read(out, layout)
	e, err := b.Index.Resolve("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	size := b.Index.Inodes[b.Index.Entries[e].Inode].Size
	if want := fmt.Sprintf("mkbootfs profile 1 static\n\"/bin/busybox\" 0+%d\n", size); string(b.Profile) != want || b.Boot.Tree != "" {
		t.Errorf("the boot image's profile is %q and its tree %q; want %q and none", b.Profile, b.Boot.Tree, want)
	}
	if !strings.Contains(out, "profile: 1 files, 2.0 MB found in the image without running it") {
		t.Errorf("convert does not say what the static profile holds:\n%s", out)
	}

	layout = filepath.Join(t.TempDir(), "layout")
	out = convertCLI(t, "--bootinit", fakeBootinit, "--store", t.TempDir(), "--static-profile=false", "docker-daemon:"+src, "oci:"+layout)
	if b := read(out, layout); b.Profile != nil || strings.Contains(out, "profile:") {
		t.Errorf("--static-profile=false: the boot image has the profile %q; convert says\n%s", b.Profile, out)
	}
}
