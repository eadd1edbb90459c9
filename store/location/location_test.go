package location_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mkbootfs/mkbootfs/internal/testserver"
	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/httpstore"
	"github.com/mkbootfs/mkbootfs/store/local"
	"github.com/mkbootfs/mkbootfs/store/location"
	"github.com/mkbootfs/mkbootfs/store/ocistore"
	"github.com/mkbootfs/mkbootfs/store/sshstore"
	"github.com/mkbootfs/mkbootfs/store/storetest"
)

func openLocal(t testing.TB) *local.Store {
	t.Helper()
	l, err := local.Open(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestOpen(t *testing.T) {
	dir := t.TempDir()
	key := testserver.NewKey(t, dir, "key")
	opt := location.Options{SSHKey: key.File, KnownHosts: filepath.Join(dir, "known_hosts")}
	for _, tc := range []struct {
		loc  string
		want any    // the store type
		err  string // or the error
	}{
		{loc: dir, want: &local.Store{}},
		{loc: "file://" + dir, want: &local.Store{}},
		{loc: "file://localhost" + dir, want: &local.Store{}},
		{loc: "http://127.0.0.1:1/store", want: &httpstore.Store{}},
		{loc: "HTTPS://127.0.0.1:1/store", want: &httpstore.Store{}},
		{loc: "ssh://me@127.0.0.1:1/store", want: &sshstore.Store{}},
		{loc: filepath.Join(dir, "missing"), err: "no such file"},
		{loc: "file://otherhost/x", err: "ssh://"},
		{loc: "oci://registry/repo", want: &ocistore.Store{}},
		{loc: "oci://127.0.0.1:5000/a/b@sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", want: &ocistore.Store{}},
		{loc: "oci://registry", err: "want oci://REGISTRY/REPO"},
		{loc: "oci://registry/Repo", err: "want oci://REGISTRY/REPO"},
		{loc: "oci://registry/repo@sha256:12", err: "pinned chunk table"},
		{loc: "s3://bucket/x", err: "unknown scheme"},
	} {
		t.Run(tc.loc, func(t *testing.T) {
			s, err := location.Open(context.Background(), tc.loc, opt)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("Open: %v; want an error saying %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if got, want := kind(s), kind(tc.want); got != want {
				t.Errorf("Open made a %s, want a %s", got, want)
			}
		})
	}
}

func kind(v any) string {
	switch v.(type) {
	case *local.Store:
		return "local"
	case *httpstore.Store:
		return "http"
	case *sshstore.Store:
		return "ssh"
	case *ocistore.Store:
		return "oci"
	}
	return "other"
}

func TestOpenCreate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new", "store")
	s, err := location.Open(context.Background(), dir, location.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
}

// saveChunk puts a chunk made from seed into l.
func saveChunk(t *testing.T, l *local.Store, seed uint64, size int) (store.ID, []byte) {
	t.Helper()
	data := storetest.Chunk(seed, size)
	id, _, err := store.Save(context.Background(), l, data)
	if err != nil {
		t.Fatal(err)
	}
	return id, data
}

// TestEachStore reads one chunk through every kind of location, each
// served by a real server.
func TestEachStore(t *testing.T) {
	l := openLocal(t)
	id, data := saveChunk(t, l, 1, 100000)
	for _, tc := range remotes(t, l) {
		t.Run(tc.name, func(t *testing.T) {
			s, err := location.OpenList(context.Background(), []string{tc.url}, tc.opt)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			got, err := store.Load(context.Background(), s, id)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("Load through %s: %v", tc.url, err)
			}
		})
	}
}

type remote struct {
	name, url string
	opt       location.Options
}

// remotes serves l in every way there is.
func remotes(t testing.TB, l *local.Store) []remote {
	sshd := testserver.StartSSHD(t)
	ours := testserver.SSH(t, l.Dir(), false)
	return []remote{
		{"local", l.Dir(), location.Options{}},
		{"http ours", testserver.HTTP(t, l, false), location.Options{}},
		{"http nginx", testserver.Nginx(t, l.Dir(), false), location.Options{}},
		{"ssh openssh", "ssh://root@" + sshd.Addr + l.Dir(), location.Options{SSHKey: sshd.ClientKey.File, KnownHosts: sshd.KnownHosts}},
		{"ssh ours", "ssh://any@" + ours.Addr + "/", location.Options{SSHKey: ours.ClientKey.File, KnownHosts: ours.KnownHosts}},
		{"oci docker-registry", ociCopy(t, l, testserver.StartDockerRegistry(t, testserver.RegistryOptions{}).Addr), location.Options{}},
	}
}

// TestOpenListFailover: a dead first store and a flaky second one still
// serve every chunk.
func TestOpenListFailover(t *testing.T) {
	l := openLocal(t)
	id, data := saveChunk(t, l, 2, 5000)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String() + "/"
	ln.Close()
	h := httpstore.NewHandler(l, httpstore.HandlerOptions{})
	var n atomic.Int32
	flaky := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1)%2 == 1 { // every other request fails
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(flaky.Close)
	s, err := location.OpenList(context.Background(), []string{dead, flaky.URL}, location.Options{
		Timeout: 10 * time.Second,
		Retry:   store.RetryOptions{MinDelay: time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for range 4 {
		got, err := store.Load(context.Background(), s, id)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("Load: %v", err)
		}
	}
	if _, err := store.Load(context.Background(), s, store.Sum([]byte("missing"))); errors.Is(err, store.ErrNotFound) {
		// the dead store's error keeps "missing" from being claimed for sure
		t.Fatalf("Load of a chunk no live store has: %v", err)
	}
}

func TestOpenListConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) *storetest.Backend {
		first, second := openLocal(t), openLocal(t)
		s, err := location.OpenList(context.Background(), []string{first.Dir(), testserver.HTTP(t, second, false)}, location.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return &storetest.Backend{Store: s, Corrupt: storetest.CorruptLocal(first)}
	})
}

// A directory store that is not there is passed over for the next,
// unless it is the only one.
func TestOpenListMissingDirectory(t *testing.T) {
	l := openLocal(t)
	id, data := saveChunk(t, l, 3, 5000)
	missing := filepath.Join(t.TempDir(), "not-mounted")
	s, err := location.OpenList(context.Background(), []string{missing, l.Dir()}, location.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got, err := store.Load(context.Background(), s, id); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("Load past a missing directory store: %v", err)
	}
	if _, err := location.OpenList(context.Background(), []string{missing}, location.Options{}); !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("OpenList of a missing directory alone: %v, want an error naming it", err)
	}
}

