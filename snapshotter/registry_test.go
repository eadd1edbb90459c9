package snapshotter

import (
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/google/go-containerregistry/pkg/name"
	greg "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/mkbootfs/mkbootfs/bootimage"
	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/local"
	"github.com/mkbootfs/mkbootfs/store/ocistore"
)

// TestLookUp: telling a boot image's own layer from CRI's labels reads
// the manifest by the digest they give, with no HEAD first, then the
// config; an image that is no boot image is told apart too.
func TestLookUp(t *testing.T) {
	var mu sync.Mutex
	var reqs []string
	h := greg.New(greg.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		reqs = append(reqs, r.Method+" "+strings.TrimPrefix(r.URL.Path, "/v2/app/"))
		mu.Unlock()
		h.ServeHTTP(w, r)
	}))
	defer srv.Close()
	reg := strings.TrimPrefix(srv.URL, "http://")
	push := func(tag string, label bool) (v1.Image, string) {
		img := empty.Image
		for range bootimage.Layers {
			l, err := random.Layer(100, "application/vnd.oci.image.layer.v1.tar+gzip")
			if err != nil {
				t.Fatal(err)
			}
			if img, err = mutate.AppendLayers(img, l); err != nil {
				t.Fatal(err)
			}
		}
		if label {
			cf, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			cf.Config.Labels = map[string]string{bootimage.LabelSource: "docker://example/app:1"}
			if img, err = mutate.ConfigFile(img, cf); err != nil {
				t.Fatal(err)
			}
		}
		ref := reg + "/app:" + tag
		r, err := name.ParseReference(ref)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(r, img); err != nil {
			t.Fatal(err)
		}
		return img, ref
	}
	labels := func(img v1.Image, ref string) map[string]string {
		md, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		layers, err := img.Layers()
		if err != nil {
			t.Fatal(err)
		}
		own, err := layers[bootimage.OwnLayer].Digest()
		if err != nil {
			t.Fatal(err)
		}
		return map[string]string{
			snapshotters.TargetRefLabel:            ref,
			snapshotters.TargetManifestDigestLabel: md.String(),
			snapshotters.TargetLayerDigestLabel:    own.String(),
			snapshotters.TargetImageLayersLabel:    own.String(),
		}
	}
	r := newRegistry("")
	for _, tc := range []struct {
		tag  string
		boot bool
	}{{"boot", true}, {"plain", false}} {
		img, ref := push(tc.tag, tc.boot)
		cfg, err := img.ConfigName()
		if err != nil {
			t.Fatal(err)
		}
		md, _ := img.Digest()
		mu.Lock()
		reqs = nil
		mu.Unlock()
		_, layer, ok, err := r.bootLayer(context.Background(), labels(img, ref))
		if err != nil || ok != tc.boot {
			t.Fatalf("%s: boot layer %v, %v; want %v", tc.tag, ok, err, tc.boot)
		}
		if tc.boot && layer.desc.Digest.String() != labels(img, ref)[snapshotters.TargetLayerDigestLabel] {
			t.Fatalf("%s: own layer %s", tc.tag, layer.desc.Digest)
		}
		mu.Lock()
		got := strings.Join(reqs, ", ")
		mu.Unlock()
		if want := "GET manifests/" + md.String() + ", GET blobs/" + cfg.String(); got != want {
			t.Errorf("%s: requests %s; want %s", tc.tag, got, want)
		}
	}
}

// TestPrefetchEarly: before the mount, the first chunks of the boot
// image's pinned chunk table, as many as its config says, come into the
// node cache, and no other.
func TestPrefetchEarly(t *testing.T) {
	ctx := context.Background()
	srv := httptest.NewServer(greg.New(greg.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	w, err := ocistore.Open("oci://"+strings.TrimPrefix(srv.URL, "http://")+"/app", ocistore.Options{Push: true})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	var ids []store.ID
	for i := range 10 {
		id, _, err := store.Save(ctx, w, []byte(strings.Repeat(string(rune('a'+i)), 1000)))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	cm, err := w.PushChunkManifest(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	ms := &mounts{cache: cache, log: log.New(io.Discard, "", 0)}
	closed := make(chan struct{})
	close(closed)
	ms.prefetchEarly("app", []string{"/no/such/store", w.Pinned(cm.Table.Digest)}, 4, closed)
	l, err := local.Open(cache, false)
	if err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		if ok, err := l.Has(ctx, id); err != nil || ok != (i < 4) {
			t.Errorf("chunk %d of the table in the node cache: %v, %v; want %v", i, ok, err, i < 4)
		}
	}
	// The node's metrics count them.
	if st := ms.earlyStores[w.Pinned(cm.Table.Digest)]; st == nil || st.Chunks != 4 || ms.earlyMisses != 4 {
		t.Errorf("counted %+v and %d cache misses; want 4 chunks and 4 misses", st, ms.earlyMisses)
	}
}
