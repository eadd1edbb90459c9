package httpstore_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mkbootfs/mkbootfs/internal/testserver"
	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/httpstore"
	"github.com/mkbootfs/mkbootfs/store/local"
	"github.com/mkbootfs/mkbootfs/store/storetest"
)

func openLocal(t *testing.T) *local.Store {
	t.Helper()
	l, err := local.Open(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// serve starts a server for the local store and returns its URL and, for
// TLS, the client's TLS config.
type serve func(t *testing.T, l *local.Store, writable bool) (string, *tls.Config)

func ours(tlsOn bool) serve {
	return func(t *testing.T, l *local.Store, writable bool) (string, *tls.Config) {
		h := httpstore.NewHandler(l, httpstore.HandlerOptions{Writable: writable})
		if !tlsOn {
			srv := httptest.NewServer(h)
			t.Cleanup(srv.Close)
			return srv.URL, nil
		}
		srv := httptest.NewTLSServer(h)
		t.Cleanup(srv.Close)
		return srv.URL, srv.Client().Transport.(*http.Transport).TLSClientConfig
	}
}

func nginx(t *testing.T, l *local.Store, writable bool) (string, *tls.Config) {
	return testserver.Nginx(t, l.Dir(), writable), nil
}

func TestConformance(t *testing.T) {
	for _, tc := range []struct {
		name     string
		serve    serve
		writable bool
	}{
		{"ours", ours(false), true},
		{"ours read-only", ours(false), false},
		{"ours TLS", ours(true), true},
		{"nginx", nginx, false},
		{"nginx WebDAV", nginx, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			storetest.Run(t, func(t *testing.T) *storetest.Backend {
				l := openLocal(t)
				u, tlsConf := tc.serve(t, l, tc.writable)
				// The proxy stalls on request; TLS goes through it untouched.
				pu, err := url.Parse(u)
				if err != nil {
					t.Fatal(err)
				}
				p := testserver.NewProxy(t, pu.Host)
				pu.Host = p.Addr
				s, err := httpstore.New(pu.String(), httpstore.Options{TLSClientConfig: tlsConf})
				if err != nil {
					t.Fatal(err)
				}
				b := &storetest.Backend{Store: s, Corrupt: storetest.CorruptLocal(l), Stall: p.Stall}
				if !tc.writable {
					b.Writer, b.ReadOnly = l, true
				}
				return b
			})
		})
	}
}

// TestStatus checks how the client reads each answer a server may give.
func TestStatus(t *testing.T) {
	for _, tc := range []struct {
		status    int
		notFound  bool
		readOnly  bool
		permanent bool // retrying cannot help
	}{
		{status: 404, notFound: true},
		{status: 410, notFound: true},
		{status: 500},
		{status: 503},
		{status: 429},
		{status: 401, permanent: true},
		{status: 403, readOnly: true, permanent: true},
		{status: 405, readOnly: true, permanent: true},
		{status: 400, permanent: true},
	} {
		t.Run(http.StatusText(tc.status), func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				http.Error(w, "no", tc.status)
			}))
			t.Cleanup(srv.Close)
			s, err := httpstore.New(srv.URL+"/store", httpstore.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			id := store.Sum([]byte("x"))
			ctx := context.Background()
			_, getErr := s.Get(ctx, id)
			putErr := s.Put(ctx, id, store.Encode([]byte("x")))
			for op, err := range map[string]error{"GET": getErr, "PUT": putErr} {
				if err == nil {
					t.Fatalf("%s: no error", op)
				}
				if want := srv.URL + "/store/" + id.String()[:4] + "/" + id.String() + ".cacnk"; !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), http.StatusText(tc.status)) {
					t.Errorf("%s error %q does not name the URL %s and the status", op, err, want)
				}
			}
			if got := errors.Is(getErr, store.ErrNotFound); got != tc.notFound {
				t.Errorf("GET error %q: ErrNotFound = %v, want %v", getErr, got, tc.notFound)
			}
			if got := errors.Is(putErr, store.ErrReadOnly); got != tc.readOnly {
				t.Errorf("PUT error %q: ErrReadOnly = %v, want %v", putErr, got, tc.readOnly)
			}
			if !tc.notFound {
				// Through Retry, a permanent error takes one request and a transient one all.
				var n atomic.Int32
				r := store.Retry(countGets(s, &n), store.RetryOptions{Attempts: 3, MinDelay: time.Millisecond})
				r.Get(ctx, id)
				if want := map[bool]int32{true: 1, false: 3}[tc.permanent]; n.Load() != want {
					t.Errorf("Retry made %d requests, want %d", n.Load(), want)
				}
			}
			ok, err := s.Has(ctx, id)
			if tc.notFound && (ok || err != nil) || !tc.notFound && err == nil {
				t.Errorf("HEAD = %v, %v", ok, err)
			}
		})
	}
}

type counted struct {
	store.Store
	n *atomic.Int32
}

func countGets(s store.Store, n *atomic.Int32) store.Store { return counted{s, n} }

