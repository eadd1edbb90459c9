package converter_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/mkbootfs/mkbootfs/converter"
	"github.com/mkbootfs/mkbootfs/imagemount"
	"github.com/mkbootfs/mkbootfs/internal/testserver"
	"github.com/mkbootfs/mkbootfs/profile"
	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/location"
	"github.com/mkbootfs/mkbootfs/store/ocistore"
	"github.com/mkbootfs/mkbootfs/store/storetest"
)

// uploads is a proxy in front of a registry that records the digests of
// the blobs pushed through it.
type uploads struct {
	mu      sync.Mutex
	digests []string
}

func (u *uploads) take() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	d := u.digests
	u.digests = nil
	return d
}

func countUploads(t *testing.T, target string) (string, *uploads) {
	u := &uploads{}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: target})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if d := r.URL.Query().Get("digest"); r.Method == http.MethodPut && d != "" {
			u.mu.Lock()
			u.digests = append(u.digests, d)
			u.mu.Unlock()
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), u
}

// relatedTree writes files shared by every tree and files of its own.
func relatedTree(t *testing.T, own string) string {
	dir := t.TempDir()
	write := func(name string, seed uint64) {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, storetest.Chunk(seed, 300<<10), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 12 {
		write(fmt.Sprintf("common/%02d", i), uint64(i))
	}
	for i := range 6 {
		write(fmt.Sprintf("%s/%02d", own, i), uint64(len(own)*1000+int(own[0])*100+i))
	}
	return dir
}

// converted is one conversion pushed to a registry.
type converted struct {
	res    *converter.Result
	pinned string // the store the boot image records
	ref    name.Reference
}

// convertTo converts dir into TARGET's repository, as `mkbootfs convert`
// does with no --store.
func convertTo(t *testing.T, dir, target string) converted {
	t.Helper()
	ctx := context.Background()
	repo, ok := converter.RegistryRepository(target)
	if !ok {
		t.Fatalf("%s is not in a registry", target)
	}
	urls := []string{"oci://" + repo}
	s, err := location.Open(ctx, urls[0], location.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	res, err := converter.Convert(ctx, converter.Options{Source: "dir:" + dir, Store: s, StoreURLs: urls})
	if err != nil {
		t.Fatal(err)
	}
	_, stores, err := converter.WriteBootImage(ctx, res, []byte("not a real bootinit"), s, urls, target)
	if err != nil {
		t.Fatal(err)
	}
	if len(stores) != 1 || !strings.HasPrefix(stores[0], "oci://"+repo+"@sha256:") {
		t.Fatalf("the boot image records stores %q, want oci://%s@sha256:...", stores, repo)
	}
	ref, err := name.ParseReference(target)
	if err != nil {
		t.Fatal(err)
	}
	return converted{res: res, pinned: stores[0], ref: ref}
}

// ids returns the distinct chunk IDs of a conversion.
func (c converted) ids() map[store.ID]bool {
	ids := map[store.ID]bool{}
	for _, ch := range c.res.Index.Chunks {
		ids[store.ID(ch.ID)] = true
	}
	return ids
}

// blobs returns the blob digest of each chunk, from the chunk table the
// boot image pins.
func (c converted) blobs(t *testing.T) map[store.ID]string {
	t.Helper()
	s, err := ocistore.Open(c.pinned, ocistore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	out := map[store.ID]string{}
	for id := range c.ids() {
		d, ok, err := s.Blob(context.Background(), id)
		if err != nil || !ok {
			t.Fatalf("chunk %s of %s is not in its chunk table (%v)", id.Short(), c.ref, err)
		}
		out[id] = d.Digest.String()
	}
	return out
}

// readAll loads every chunk of c through the store its boot image pins.
func (c converted) readAll(t *testing.T) {
	t.Helper()
	s, err := location.Open(context.Background(), c.pinned, location.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for id := range c.ids() {
		if _, err := store.Load(context.Background(), s, id); err != nil {
			t.Errorf("chunk of %s: %v", c.ref, err)
		}
	}
}

// TestRegistryDedup converts two related trees into one repository: the
// second uploads only the chunks the first did not have, and its chunk
// table lists all of its chunks, old and new.
func TestRegistryDedup(t *testing.T) {
	r := testserver.StartDockerRegistry(t, testserver.RegistryOptions{})
	addr, up := countUploads(t, r.Addr)
	a := convertTo(t, relatedTree(t, "a"), addr+"/app:a")
	up.take()
	b := convertTo(t, relatedTree(t, "b"), addr+"/app:b")
	pushed := map[string]bool{}
	for _, d := range up.take() {
		pushed[d] = true
	}
	aIDs, bBlobs := a.ids(), b.blobs(t)
	var want, got int
	for id := range b.ids() {
		if !aIDs[id] {
			want++
		}
		if pushed[bBlobs[id]] {
			got++
		}
	}
	if want == 0 || want == len(b.ids()) {
		t.Fatalf("the trees share %d of %d chunks: not related as the test needs", len(b.ids())-want, len(b.ids()))
	}
	if got != want || b.res.Stats.NewChunks != want {
		t.Errorf("b: %d chunk blobs uploaded, %d new chunks counted; want the %d chunks a lacks (of %d)", got, b.res.Stats.NewChunks, want, len(b.ids()))
	}
	b.readAll(t)
	t.Logf("b: %d chunks, %d shared with a, %d uploaded", len(b.ids()), len(b.ids())-want, got)
}

// TestRegistryGC deletes a boot image (its index and the manifests it
// lists, by digest: distribution 2.8 deletes no tag alone) and runs
// docker-registry's garbage collector: every chunk of the boot image still
// tagged stays, and the chunks only the deleted one used go.
//
// Not --delete-untagged: distribution 2.8's collector then deletes the
// children of every tagged index (multi-arch images' too; fixed in
// distribution 3), a boot image's as well as its chunk manifest.
func TestRegistryGC(t *testing.T) {
	ctx := context.Background()
	r := testserver.StartDockerRegistry(t, testserver.RegistryOptions{})
	a := convertTo(t, relatedTree(t, "a"), r.Addr+"/app:a")
	b := convertTo(t, relatedTree(t, "b"), r.Addr+"/app:b")
	aBlobs, bBlobs := a.blobs(t), b.blobs(t)
	bIndex, err := remote.Index(b.ref)
	if err != nil {
		t.Fatal(err)
	}
	d, err := bIndex.Digest()
	if err != nil {
		t.Fatal(err)
	}
	m, err := bIndex.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Manifests) != 2 || m.Manifests[1].ArtifactType != ocistore.ChunksArtifactType || m.Manifests[1].Platform.OS != "unknown" {
		t.Fatalf("b's index lists %+v; want the boot image and its chunk manifest", m.Manifests)
	}
	for _, doomed := range []v1.Hash{d, m.Manifests[0].Digest, m.Manifests[1].Digest} {
		if err := remote.Delete(b.ref.Context().Digest(doomed.String()), remote.WithContext(ctx)); err != nil {
			t.Fatalf("deleting %s: %v", doomed, err)
		}
	}
	out := r.GarbageCollect(t, false)

	a.readAll(t)
	if _, err := remote.Image(a.ref); err != nil {
		t.Errorf("pulling the boot image a after the collection: %v", err)
	}
	var kept, gone int
	for id, d := range bBlobs {
		_, err := os.Stat(r.BlobFile(d))
		switch _, shared := aBlobs[id]; {
		case shared && err != nil:
			t.Errorf("chunk %s, shared with a, was collected: %v", id.Short(), err)
		case !shared && err == nil:
			t.Errorf("chunk %s, only b's, survived the collection", id.Short())
		case shared:
			kept++
		default:
			gone++
		}
	}
	if t.Failed() {
		t.Logf("garbage-collect:\n%s", out)
	}
	t.Logf("b's chunks after the collection: %d shared with a kept, %d of its own removed", kept, gone)
}

// TestPrefetchLabel converts a tree with a profile into a registry: the
// boot image's config says how many chunks its chunk table lists first,
// and those are the profile's chunks a mount prefetches, in its order,
// so that a node can fetch them before it has the index.
func TestPrefetchLabel(t *testing.T) {
	ctx := context.Background()
	r := testserver.StartDockerRegistry(t, testserver.RegistryOptions{})
	dir := relatedTree(t, "a")
	prof := &profile.Profile{Files: []profile.File{
		{Path: "/a/03", Ranges: []profile.Range{{Off: 100 << 10, Len: 4096}}},
		{Path: "/common/07", Ranges: []profile.Range{{Off: 0, Len: 200 << 10}}},
		{Path: "/common", Ranges: []profile.Range{{Off: 0, Len: 1}}}, // not a regular file
	}}
	target := r.Addr + "/app:a"
	repo, _ := converter.RegistryRepository(target)
	urls := []string{"oci://" + repo}
	s, err := location.Open(ctx, urls[0], location.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	res, err := converter.Convert(ctx, converter.Options{Source: "dir:" + dir, Store: s, StoreURLs: urls, Profile: prof})
	if err != nil {
		t.Fatal(err)
	}
	img, stores, err := converter.WriteBootImage(ctx, res, []byte("not a real bootinit"), s, urls, target)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	x := res.Index
	want := imagemount.IDs(x, imagemount.RegularFiles(prof, x).Chunks(x), map[store.ID]bool{})
	if got := cf.Config.Labels[converter.LabelPrefetch]; got != strconv.Itoa(len(want)) || len(want) < 2 {
		t.Fatalf("label %s=%q; want %d", converter.LabelPrefetch, got, len(want))
	}
	pinned, err := ocistore.Open(stores[0], ocistore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer pinned.Close()
	first, err := pinned.Leading(ctx, len(want)+1)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(first[:len(want)], want) {
		t.Errorf("the chunk table lists first %d chunks that are not the profile's, in its order", len(want))
	}
	next := 0
	for slices.Contains(want, store.ID(x.Chunks[next].ID)) {
		next++
	}
	if first[len(want)] != store.ID(x.Chunks[next].ID) {
		t.Errorf("the chunk table goes on with chunk %s, not with the stream's first other one", first[len(want)].Short())
	}

	// Without a profile, no label.
	res, err = converter.Convert(ctx, converter.Options{Source: "dir:" + dir, Store: s, StoreURLs: urls})
	if err != nil {
		t.Fatal(err)
	}
	if img, _, err = converter.WriteBootImage(ctx, res, []byte("not a real bootinit"), s, urls, r.Addr+"/app:b"); err != nil {
		t.Fatal(err)
	}
	if cf, err = img.ConfigFile(); err != nil {
		t.Fatal(err)
	}
	if l, ok := cf.Config.Labels[converter.LabelPrefetch]; ok {
		t.Errorf("a boot image with no profile has %s=%q", converter.LabelPrefetch, l)
	}
}
