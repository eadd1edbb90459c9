package ocistore_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sync/errgroup"

	"github.com/mkbootfs/mkbootfs/internal/testserver"
	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/ocistore"
	"github.com/mkbootfs/mkbootfs/store/storetest"
)

// corrupter serves replacement bytes for some blobs of the registry it
// wraps, like a registry whose storage went bad.
type corrupter struct {
	next  http.Handler
	mu    sync.Mutex
	blobs map[string][]byte // digest -> bytes served instead
}

func (c *corrupter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") {
		c.mu.Lock()
		raw, ok := c.blobs[r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]]
		c.mu.Unlock()
		if ok {
			w.Write(raw)
			return
		}
	}
	c.next.ServeHTTP(w, r)
}

func (c *corrupter) corrupt(digest string, raw []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.blobs[digest] = raw
}

// inProcess starts go-containerregistry's registry and returns its address.
func inProcess(t *testing.T, wrap func(http.Handler) http.Handler) string {
	var h http.Handler = registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// authFile writes a docker config file with credentials for addr.
func authFile(t *testing.T, addr, user, password string) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "config.json")
	writeAuth(t, file, addr, user, password)
	return file
}

func writeAuth(t *testing.T, file, addr, user, password string) {
	t.Helper()
	cfg := map[string]any{"auths": map[string]any{addr: map[string]string{
		"auth": base64.StdEncoding.EncodeToString([]byte(user + ":" + password)),
	}}}
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, file); err != nil {
		t.Fatal(err)
	}
}

func open(t *testing.T, url string, opt ocistore.Options) *ocistore.Store {
	t.Helper()
	s, err := ocistore.Open(url, opt)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	for _, tc := range []struct {
		name string
		// start returns the registry's address, a hook that rewrites a
		// blob's bytes, and credentials (empty for none).
		start func(t *testing.T) (addr string, corrupt func(digest string, raw []byte) error, user, password string)
	}{
		{"go-containerregistry", func(t *testing.T) (string, func(string, []byte) error, string, string) {
			c := &corrupter{blobs: map[string][]byte{}}
			addr := inProcess(t, func(h http.Handler) http.Handler { c.next = h; return c })
			return addr, func(d string, raw []byte) error { c.corrupt(d, raw); return nil }, "", ""
		}},
		{"docker-registry", func(t *testing.T) (string, func(string, []byte) error, string, string) {
			r := testserver.StartDockerRegistry(t, testserver.RegistryOptions{})
			return r.Addr, func(d string, raw []byte) error { return os.WriteFile(r.BlobFile(d), raw, 0o644) }, "", ""
		}},
		{"docker-registry htpasswd", func(t *testing.T) (string, func(string, []byte) error, string, string) {
			r := testserver.StartDockerRegistry(t, testserver.RegistryOptions{Auth: true})
			return r.Addr, func(d string, raw []byte) error { return os.WriteFile(r.BlobFile(d), raw, 0o644) }, r.User, r.Password
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, corrupt, user, password := tc.start(t)
			var n atomic.Int32
			storetest.Run(t, func(t *testing.T) *storetest.Backend {
				// The proxy stalls on request; each subtest has its own repository.
				p := testserver.NewProxy(t, addr)
				opt := ocistore.Options{Push: true}
				if user != "" {
					opt.AuthFile = authFile(t, p.Addr, user, password)
				}
				s := open(t, fmt.Sprintf("oci://%s/conformance/%d", p.Addr, n.Add(1)), opt)
				return &storetest.Backend{
					Store: s,
					Corrupt: func(id store.ID, raw []byte) error {
						d, ok, err := s.Blob(context.Background(), id)
						if err != nil || !ok {
							return fmt.Errorf("chunk %s was never put (%v)", id.Short(), err)
						}
						return corrupt(d.Digest.String(), raw)
					},
					Stall:    p.Stall,
					LocalHas: true,
				}
			})
		})
	}
}