func (c counted) Get(ctx context.Context, id store.ID) ([]byte, error) {
	c.n.Add(1)
	return c.Store.Get(ctx, id)
}

// TestKeepAlive reads many chunks with bounded parallelism: the client
// reuses its connections instead of dialing one per request.
func TestKeepAlive(t *testing.T) {
	const parallel, chunks = 8, 200
	l := openLocal(t)
	var ids []store.ID
	for i := range chunks {
		id, _, err := store.Save(context.Background(), l, storetest.Chunk(uint64(i), 2000))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(httpstore.NewHandler(l, httpstore.HandlerOptions{}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	s, err := httpstore.New(srv.URL, httpstore.Options{Parallelism: parallel})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sem := make(chan struct{}, parallel)
	errs := make(chan error, chunks)
	for _, id := range ids {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			_, err := store.Load(context.Background(), s, id)
			errs <- err
		}()
	}
	for range chunks {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	// A connection goes back to the pool a moment after its response is
	// read, so a request may dial while one is on its way back: allow twice.
	if n := conns.Load(); n > 2*parallel {
		t.Errorf("%d connections for %d requests, %d at a time; want at most %d", n, chunks, parallel, 2*parallel)
	}
}

// TestRequestTimeout: the store's own timeout ends a request to a server
// that never answers, whatever the caller's context.
func TestRequestTimeout(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	s, err := httpstore.New(srv.URL, httpstore.Options{Timeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	id := store.Sum([]byte("x"))
	_, err = s.Get(context.Background(), id)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), srv.URL) {
		t.Fatalf("Get from a server that never answers: %v; want a deadline error naming %s", err, srv.URL)
	}
	if _, err := s.Has(context.Background(), id); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Has from a server that never answers: %v", err)
	}
}

// TestDeadServer: nothing listens; the error says so at once.
func TestDeadServer(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	u := srv.URL
	srv.Close()
	s, err := httpstore.New(u, httpstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, err = s.Get(context.Background(), store.Sum([]byte("x")))
	if err == nil || errors.Is(err, store.ErrNotFound) || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("Get from a dead server: %v; want connection refused", err)
	}
}

func TestNewBadURL(t *testing.T) {
	for _, u := range []string{"ftp://host/x", "http://", "://x", "/just/a/path"} {
		if _, err := httpstore.New(u, httpstore.Options{}); err == nil {
			t.Errorf("New(%q): no error", u)
		}
	}
}

// TestBasicAuth: credentials in the URL go in the Authorization header and
// never into messages.
func TestBasicAuth(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "me" || p != "secret" {
			http.Error(w, "who are you", http.StatusUnauthorized)
			return
		}
		http.NotFound(w, r)
	}))
	t.Cleanup(srv.Close)
	for _, tc := range []struct {
		cred string
		want error
	}{{"me:secret", store.ErrNotFound}, {"me:wrong", nil}} {
		s, err := httpstore.New(strings.Replace(srv.URL, "//", "//"+tc.cred+"@", 1), httpstore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.Get(context.Background(), store.Sum([]byte("x")))
		if tc.want != nil && !errors.Is(err, tc.want) || tc.want == nil && (err == nil || errors.Is(err, store.ErrNotFound)) {
			t.Errorf("%s: %v", tc.cred, err)
		}
		if strings.Contains(err.Error(), "secret") || strings.Contains(err.Error(), "wrong") || strings.Contains(s.String(), "secret") {
			t.Errorf("a message shows the password: %q, %q", err, s)
		}
		s.Close()
	}
}

