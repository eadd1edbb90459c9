package converter_test

import (
	"compress/gzip"
	"context"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/mkbootfs/mkbootfs/bootimage"
	"github.com/mkbootfs/mkbootfs/converter"
	"github.com/mkbootfs/mkbootfs/execdeps"
	"github.com/mkbootfs/mkbootfs/internal/testenv"
	"github.com/mkbootfs/mkbootfs/profile"
)

// TestStaticProfile converts the Debian rootfs as an image whose command
// is apt-get: the static profile is what execdeps finds in the rootfs on
// disk, each file whole and laid out first in its order; a recorded
// profile comes first, with its ranges, and the static one adds what it
// does not name. The boot image carries the static profile, marked so,
// and names no boot tree for it.
func TestStaticProfile(t *testing.T) {
	root := testenv.DebianRootfs(t)
	testenv.Command(t, "tar")
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		cmd := exec.Command("tar", "-C", root, "-cf", "-", ".")
		out, err := cmd.StdoutPipe()
		if err != nil {
			return nil, err
		}
		return &waitCloser{out, cmd}, cmd.Start()
		// Stored, not compressed: gzip of the 200 MB tar, for its digest and
		// again for the layout, took minutes under the race detector.
	}, tarball.WithCompressionLevel(gzip.NoCompression))
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	argv := []string{"apt-get", "--version"}
	img, err = mutate.Config(img, v1.Config{Entrypoint: argv[:1], Cmd: argv[1:], Env: []string{"PATH=/usr/bin:/bin"}})
	if err != nil {
		t.Fatal(err)
	}
	source := ociSource(t, img)
	want, err := execdeps.Files(os.DirFS(root), argv, execdeps.Options{Env: []string{"PATH=/usr/bin:/bin"}})
	if err != nil || len(want) < 10 {
		t.Fatalf("execdeps.Files on the rootfs: %q, %v", want, err)
	}
	s := sharedDebianStore(t)
	convert := func(prof *profile.Profile, static bool) *converter.Result {
		t.Helper()
		res, err := converter.Convert(context.Background(), converter.Options{Source: source, Store: s, TmpDir: t.TempDir(), Profile: prof, StaticProfile: static})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	paths := func(p *profile.Profile) []string {
		var out []string
		for _, f := range p.Files {
			out = append(out, f.Path)
		}
		return out
	}

	// What the boot image of a result holds: its profile, and the name of
	// its boot tree.
	boot := func(res *converter.Result) (string, string) {
		t.Helper()
		img, err := converter.BootImage(context.Background(), res, []byte("bootinit"), s, []string{"file:///store"})
		if err != nil {
			t.Fatal(err)
		}
		b, err := bootimage.FromImage("test", img)
		if err != nil {
			t.Fatal(err)
		}
		return string(b.Profile), b.Boot.Tree
	}

	res := convert(nil, true)
	if got := paths(res.Profile); !slices.Equal(got, want) || res.Stats.StaticFiles != len(want) || !res.Profile.Static || res.StaticErr != nil {
		t.Fatalf("static profile %q (%d added, static %v, %v), want %q", got, res.Stats.StaticFiles, res.Profile.Static, res.StaticErr, want)
	}
	// The boot image has it, marked static, and no tree of it.
	if prof, tree := boot(res); !strings.HasPrefix(prof, "mkbootfs profile 1 static\n\"/usr/bin/apt-get\" 0+") || tree != "" {
		t.Errorf("the boot image's profile begins %.60q and its tree is %q; want the static profile and none", prof, tree)
	}
	x := res.Index
	var offset int64
	for _, f := range res.Profile.Files {
		e, err := x.Resolve(f.Path)
		if err != nil {
			t.Fatal(err)
		}
		ino := x.Inodes[x.Entries[e].Inode]
		if len(f.Ranges) != 1 || f.Ranges[0] != (profile.Range{Off: 0, Len: ino.Size}) {
			t.Errorf("%s: ranges %v, want the whole file (%d bytes)", f.Path, f.Ranges, ino.Size)
		}
		if ino.Offset != offset {
			t.Errorf("%s at stream offset %d, want %d: laid out first, in the profile's order", f.Path, ino.Offset, offset)
		}
		offset += ino.Size
	}

	recorded := &profile.Profile{Files: []profile.File{
		{Path: "/usr/bin/apt-get", Ranges: []profile.Range{{Off: 0, Len: 4096}}},
		{Path: "/etc/apt/apt.conf.d/01autoremove", Ranges: []profile.Range{{Off: 0, Len: 100}}},
	}}
	res = convert(recorded, true)
	if got, wantMerged := paths(res.Profile), append(paths(recorded), want[1:]...); !slices.Equal(got, wantMerged) || res.Stats.StaticFiles != len(want)-1 {
		t.Errorf("recorded and static profile %q (%d added), want %q", got, res.Stats.StaticFiles, wantMerged)
	}
	if r := res.Profile.Files[0].Ranges; !slices.Equal(r, recorded.Files[0].Ranges) {
		t.Errorf("apt-get's ranges %v, want the recorded ones", r)
	}
	if prof, tree := boot(res); !strings.HasPrefix(prof, "mkbootfs profile 1\n") || len(tree) != 64 || res.Profile.Static {
		t.Errorf("the boot image's profile begins %.30q and its tree is %q; want a recorded profile and its tree", prof, tree)
	}
}

// waitCloser is a command's output that waits for the command on Close.
type waitCloser struct {
	io.ReadCloser
	cmd *exec.Cmd
}

func (w *waitCloser) Close() error {
	w.ReadCloser.Close()
	return w.cmd.Wait()
}
