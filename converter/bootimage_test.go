package converter_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/mkbootfs/mkbootfs/bootinit/bootconfig"
	"github.com/mkbootfs/mkbootfs/converter"
	"github.com/mkbootfs/mkbootfs/store/local"
)

// TestBootImageKeepsTheConfig converts images and builds their boot
// images: bootinit runs in front of the original entrypoint, every other
// setting of the original config is kept as it was, and the boot image
// records where its chunks live, in the boot config bootinit reads and in
// a label.
func TestBootImageKeepsTheConfig(t *testing.T) {
	for _, tc := range []struct {
		name     string
		platform v1.Platform
		config   v1.Config
	}{
		{"every setting", v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}, v1.Config{
			Entrypoint:   []string{"/docker-entrypoint.sh", "--verbose"},
			Cmd:          []string{"serve", "--port", "8080"},
			Env:          []string{"PATH=/usr/local/bin:/usr/bin:/bin", "FOO=bar baz"},
			User:         "app:staff",
			WorkingDir:   "/srv/app",
			ExposedPorts: map[string]struct{}{"8080/tcp": {}, "53/udp": {}},
			Volumes:      map[string]struct{}{"/var/lib/app": {}, "/cache": {}},
			Labels:       map[string]string{"org.opencontainers.image.title": "app", "maintainer": "someone"},
			StopSignal:   "SIGQUIT",
			Healthcheck:  &v1.HealthConfig{Test: []string{"CMD", "/healthz"}, Interval: 30 * time.Second, Timeout: 5 * time.Second, Retries: 3},
			Shell:        []string{"/bin/bash", "-c"},
			OnBuild:      []string{"RUN make"},
			ArgsEscaped:  true,
		}},
		// bootinit alone is the entrypoint: docker appends the cmd to it.
		{"cmd only", v1.Platform{OS: "linux", Architecture: "amd64"}, v1.Config{Cmd: []string{"/bin/sh"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			img, err := mutate.AppendLayers(empty.Image, layerOf(t, dir("srv"), dir("srv/app"), file("srv/app/run", "#!/bin/sh\n")))
			if err != nil {
				t.Fatal(err)
			}
			img, err = mutate.ConfigFile(img, &v1.ConfigFile{
				OS: tc.platform.OS, Architecture: tc.platform.Architecture, Variant: tc.platform.Variant,
				RootFS: v1.RootFS{Type: "layers"}, Config: *tc.config.DeepCopy(),
			})
			if err != nil {
				t.Fatal(err)
			}
			source := ociSource(t, img)
			storeDir := t.TempDir()
			s, err := local.Open(storeDir, true)
			if err != nil {
				t.Fatal(err)
			}
			res, err := converter.Convert(ctx, converter.Options{Source: source, Store: s, StoreURLs: []string{storeDir}, TmpDir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			stores := []string{storeDir, "https://chunks.example/store/"}
			boot, err := converter.BootImage(ctx, res, []byte("bootinit"), s, stores)
			if err != nil {
				t.Fatal(err)
			}
			// As a runtime reads it: from the config's bytes.
			raw, err := boot.RawConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			got, err := v1.ParseConfigFile(bytes.NewReader(raw))
			if err != nil {
				t.Fatal(err)
			}

			if p := got.Platform(); p == nil || p.String() != tc.platform.String() {
				t.Errorf("boot image platform %v, want the original's %v", p, tc.platform.String())
			}
			wantEntrypoint := append([]string{bootconfig.Bootinit, "--"}, tc.config.Entrypoint...)
			if !reflect.DeepEqual(got.Config.Entrypoint, wantEntrypoint) {
				t.Errorf("entrypoint %q, want %q: bootinit, then the original's", got.Config.Entrypoint, wantEntrypoint)
			}
			if got.Config.Labels[converter.LabelSource] != source {
				t.Errorf("label %s = %q, want %q", converter.LabelSource, got.Config.Labels[converter.LabelSource], source)
			}
			if want := strings.Join(stores, ","); got.Config.Labels[converter.LabelStores] != want {
				t.Errorf("label %s = %q, want %q", converter.LabelStores, got.Config.Labels[converter.LabelStores], want)
			}

			// Everything else is the original's, as it was.
			rest := *got.Config.DeepCopy()
			rest.Entrypoint = tc.config.Entrypoint
			delete(rest.Labels, converter.LabelSource)
			delete(rest.Labels, converter.LabelStores)
			if len(rest.Labels) == 0 {
				rest.Labels = tc.config.Labels
			}
			if !reflect.DeepEqual(rest, tc.config) {
				t.Errorf("boot image config, entrypoint and mkbootfs labels aside:\n%s\nwant the original's:\n%s", asJSON(rest), asJSON(tc.config))
			}
			if _, ok := res.Image.Config.Config.Labels[converter.LabelStores]; ok {
				t.Errorf("building the boot image labelled the source image's config in the conversion result")
			}

			layers, err := boot.Layers()
			if err != nil || len(layers) != 2 {
				t.Fatalf("boot image has %d layers (%v), want bootinit's and its own", len(layers), err)
			}
			var cfg bootconfig.Config
			if err := json.Unmarshal(layerFile(t, layers[1], bootconfig.ConfigFile), &cfg); err != nil {
				t.Fatalf("boot config: %v", err)
			}
			if cfg.Source != source || !reflect.DeepEqual(cfg.Stores, stores) {
				t.Errorf("boot config %+v, want source %q and stores %q", cfg, source, stores)
			}
		})
	}
}

func asJSON(v any) string {
	b, _ := json.MarshalIndent(v, "", "  ")
	return string(b)
}

// layerFile returns the content of the regular file at p in l.
func layerFile(t *testing.T, l v1.Layer, p string) []byte {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			t.Fatalf("no %s in the layer", p)
		}
		if err != nil {
			t.Fatal(err)
		}
		if hdr.Typeflag == tar.TypeReg && "/"+strings.TrimPrefix(hdr.Name, "./") == p {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
	}
}

// TestSkeletonHasNoWhiteoutNames: a directory source may hold .wh. names,
// which the index keeps; the boot image's own layer does not carry them,
// since docker would read them as whiteouts (.wh..bootfs would hide
// bootinit itself).
func TestSkeletonHasNoWhiteoutNames(t *testing.T) {
	src := t.TempDir()
	for _, d := range []string{".wh..bootfs", ".wh.d/bin", "bin"} {
		os.MkdirAll(filepath.Join(src, d), 0o755)
	}
	for _, f := range []string{".wh.run", ".wh.d/bin/tool", "bin/.wh.sh", "bin/sh"} {
		os.WriteFile(filepath.Join(src, f), []byte("#!/bin/sh\n"), 0o755)
	}
	ctx := context.Background()
	res, s := convertDir(t, src)
	if _, err := res.Index.Resolve("/.wh.d/bin/tool"); err != nil {
		t.Errorf("the index lacks /.wh.d/bin/tool: %v", err)
	}
	boot, err := converter.BootImage(ctx, res, []byte("bootinit"), s, nil)
	if err != nil {
		t.Fatal(err)
	}
	layers, err := boot.Layers()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := layers[1].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	var sawSh bool
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(hdr.Name, ".wh.") || strings.Contains(hdr.Name, "/.wh.") {
			t.Errorf("the boot image's layer holds %q, a whiteout to docker", hdr.Name)
		}
		sawSh = sawSh || hdr.Name == "bin/sh"
	}
	if !sawSh {
		t.Errorf("the skeleton lacks bin/sh")
	}
}

