package bootinit

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/bootinit/bootconfig"
)

func TestIsDockerVolume(t *testing.T) {
	for root, want := range map[string]bool{
		"/var/lib/docker/volumes/data/_data":             true,
		"/var/lib/docker/volumes/2315031aef0c7010/_data": true,
		"/srv/docker-root/volumes/data/_data":            true,
		"/home/me/_data":                                 false,
		"/var/lib/docker/containers/725e9b/hosts":        false,
		"/": false,
	} {
		if got := isDockerVolume(root); got != want {
			t.Errorf("isDockerVolume(%q) = %v, want %v", root, got, want)
		}
	}
}

// TestHoldsSkeleton tells docker's copy of the skeleton from what else a
// volume may hold, for an image directory with a directory, an executable,
// a symlink and a plain file.
func TestHoldsSkeleton(t *testing.T) {
	img := t.TempDir()
	must(t, os.Mkdir(filepath.Join(img, "dir"), 0o755))
	must(t, os.WriteFile(filepath.Join(img, "tool"), nil, 0o755))
	must(t, os.WriteFile(filepath.Join(img, "file"), []byte("data"), 0o644))
	must(t, os.Symlink("file", filepath.Join(img, "link")))
	skeleton := func(t *testing.T, vol string) {
		must(t, os.Mkdir(filepath.Join(vol, "dir"), 0o755))
		must(t, os.Symlink(bootconfig.Bootinit, filepath.Join(vol, "tool")))
		must(t, os.Symlink("file", filepath.Join(vol, "link")))
		for _, name := range []string{"dir", "tool", "link"} {
			epoch(t, filepath.Join(vol, name))
		}
	}
	for _, tc := range []struct {
		name string
		fill func(t *testing.T, vol string)
		want bool
	}{
		{"the skeleton", skeleton, true},
		{"nothing, dated by the skeleton", func(t *testing.T, vol string) { epoch(t, vol) }, true},
		{"nothing (nocopy)", func(t *testing.T, vol string) {}, false},
		{"the skeleton and a file", func(t *testing.T, vol string) {
			skeleton(t, vol)
			must(t, os.WriteFile(filepath.Join(vol, "new"), nil, 0o644))
		}, false},
		{"another symlink", func(t *testing.T, vol string) {
			must(t, os.Symlink("elsewhere", filepath.Join(vol, "link")))
			epoch(t, filepath.Join(vol, "link"))
		}, false},
		{"a directory made since", func(t *testing.T, vol string) {
			must(t, os.Mkdir(filepath.Join(vol, "dir"), 0o755))
		}, false},
		{"the image's file", func(t *testing.T, vol string) {
			must(t, os.WriteFile(filepath.Join(vol, "file"), []byte("data"), 0o644))
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vol := t.TempDir()
			tc.fill(t, vol)
			v, err := os.Open(vol)
			must(t, err)
			defer v.Close()
			i, err := os.Open(img)
			must(t, err)
			defer i.Close()
			got, err := holdsSkeleton(v, i, "", nil)
			if err != nil || got != tc.want {
				t.Fatalf("holdsSkeleton = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

// epoch dates p as the converter dates the skeleton.
func epoch(t *testing.T, p string) {
	t.Helper()
	ts := unix.NsecToTimespec(bootconfig.LayerTime.UnixNano())
	must(t, unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