// put stores chunks through s and returns their IDs.
func put(t *testing.T, s store.Store, seeds ...uint64) []store.ID {
	t.Helper()
	var ids []store.ID
	for _, seed := range seeds {
		id, _, err := store.Save(context.Background(), s, storetest.Chunk(seed, 1000+int(seed)*100))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

// TestPinned writes chunks and their chunk manifest, then reads them
// through a store pinned to it and through one that learns the tags.
func TestPinned(t *testing.T) {
	ctx := context.Background()
	addr := inProcess(t, nil)
	w := open(t, "oci://"+addr+"/app", ocistore.Options{Push: true})
	defer w.Close()
	ids := put(t, w, 1, 2, 3, 4, 5)
	cm, err := w.PushChunkManifest(ctx, append(ids, ids[0]))
	if err != nil {
		t.Fatal(err)
	}
	if len(cm.Parts) != 1 {
		t.Fatalf("%d parts, want 1", len(cm.Parts))
	}
	other := store.Sum([]byte("in no manifest"))
	check := func(t *testing.T, url string) {
		r := open(t, url, ocistore.Options{})
		defer r.Close()
		for _, id := range ids {
			if _, err := store.Load(ctx, r, id); err != nil {
				t.Errorf("Load %s: %v", id.Short(), err)
			}
		}
		if ok, err := r.Has(ctx, other); ok || err != nil {
			t.Errorf("Has(a chunk in no manifest) = %v, %v", ok, err)
		}
		if _, err := r.Get(ctx, other); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Get(a chunk in no manifest): %v; want ErrNotFound", err)
		}
	}
	t.Run("pinned", func(t *testing.T) { check(t, w.Pinned(cm.Table.Digest)) })
	if err := w.TagChunkManifests(ctx, "chunks", cm); err != nil {
		t.Fatal(err)
	}
	// A chunk manifest of another format under a tag costs only reuse.
	foreign := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"` +
		ocistore.ChunksArtifactType + `","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}`)
	req, _ := http.NewRequest(http.MethodPut, "http://"+addr+"/v2/app/manifests/other", bytes.NewReader(foreign))
	req.Header.Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("pushing a chunk manifest of another format: %v %v", resp, err)
	}
	t.Run("tags", func(t *testing.T) { check(t, "oci://"+addr+"/app") })
	t.Run("not a chunk table", func(t *testing.T) {
		d, _, err := w.Blob(ctx, ids[0])
		if err != nil {
			t.Fatal(err)
		}
		r := open(t, w.Pinned(d.Digest), ocistore.Options{})
		defer r.Close()
		if _, err := r.Get(ctx, ids[0]); err == nil || !strings.Contains(err.Error(), "not a chunk table") {
			t.Fatalf("a pin to a blob that is no chunk table: %v", err)
		}
	})
}

// TestParts splits a chunk list into parts and reads it back.
func TestParts(t *testing.T) {
	ctx := context.Background()
	addr := inProcess(t, nil)
	w := open(t, "oci://"+addr+"/app", ocistore.Options{Push: true, PartChunks: 2})
	defer w.Close()
	ids := put(t, w, 1, 2, 3, 4, 5)
	cm, err := w.PushChunkManifest(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	if len(cm.Parts) != 3 {
		t.Fatalf("%d parts, want 3", len(cm.Parts))
	}
	if err := w.TagChunkManifests(ctx, "chunks", cm); err != nil {
		t.Fatal(err)
	}
	for _, url := range []string{w.Pinned(cm.Table.Digest), "oci://" + addr + "/app"} {
		r := open(t, url, ocistore.Options{})
		for _, id := range ids {
			if _, err := store.Load(ctx, r, id); err != nil {
				t.Errorf("%s: Load %s: %v", url, id.Short(), err)
			}
		}
		r.Close()
	}
}

// tableRanges records the requests for one blob (the chunk table) of the
// registry it wraps, and can drop their Range header (a registry that
// serves no ranges) or change the last byte of the rest of the table.
type tableRanges struct {
	next       http.Handler
	mu         sync.Mutex
	blob       string
	ranges     []string // the Range header of each GET of blob
	noRanges   bool
	corruptEnd bool
}

func (tr *tableRanges) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	tr.mu.Lock()
	mine := tr.blob != "" && r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+tr.blob)
	if mine {
		tr.ranges = append(tr.ranges, r.Header.Get("Range"))
		if tr.noRanges {
			r.Header.Del("Range")
		}
	}
	corrupt := mine && tr.corruptEnd && strings.HasPrefix(r.Header.Get("Range"), "bytes=65536-")
	tr.mu.Unlock()
	if !corrupt {
		tr.next.ServeHTTP(w, r)
		return
	}
	rec := httptest.NewRecorder()
	tr.next.ServeHTTP(rec, r)
	b := rec.Body.Bytes()
	b[len(b)-1] ^= 1
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	w.Write(b)
}