// TestRedirects: a store follows a redirect on its own scheme and
// host:port; one to another port or host is refused with one error naming
// both URLs, and never reaches the other server, unless the store's URL has
// mkbootfs-redirect=any, which is not sent to the servers while the URL's
// other query parameters are.
func TestRedirects(t *testing.T) {
	l := openLocal(t)
	data := storetest.Chunk(1, 3000)
	id, _, err := store.Save(context.Background(), l, data)
	if err != nil {
		t.Fatal(err)
	}
	chunk := "/" + id.String()[:4] + "/" + id.String() + ".cacnk"
	var otherHits atomic.Int32
	var queries []string
	var mu sync.Mutex
	handler := httpstore.NewHandler(l, httpstore.HandlerOptions{})
	record := func(r *http.Request) {
		mu.Lock()
		queries = append(queries, r.URL.RawQuery)
		mu.Unlock()
	}
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		otherHits.Add(1)
		record(r)
		r.URL.Path = strings.TrimPrefix(r.URL.Path, "/moved")
		handler.ServeHTTP(w, r)
	}))
	t.Cleanup(other.Close)
	// Another host on the loopback, on the same port as other.
	_, port, _ := net.SplitHostPort(other.Listener.Addr().String())
	ln, err := net.Listen("tcp", "127.0.0.2:"+port)
	if err != nil {
		t.Fatal(err)
	}
	otherSrv := &http.Server{Handler: other.Config.Handler}
	go otherSrv.Serve(ln)
	t.Cleanup(func() { otherSrv.Close() })
	otherHost := "http://" + ln.Addr().String()
	var first *httptest.Server
	first = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		record(r)
		switch {
		case strings.HasPrefix(r.URL.Path, "/here/"):
			http.Redirect(w, r, first.URL+"/moved"+strings.TrimPrefix(r.URL.Path, "/here")+"?"+r.URL.RawQuery, http.StatusFound)
		case strings.HasPrefix(r.URL.Path, "/moved/"):
			r.URL.Path = strings.TrimPrefix(r.URL.Path, "/moved")
			handler.ServeHTTP(w, r)
		case strings.HasPrefix(r.URL.Path, "/port/"):
			http.Redirect(w, r, other.URL+"/moved"+strings.TrimPrefix(r.URL.Path, "/port")+"?"+r.URL.RawQuery, http.StatusMovedPermanently)
		case strings.HasPrefix(r.URL.Path, "/host/"):
			http.Redirect(w, r, otherHost+"/moved"+strings.TrimPrefix(r.URL.Path, "/host")+"?"+r.URL.RawQuery, http.StatusTemporaryRedirect)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(first.Close)

	for _, tc := range []struct {
		name, url string
		refusedTo string // "" when followed
	}{
		{"same host", first.URL + "/here", ""},
		{"another port", first.URL + "/port", other.URL},
		{"another host", first.URL + "/host", otherHost},
		{"another port, allowed", first.URL + "/port?token=a%2Fb&" + httpstore.RedirectParam + "=any", ""},
		{"another host, allowed", first.URL + "/host?" + httpstore.RedirectParam + "=any&token=a%2Fb", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			otherHits.Store(0)
			mu.Lock()
			queries = nil
			mu.Unlock()
			s, err := httpstore.New(tc.url, httpstore.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			got, err := store.Load(context.Background(), s, id)
			if tc.refusedTo == "" {
				if err != nil || !bytes.Equal(got, data) {
					t.Fatalf("Load: %v", err)
				}
			} else {
				from := strings.SplitN(tc.url, "?", 2)[0] + chunk
				if err == nil || !strings.Contains(err.Error(), "redirected from "+from+" to "+tc.refusedTo+"/moved"+chunk) || !strings.Contains(err.Error(), httpstore.RedirectParam+"=any") {
					t.Fatalf("Load: %v; want the redirect from %s to %s refused, and how to allow it", err, from, tc.refusedTo)
				}
				if strings.Count(err.Error(), tc.refusedTo) != 1 {
					t.Errorf("the error names %s more than once: %v", tc.refusedTo, err)
				}
				if otherHits.Load() != 0 {
					t.Errorf("the other server got %d requests", otherHits.Load())
				}
				var n atomic.Int32
				store.Retry(countGets(s, &n), store.RetryOptions{Attempts: 3, MinDelay: time.Millisecond}).Get(context.Background(), id)
				if n.Load() != 1 {
					t.Errorf("Retry made %d requests of a refused redirect, want 1", n.Load())
				}
			}
			mu.Lock()
			defer mu.Unlock()
			for _, q := range queries {
				if strings.Contains(q, httpstore.RedirectParam) || strings.Contains(tc.url, "token") && !strings.Contains(q, "token=a%2Fb") {
					t.Errorf("a server got the query %q from %s", q, tc.url)
				}
			}
		})
	}
	if _, err := httpstore.New(first.URL+"/x?"+httpstore.RedirectParam+"=yes", httpstore.Options{}); err == nil || !strings.Contains(err.Error(), httpstore.RedirectParam+"=any") {
		t.Errorf("New with %s=yes: %v; want an error saying what it takes", httpstore.RedirectParam, err)
	}
}

// TestOversizedBodies: a server that declares a terabyte, or sends a body
// without end, gets an error naming the URL once a chunk's most has been
// read, not a terabyte's allocation or a read that never ends.
func TestOversizedBodies(t *testing.T) {
	for _, tc := range []struct {
		name string
		h    http.HandlerFunc
		want string
	}{
		{"1 TB Content-Length", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "1099511627776")
			w.Write([]byte("not a terabyte"))
		}, "1099511627776 bytes, more than any chunk"},
		{"endless body", func(w http.ResponseWriter, r *http.Request) {
			buf := make([]byte, 64<<10)
			for r.Context().Err() == nil {
				if _, err := w.Write(buf); err != nil {
					return
				}
			}
		}, "more than any chunk"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(tc.h)
			t.Cleanup(srv.Close)
			s, err := httpstore.New(srv.URL, httpstore.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			_, err = s.Get(context.Background(), store.Sum([]byte("x")))
			if !errors.Is(err, store.ErrCorrupt) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), srv.URL) {
				t.Fatalf("Get: %v; want a corrupt-chunk error naming %s and saying %q", err, srv.URL, tc.want)
			}
		})
	}
}
