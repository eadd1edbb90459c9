package converter_test

import (
	"path/filepath"
	"testing"

	"github.com/mkbootfs/mkbootfs/internal/testenv"
	"github.com/mkbootfs/mkbootfs/internal/testtree"
)

// The Debian rootfs round-trips exactly through every image source: docker
// import keeps every attribute of this tree (xattrs included, with tar's
// --xattrs), so nothing needs ignoring.
func TestDebianImageSources(t *testing.T) {
	rootfs := testenv.DebianRootfs(t)
	image := testenv.DebianImage(t)
	archive := filepath.Join(t.TempDir(), "debian.tar")
	testenv.Run(t, "docker", "save", "-o", archive, image)
	registry := testenv.Registry(t) + "/" + image
	testenv.Run(t, "docker", "tag", image, registry)
	testenv.Run(t, "docker", "push", "-q", registry)

	for _, source := range []string{
		"docker-archive:" + archive,
		"docker://" + registry,
		"docker-daemon:" + image,
		image, // a bare reference the daemon has
	} {
		t.Run(source, func(t *testing.T) {
			out := extractedDebian(t, source)
			if diff := testtree.Diff(t, rootfs, out); diff != "" {
				t.Fatalf("%s extracted differs from the rootfs:\n%.3000s", source, diff)
			}
		})
	}
}
