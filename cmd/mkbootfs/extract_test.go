package main

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/internal/testenv"
)

// TestExtractUntrusted: `mkbootfs extract` run by root skips an image's
// device nodes and clears its setuid bits, and says so; --devices and
// --same-permissions (or tar's --preserve-permissions) keep them. Owners
// are kept either way.
func TestExtractUntrusted(t *testing.T) {
	testenv.Root(t)
	src, storeDir := t.TempDir(), t.TempDir()
	os.Mkdir(filepath.Join(src, "dev"), 0o755)
	if err := unix.Mknod(filepath.Join(src, "dev/mem"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 1))); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(src, "dev/mem"), 0o666) // past the umask
	sh := filepath.Join(src, "rootshell")
	os.WriteFile(sh, []byte("#!/bin/sh\n"), 0o755)
	os.Chmod(sh, 0o755|fs.ModeSetuid)
	os.WriteFile(filepath.Join(src, "owned"), nil, 0o644)
	os.Chown(filepath.Join(src, "owned"), 1234, 5678)
	idx := filepath.Join(t.TempDir(), "tree.idx")
	convertCLI(t, "--store", storeDir, "--index", idx, "dir:"+src)

	for _, tc := range []struct {
		flags []string
		keep  bool
	}{
		{nil, false},
		{[]string{"--devices", "--same-permissions"}, true},
		{[]string{"--devices", "--preserve-permissions"}, true},
		{[]string{"--devices", "-p"}, true},
	} {
		t.Run(strings.Join(append([]string{"extract"}, tc.flags...), " "), func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out")
			said := runCLI(t, append(append([]string{"extract", "--store", storeDir}, tc.flags...), idx, out)...)
			fi, err := os.Lstat(filepath.Join(out, "dev/mem"))
			if tc.keep && (err != nil || fi.Mode() != fs.ModeDevice|fs.ModeCharDevice|0o666) {
				t.Errorf("dev/mem with --devices: %v, %v", fi, err)
			} else if !tc.keep && !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("dev/mem by default: %v; want it skipped", err)
			}
			want := fs.FileMode(0o755)
			if tc.keep {
				want |= fs.ModeSetuid
			}
			if fi, err := os.Lstat(filepath.Join(out, "rootshell")); err != nil || fi.Mode() != want {
				t.Errorf("rootshell: %v, %v; want mode %v", fi.Mode(), err, want)
			}
			var st unix.Stat_t
			if err := unix.Lstat(filepath.Join(out, "owned"), &st); err != nil || st.Uid != 1234 || st.Gid != 5678 {
				t.Errorf("owned: %d:%d, %v; want 1234:5678", st.Uid, st.Gid, err)
			}
			for _, note := range []string{"skipped 1 device nodes (--devices", "of 1 files (--same-permissions"} {
				if strings.Contains(said, note) == tc.keep {
					t.Errorf("extract said %q; want %q only by default", said, note)
				}
			}
		})
	}
}
