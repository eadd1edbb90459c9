package ocistore_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"

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
			r := testserver.StartDockerRegistry(t, false)
			return r.Addr, func(d string, raw []byte) error { return os.WriteFile(r.BlobFile(d), raw, 0o644) }, "", ""
		}},
		{"docker-registry htpasswd", func(t *testing.T) (string, func(string, []byte) error, string, string) {
			r := testserver.StartDockerRegistry(t, true)
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
						d, ok := s.Blob(id)
						if !ok {
							return fmt.Errorf("chunk %s was never put", id.Short())
						}
						return corrupt(d, raw)
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
	parts, err := w.PushChunkManifest(ctx, append(ids, ids[0]))
	if err != nil {
		t.Fatal(err)
	}
	if len(parts) != 1 {
		t.Fatalf("%d parts, want 1", len(parts))
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
	t.Run("pinned", func(t *testing.T) { check(t, w.Pinned(parts[0].Digest)) })
	if err := w.TagChunkManifests(ctx, "chunks", parts); err != nil {
		t.Fatal(err)
	}
	t.Run("tags", func(t *testing.T) { check(t, "oci://"+addr+"/app") })
	t.Run("not a chunk manifest", func(t *testing.T) {
		r := open(t, "oci://"+addr+"/app@"+digestOf([]byte("{}")), ocistore.Options{})
		defer r.Close()
		if _, err := r.Get(ctx, ids[0]); err == nil {
			t.Fatal("a pin to a blob that is no chunk manifest read a chunk")
		}
	})
}

func digestOf(b []byte) string { return fmt.Sprintf("sha256:%x", sha256.Sum256(b)) }

// TestParts splits a chunk list into chained parts and reads it back.
func TestParts(t *testing.T) {
	ctx := context.Background()
	addr := inProcess(t, nil)
	w := open(t, "oci://"+addr+"/app", ocistore.Options{Push: true, PartChunks: 2})
	defer w.Close()
	ids := put(t, w, 1, 2, 3, 4, 5)
	parts, err := w.PushChunkManifest(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	if len(parts) != 3 {
		t.Fatalf("%d parts, want 3", len(parts))
	}
	if err := w.TagChunkManifests(ctx, "chunks", parts); err != nil {
		t.Fatal(err)
	}
	for _, url := range []string{w.Pinned(parts[0].Digest), "oci://" + addr + "/app"} {
		r := open(t, url, ocistore.Options{})
		for _, id := range ids {
			if _, err := store.Load(ctx, r, id); err != nil {
				t.Errorf("%s: Load %s: %v", url, id.Short(), err)
			}
		}
		r.Close()
	}
}