func TestOpenListErrors(t *testing.T) {
	if _, err := location.OpenList(context.Background(), nil, location.Options{}); err == nil {
		t.Error("OpenList of nothing: no error")
	}
	if _, err := location.OpenList(context.Background(), []string{t.TempDir(), "s3://bucket/x"}, location.Options{}); err == nil {
		t.Error("OpenList with a bad location: no error")
	}
}

// ociCopy puts every chunk of l into a registry's repository and returns
// the store URL pinned to their chunk table.
func ociCopy(t testing.TB, l *local.Store, registry string) string {
	t.Helper()
	ctx := context.Background()
	w, err := ocistore.Open("oci://"+registry+"/chunks", ocistore.Options{Push: true})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	var ids []store.ID
	err = l.Walk(func(id store.ID) error {
		raw, err := l.Get(ctx, id)
		if err == nil {
			err = w.Stage(ctx, id, raw)
		}
		ids = append(ids, id)
		return err
	})
	if err == nil {
		err = w.Commit(ctx)
	}
	if err != nil {
		t.Fatal(err)
	}
	cm, err := w.PushChunkManifest(ctx, ids)
	if err == nil {
		err = w.TagChunkManifests(ctx, "all", cm)
	}
	if err != nil {
		t.Fatal(err)
	}
	return w.Pinned(cm.Table.Digest)
}