// TestBootImageLayers: each layer's digest, diff ID and size are those of
// the bytes it gives, its compressed bytes are gzip of its tar, and two
// boot images of one bootinit share bootinit's layer.
func TestBootImageLayers(t *testing.T) {
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "f"), []byte("data"), 0o644)
	ctx := context.Background()
	res, s := convertDir(t, src)
	bootinit := bytes.Repeat([]byte("bootinit "), 100000)
	var first v1.Hash
	for i, stores := range [][]string{{"/a"}, {"/b"}} {
		img, err := converter.BootImage(ctx, res, bootinit, s, stores)
		if err != nil {
			t.Fatal(err)
		}
		layers, err := img.Layers()
		if err != nil {
			t.Fatal(err)
		}
		for j, l := range layers {
			rc, err := l.Compressed()
			if err != nil {
				t.Fatal(err)
			}
			gz, _ := io.ReadAll(rc)
			rc.Close()
			zr, err := gzip.NewReader(bytes.NewReader(gz))
			if err != nil {
				t.Fatalf("layer %d is not gzip: %v", j, err)
			}
			unzipped, err := io.ReadAll(zr)
			if err != nil {
				t.Fatal(err)
			}
			rc, err = l.Uncompressed()
			if err != nil {
				t.Fatal(err)
			}
			tarBytes, _ := io.ReadAll(rc)
			rc.Close()
			digest, _ := l.Digest()
			diffID, _ := l.DiffID()
			size, _ := l.Size()
			if !bytes.Equal(unzipped, tarBytes) || digest.Hex != fmt.Sprintf("%x", sha256.Sum256(gz)) ||
				diffID.Hex != fmt.Sprintf("%x", sha256.Sum256(tarBytes)) || size != int64(len(gz)) {
				t.Errorf("image %d, layer %d: digest %s, diff ID %s, size %d; its bytes: %d gzipped, %d of tar, gzip of the tar %v",
					i, j, digest, diffID, size, len(gz), len(tarBytes), bytes.Equal(unzipped, tarBytes))
			}
		}
		d, _ := layers[0].Digest()
		if i == 0 {
			first = d
		} else if d != first {
			t.Errorf("bootinit's layer differs between two boot images: %s, %s", first, d)
		}
	}
}

// convertDir converts the directory src into a new local store.
func convertDir(t *testing.T, src string) (*converter.Result, *local.Store) {
	t.Helper()
	s, err := local.Open(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	res, err := converter.Convert(context.Background(), converter.Options{Source: "dir:" + src, Store: s, TmpDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	return res, s
}
