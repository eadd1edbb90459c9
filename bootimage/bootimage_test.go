package bootimage_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/mkbootfs/mkbootfs/bootimage"
	"github.com/mkbootfs/mkbootfs/bootinit/bootconfig"
	"github.com/mkbootfs/mkbootfs/converter"
	"github.com/mkbootfs/mkbootfs/internal/testtree"
	"github.com/mkbootfs/mkbootfs/profile"
	"github.com/mkbootfs/mkbootfs/store/local"
)

// converted converts a small tree with a profile into a boot image written
// to an OCI layout, and returns the conversion and the layout's name.
func converted(t *testing.T) (*converter.Result, []string, string) {
	t.Helper()
	src := t.TempDir()
	if err := os.MkdirAll(filepath.Join(src, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string]string{"etc/passwd": "root:x:0:0::/root:/bin/sh\n", "app": strings.Repeat("app\n", 5000)} {
		if err := os.WriteFile(filepath.Join(src, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	prof, err := profile.Parse(strings.NewReader("mkbootfs profile 1\n\"/app\" 0+4096\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	storeDir := t.TempDir()
	s, err := local.Open(storeDir, true)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	stores := []string{storeDir, "http://127.0.0.1:1/store"}
	res, err := converter.Convert(ctx, converter.Options{Source: "dir:" + src, Store: s, StoreURLs: stores, Profile: prof, TmpDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	img, err := converter.BootImage(ctx, res, []byte("bootinit"), s, stores)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := converter.WriteImage(ctx, img, "oci:"+dir); err != nil {
		t.Fatal(err)
	}
	return res, stores, "oci:" + dir
}

func TestRead(t *testing.T) {
	res, stores, ref := converted(t)
	b, err := bootimage.Read(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Index.Entries) != len(res.Index.Entries) || len(b.Index.Chunks) != len(res.Index.Chunks) {
		t.Errorf("index of %d entries and %d chunks, want %d and %d", len(b.Index.Entries), len(b.Index.Chunks), len(res.Index.Entries), len(res.Index.Chunks))
	}
	if strings.Join(b.Stores, ",") != strings.Join(stores, ",") {
		t.Errorf("stores %q, want %q", b.Stores, stores)
	}
	if b.Config == nil || b.Config.Config.Labels[bootimage.LabelStores] != strings.Join(stores, ",") {
		t.Errorf("config %+v: want the label %s", b.Config, bootimage.LabelStores)
	}
	if b.Boot == nil || len(b.Boot.Tree) != 64 {
		t.Errorf("boot config %+v: want a tree name", b.Boot)
	}
	if p, err := profile.Parse(bytes.NewReader(b.Profile), "read"); err != nil || len(p.Files) != 1 || p.Files[0].Path != "/app" {
		t.Errorf("profile %q: %+v, %v", b.Profile, p, err)
	}

	// An index file carries its stores in its meta.
	idx := filepath.Join(t.TempDir(), "x.idx")
	raw, err := res.Index.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(idx, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := bootimage.Read(context.Background(), idx); err != nil || strings.Join(b.Stores, ",") != strings.Join(stores, ",") || b.Config != nil {
		t.Errorf("Read(index file) = %+v, %v; want its stores %q", b, err, stores)
	}
}

// Anything but a boot image is refused with one line that names it and
// says what to do.
func TestReadRefuses(t *testing.T) {
	plain, err := random.Image(1024, 1)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(plain); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ ref, want string }{
		{"oci:" + dir, "is not a boot image (1 layers"},
		{"dir:" + t.TempDir(), "a directory, not an index file or a boot image"},
		{filepath.Join(t.TempDir(), "nothing-here"), "want an index file or a boot image"},
	} {
		_, err := bootimage.Read(context.Background(), tc.ref)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("Read(%s) = %v; want one line saying %q", tc.ref, err, tc.want)
		}
	}
}

// ReadLayer verifies the index: a flipped byte is an error naming the
// layer, never a tree.
func TestReadLayerCorrupt(t *testing.T) {
	_, _, ref := converted(t)
	own := ownLayer(t, ref)
	for _, tc := range []struct {
		name string
		edit func(name string, data []byte) []byte
		want string
	}{
		{"intact", func(_ string, d []byte) []byte { return d }, ""},
		{"index flipped", func(name string, d []byte) []byte {
			if name == strings.TrimPrefix(bootconfig.Index, "/") {
				d[len(d)/2] ^= 0xff
			}
			return d
		}, "layer-ref: "},
		{"no index", func(name string, d []byte) []byte {
			if name == strings.TrimPrefix(bootconfig.Index, "/") {
				return nil
			}
			return d
		}, "is not a boot image"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := bootimage.ReadLayer("layer-ref", bytes.NewReader(testtree.EditTar(t, own, tc.edit)))
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("ReadLayer: %v; want %q", err, tc.want)
			}
		})
	}
}

// ownLayer returns the boot image's own layer, uncompressed.
func ownLayer(t *testing.T, ref string) []byte {
	t.Helper()
	src, err := bootimage.ParseSource(ref)
	if err != nil {
		t.Fatal(err)
	}
	img, err := src.Image(context.Background(), bootimage.ImageOptions{})
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := layers[bootimage.OwnLayer].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