func (tr *tableRanges) take() []string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	r := tr.ranges
	tr.ranges = nil
	return r
}

// TestTableParts reads a pinned chunk table of 1100 chunks (74,828
// bytes) in two parts: a read of a chunk listed first fetches the first
// 64 KiB alone, a read of one listed last the rest, checked against the
// table's digest; a registry that serves no ranges sends it whole.
func TestTableParts(t *testing.T) {
	t.Run("go-containerregistry", func(t *testing.T) {
		tr := &tableRanges{}
		testTableParts(t, inProcess(t, func(h http.Handler) http.Handler { tr.next = h; return tr }), tr, true)
	})
	t.Run("docker-registry", func(t *testing.T) {
		r := testserver.StartDockerRegistry(t, testserver.RegistryOptions{})
		tr := &tableRanges{next: httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: r.Addr})}
		srv := httptest.NewServer(tr)
		t.Cleanup(srv.Close)
		testTableParts(t, strings.TrimPrefix(srv.URL, "http://"), tr, false)
	})
}

// testTableParts runs TestTableParts on the registry at addr, which
// refuses a range past a blob's end (416) or sends what it has of it.
func testTableParts(t *testing.T, addr string, tr *tableRanges, refusesPastEnd bool) {
	ctx := context.Background()
	w := open(t, "oci://"+addr+"/app", ocistore.Options{Push: true})
	defer w.Close()
	ids := make([]store.ID, 1100)
	var g errgroup.Group
	g.SetLimit(8)
	for i := range ids {
		g.Go(func() (err error) {
			ids[i], _, err = store.Save(ctx, w, storetest.Chunk(uint64(i+1), 64))
			return err
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	cm, err := w.PushChunkManifest(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	tr.mu.Lock()
	tr.blob = cm.Table.Digest.String()
	tr.mu.Unlock()
	first, last, other := ids[0], ids[len(ids)-1], store.Sum([]byte("in no manifest"))
	load := func(r *ocistore.Store, id store.ID) {
		t.Helper()
		if _, err := store.Load(ctx, r, id); err != nil {
			t.Fatalf("Load %s: %v", id.Short(), err)
		}
	}
	want := func(what string, ranges ...string) {
		t.Helper()
		if got := tr.take(); !slices.Equal(got, ranges) {
			t.Fatalf("%s: requests for the table with Range %q, want %q", what, got, ranges)
		}
	}

	r := open(t, w.Pinned(cm.Table.Digest), ocistore.Options{})
	load(r, first)
	load(r, ids[900])
	want("chunks listed first", "bytes=0-65535")
	load(r, last)
	want("a chunk listed last", "bytes=65536-74827")
	if ok, err := r.Has(ctx, other); ok || err != nil {
		t.Fatalf("Has(a chunk in no manifest) = %v, %v", ok, err)
	}
	want("the whole table read")
	r.Close()

	r = open(t, w.Pinned(cm.Table.Digest), ocistore.Options{})
	if ok, err := r.Has(ctx, other); ok || err != nil {
		t.Fatalf("Has(a chunk in no manifest) = %v, %v", ok, err)
	}
	want("a chunk in no manifest", "bytes=0-65535", "bytes=65536-74827")
	r.Close()

	// Leading first reads those chunks alone, and what it asks past them
	// reads the next parts: at least tablePart, as much as was read.
	r = open(t, w.Pinned(cm.Table.Digest), ocistore.Options{})
	for _, n := range []int{5, 3, 900, 1000, 2000} {
		got, err := r.Leading(ctx, n)
		if err != nil || !slices.Equal(got, ids[:min(n, len(ids))]) {
			t.Fatalf("Leading(%d): %d chunks, %v; want the table's first %d", n, len(got), err, min(n, len(ids)))
		}
		switch n {
		case 3:
			want("the first 5 chunks, then 3", "bytes=0-367")
		case 900:
			// The next part, not the rest: a warm start wants the few
			// chunks listed after the profile's.
			want("the first 900 chunks", "bytes=368-65903")
		}
	}
	want("the first 1000 chunks, then 2000", "bytes=65904-74827")
	load(r, last)
	want("the whole table read")
	r.Close()
	// A table shorter than the first part asked for comes whole.
	r = open(t, w.Pinned(cm.Table.Digest), ocistore.Options{})
	if got, err := r.Leading(ctx, 5000); err != nil || len(got) != len(ids) {
		t.Fatalf("Leading(5000) of %d: %d chunks, %v", len(ids), len(got), err)
	}
	if refusesPastEnd {
		want("more chunks than the table lists", "bytes=0-340027", "")
	} else {
		want("more chunks than the table lists", "bytes=0-340027")
	}
	r.Close()

	tr.noRanges = true
	r = open(t, w.Pinned(cm.Table.Digest), ocistore.Options{})
	load(r, first)
	load(r, last)
	want("no ranges", "bytes=0-65535")
	r.Close()

	tr.noRanges, tr.corruptEnd = false, true
	r = open(t, w.Pinned(cm.Table.Digest), ocistore.Options{})
	load(r, first)
	if _, err := r.Get(ctx, last); !errors.Is(err, store.ErrCorrupt) {
		t.Fatalf("Get with the rest of the table changed: %v; want ErrCorrupt", err)
	}
	tr.corruptEnd = false
	load(r, last)
	want("the rest changed, then read again", "bytes=0-65535", "bytes=65536-74827", "bytes=0-65535", "bytes=65536-74827")
	r.Close()
}

// gate puts auth in front of a registry: a token server and bearer
// tokens, or basic auth. Its credentials can be rotated and its tokens
// revoked, as happens in the middle of a long run.
type gate struct {
	next   http.Handler
	bearer bool
	user   string
	mu     sync.Mutex
	pass   string // the password that works now
	token  string // the token that works now
	issued int    // tokens issued
	// expireUploads revokes the token as it opens an upload, so the PUT
	// of the bytes is refused and must be sent again.
	expireUploads bool
}

func (g *gate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.mu.Lock()
	defer g.mu.Unlock()
	user, pass, basic := r.BasicAuth()
	if r.URL.Path == "/token" {
		if !basic || user != g.user || pass != g.pass {
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
			return
		}
		g.issued++
		g.token = fmt.Sprintf("token-%d", g.issued)
		json.NewEncoder(w).Encode(map[string]string{"token": g.token})
		return
	}
	ok := basic && user == g.user && pass == g.pass
	challenge := `Basic realm="test"`
	if g.bearer {
		ok = g.token != "" && r.Header.Get("Authorization") == "Bearer "+g.token
		challenge = fmt.Sprintf(`Bearer realm="http://%s/token",service="test"`, r.Host)
	}
	if !ok {
		w.Header().Set("WWW-Authenticate", challenge)
		http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
		return
	}
	g.next.ServeHTTP(w, r)
	if g.expireUploads && r.Method == http.MethodPost {
		g.token = ""
	}
}

// TestReauthenticate revokes the token or rotates the password between
// two reads of one store: the second read authenticates again, with the
// credentials the auth file holds then, and succeeds.
func TestReauthenticate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		bearer bool
		rotate bool // change the password (and the auth file), not only the token
	}{
		{"bearer token expires", true, false},
		{"bearer password rotated", true, true},
		{"basic password rotated", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			g := &gate{bearer: tc.bearer, user: "u", pass: "first"}
			addr := inProcess(t, func(h http.Handler) http.Handler { g.next = h; return g })
			auth := authFile(t, addr, "u", "first")
			w := open(t, "oci://"+addr+"/app", ocistore.Options{Push: true, AuthFile: auth})
			defer w.Close()
			ids := put(t, w, 1, 2)
			cm, err := w.PushChunkManifest(ctx, ids)
			if err != nil {
				t.Fatal(err)
			}
			r := open(t, w.Pinned(cm.Table.Digest), ocistore.Options{AuthFile: auth})
			defer r.Close()
			if _, err := store.Load(ctx, r, ids[0]); err != nil {
				t.Fatal(err)
			}
			g.mu.Lock()
			g.token = ""
			if tc.rotate {
				g.pass = "second"
				writeAuth(t, auth, addr, "u", "second")
			}
			issued := g.issued
			g.mu.Unlock()
			if _, err := store.Load(ctx, r, ids[1]); err != nil {
				t.Fatalf("a read after the credentials changed: %v", err)
			}
			// The writer's token goes stale between opening an upload and
			// sending its bytes: they are sent again.
			g.mu.Lock()
			g.expireUploads = true
			g.mu.Unlock()
			if _, _, err := store.Save(ctx, w, storetest.Chunk(3, 100000)); err != nil {
				t.Fatalf("an upload after the credentials changed: %v", err)
			}
			g.mu.Lock()
			defer g.mu.Unlock()
			if g.bearer && g.issued < issued+2 {
				t.Errorf("%d tokens issued for the read and the upload, want 2 or more", g.issued-issued)
			}
		})
	}
}

// TestRefused reads from registries that refuse: one in read-only mode
// (reads work, a Put is ErrReadOnly) and one that rejects the password.
func TestRefused(t *testing.T) {
	ctx := context.Background()
	rw := testserver.StartDockerRegistry(t, testserver.RegistryOptions{})
	w := open(t, "oci://"+rw.Addr+"/app", ocistore.Options{Push: true})
	defer w.Close()
	ids := put(t, w, 1)
	cm, err := w.PushChunkManifest(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.TagChunkManifests(ctx, "chunks", cm); err != nil {
		t.Fatal(err)
	}

	ro := testserver.StartDockerRegistry(t, testserver.RegistryOptions{ReadOnly: true, Root: rw.Root})
	r := open(t, "oci://"+ro.Addr+"/app", ocistore.Options{Push: true})
	defer r.Close()
	if _, err := store.Load(ctx, r, ids[0]); err != nil {
		t.Fatalf("reading a read-only registry: %v", err)
	}
	data := storetest.Chunk(9, 1000)
	if err := r.Put(ctx, store.Sum(data), store.Encode(data)); !errors.Is(err, store.ErrReadOnly) {
		t.Errorf("Put to a read-only registry: %v; want ErrReadOnly", err)
	}

	auth := testserver.StartDockerRegistry(t, testserver.RegistryOptions{Auth: true})
	bad := open(t, "oci://"+auth.Addr+"/app", ocistore.Options{AuthFile: authFile(t, auth.Addr, auth.User, "wrong")})
	defer bad.Close()
	_, err = bad.Get(ctx, ids[0])
	if err == nil || !strings.Contains(err.Error(), "docker login "+auth.Addr) {
		t.Errorf("Get with a wrong password: %v; want an error that says to log in", err)
	}
}

// TestLost: a repository that lost what its tags reach is not trusted for
// it. A chunk manifest or chunk table that is gone (distribution 2.x's
// collector with --delete-untagged deletes a tagged index's children) lends
// no chunk; chunk blobs that are gone while their chunk manifest stays
// make the registry refuse a new chunk manifest, and the store then
// forgets them (ErrLost), so that putting them again repairs it.
func TestLost(t *testing.T) {
	ctx := context.Background()
	r := testserver.StartDockerRegistry(t, testserver.RegistryOptions{})
	del := func(t *testing.T, repo, kind string, d v1.Hash) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodDelete, "http://"+r.Addr+"/v2/"+repo+"/"+kind+"/"+d.String(), nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != http.StatusAccepted {
			t.Fatalf("DELETE %s %s: %v %v", kind, d, resp, err)
		}
		resp.Body.Close()
	}
	// tagged pushes chunks and their manifest under a tag, in repo.
	tagged := func(t *testing.T, repo string) ([]store.ID, *ocistore.ChunkManifests) {
		w := open(t, "oci://"+r.Addr+"/"+repo, ocistore.Options{Push: true})
		defer w.Close()
		ids := put(t, w, 1, 2, 3, 4, 5)
		cm, err := w.PushChunkManifest(ctx, ids)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.TagChunkManifests(ctx, "chunks", cm); err != nil {
			t.Fatal(err)
		}
		return ids, cm
	}
	for _, tc := range []struct {
		name string
		lose func(t *testing.T, repo string, cm *ocistore.ChunkManifests)
	}{
		{"chunk manifest", func(t *testing.T, repo string, cm *ocistore.ChunkManifests) {
			del(t, repo, "manifests", cm.Parts[0].Digest)
		}},
		{"chunk table", func(t *testing.T, repo string, cm *ocistore.ChunkManifests) {
			del(t, repo, "blobs", cm.Table.Digest)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			repo := "lost/" + strings.ReplaceAll(tc.name, " ", "-")
			ids, cm := tagged(t, repo)
			tc.lose(t, repo, cm)
			s := open(t, "oci://"+r.Addr+"/"+repo, ocistore.Options{Push: true})
			defer s.Close()
			for _, id := range ids {
				if ok, err := s.Has(ctx, id); ok || err != nil {
					t.Fatalf("Has(%s) = %v, %v; want false: what lists it is gone", id.Short(), ok, err)
				}
			}
		})
	}
	t.Run("chunk blobs", func(t *testing.T) {
		repo := "lost/chunk-blobs"
		ids, _ := tagged(t, repo)
		s := open(t, "oci://"+r.Addr+"/"+repo, ocistore.Options{Push: true})
		defer s.Close()
		for _, id := range ids[:2] {
			d, ok, err := s.Blob(ctx, id)
			if err != nil || !ok {
				t.Fatalf("chunk %s: %v %v", id.Short(), ok, err)
			}
			del(t, repo, "blobs", d.Digest)
		}
		_, err := s.PushChunkManifest(ctx, ids)
		if !errors.Is(err, ocistore.ErrLost) || !strings.Contains(err.Error(), "2 of the image's chunks") {
			t.Fatalf("pushing a chunk manifest of chunks the registry lost: %v; want ErrLost for 2", err)
		}
		for i, id := range ids {
			if ok, err := s.Has(ctx, id); err != nil || ok != (i >= 2) {
				t.Errorf("Has(%s) after ErrLost = %v, %v; want %v", id.Short(), ok, err, i >= 2)
			}
		}
		put(t, s, 1, 2)
		if _, err := s.PushChunkManifest(ctx, ids); err != nil {
			t.Fatalf("pushing again after putting the lost chunks: %v", err)
		}
		for _, id := range ids {
			if _, err := store.Load(ctx, s, id); err != nil {
				t.Error(err)
			}
		}
	})
}

// TestHost reaches a registry as containerd's hosts configuration would
// say: HTTPS with a CA of its own on a loopback address (which
// go-containerregistry takes for HTTP), and a login as a header, as
// go-containerregistry's keychain knows none.
func TestHost(t *testing.T) {
	ctx := context.Background()
	g := &gate{next: registry.New(registry.Logger(log.New(io.Discard, "", 0))), user: "u", pass: "secret"}
	srv := httptest.NewTLSServer(g)
	t.Cleanup(srv.Close)
	addr := strings.TrimPrefix(srv.URL, "https://")
	login := http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte("u:secret"))}}
	host := ocistore.Host{Scheme: "https", Transport: srv.Client().Transport, Header: login}
	w := open(t, "oci://"+addr+"/app", ocistore.Options{Push: true, Host: host})
	defer w.Close()
	ids := put(t, w, 1, 2)
	cm, err := w.PushChunkManifest(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		host ocistore.Host
		want string // in the error; "": reads
	}{
		{"hosts configuration", host, ""},
		{"no header", ocistore.Host{Scheme: "https", Transport: srv.Client().Transport}, "401 Unauthorized"},
		{"no CA", ocistore.Host{Scheme: "https", Header: login}, "certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := open(t, w.Pinned(cm.Table.Digest), ocistore.Options{Host: tc.host})
			defer r.Close()
			_, err := store.Load(ctx, r, ids[1])
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("Load: %v; want %q", err, tc.want)
			}
		})
	}
}

// TestNoPing: a read with no credentials to give sends no ping first:
// its first chunk costs two requests, the chunk table and the chunk.
func TestNoPing(t *testing.T) {
	ctx := context.Background()
	var mu sync.Mutex
	var paths []string
	addr := inProcess(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			paths = append(paths, r.Method+" "+r.URL.Path)
			mu.Unlock()
			// This registry refuses a range past a blob's end: the table
			// in one request, as from a registry that serves no ranges.
			r.Header.Del("Range")
			h.ServeHTTP(w, r)
		})
	})
	w := open(t, "oci://"+addr+"/app", ocistore.Options{Push: true})
	defer w.Close()
	ids := put(t, w, 1)
	cm, err := w.PushChunkManifest(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	r := open(t, w.Pinned(cm.Table.Digest), ocistore.Options{AuthFile: filepath.Join(t.TempDir(), "none.json")})
	defer r.Close()
	mu.Lock()
	paths = nil
	mu.Unlock()
	if _, err := store.Load(ctx, r, ids[0]); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(paths) != 2 || strings.HasSuffix(paths[0], "/v2/") {
		t.Errorf("requests %q; want the chunk table's and the chunk's", paths)
	}
}
