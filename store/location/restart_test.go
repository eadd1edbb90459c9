package location_test

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mkbootfs/mkbootfs/internal/testserver"
	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/httpstore"
	"github.com/mkbootfs/mkbootfs/store/location"
)

// outageServer serves a store over HTTP on one loopback port and, on
// Outage, fails the way a restarting server does for a while: its port
// refuses connections ("refuse"), its connections are reset as they come
// ("reset"), or requests get no answer until it is over ("stall").
type outageServer struct {
	t    *testing.T
	addr string
	h    http.Handler
	mode string

	mu    sync.Mutex
	ln    net.Listener
	srv   *http.Server
	until time.Time // the outage's end
}

func newOutageServer(t *testing.T, h http.Handler, mode string) *outageServer {
	s := &outageServer{t: t, h: h, mode: mode}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.addr = ln.Addr().String()
	s.serve(ln)
	t.Cleanup(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.srv != nil {
			s.srv.Close()
		}
	})
	return s
}

func (s *outageServer) URL() string { return "http://" + s.addr + "/" }

func (s *outageServer) serve(ln net.Listener) {
	s.ln = ln
	s.srv = &http.Server{Handler: http.HandlerFunc(s.handle)}
	go s.srv.Serve(&resetListener{ln, s})
}

func (s *outageServer) down() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return time.Now().Before(s.until)
}

func (s *outageServer) handle(w http.ResponseWriter, r *http.Request) {
	switch {
	case s.mode == "stall":
		for s.down() {
			time.Sleep(10 * time.Millisecond)
		}
	case s.mode == "reset" && s.down(): // kept-alive connections too
		if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
			return
		}
	}
	s.h.ServeHTTP(w, r)
}

// Outage starts an outage of d.
func (s *outageServer) Outage(d time.Duration) {
	s.mu.Lock()
	s.until = time.Now().Add(d)
	if s.mode != "refuse" {
		s.mu.Unlock()
		return
	}
	s.srv.Close() // the listener and every connection
	s.srv = nil
	s.mu.Unlock()
	time.AfterFunc(d, func() {
		for {
			ln, err := net.Listen("tcp", s.addr)
			if err == nil {
				s.mu.Lock()
				s.serve(ln)
				s.mu.Unlock()
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// resetListener resets the connections it accepts during a "reset" outage.
type resetListener struct {
	net.Listener
	s *outageServer
}

func (l *resetListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil || l.s.mode != "reset" || !l.s.down() {
			return c, err
		}
		c.(*net.TCPConn).SetLinger(0) // close sends RST
		c.Close()
	}
}

// A store that restarts (refuses connections, resets them, or stalls) for
// less than the fetch timeout costs reads a delay, never an error.
func TestOpenListRidesThroughRestart(t *testing.T) {
	const (
		outage  = 2 * time.Second
		timeout = 10 * time.Second // each Load's, as lazyfs's fetch timeout
		readers = 8
	)
	for _, mode := range []string{"refuse", "reset", "stall"} {
		t.Run(mode, func(t *testing.T) {
			l := openLocal(t)
			var ids []store.ID
			want := map[store.ID][]byte{}
			for i := range 64 {
				id, data := saveChunk(t, l, uint64(100+i), 3000)
				ids = append(ids, id)
				want[id] = data
			}
			srv := newOutageServer(t, httpstore.NewHandler(l, httpstore.HandlerOptions{}), mode)
			s, err := location.OpenList(context.Background(), []string{srv.URL()}, location.Options{Timeout: timeout})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			start := time.Now()
			var loads, outageLoads atomic.Int64
			var wg sync.WaitGroup
			for r := range readers {
				wg.Go(func() {
					for k := 0; time.Since(start) < outage*2; k++ {
						id := ids[(k*readers+r)%len(ids)]
						ctx, cancel := context.WithTimeout(context.Background(), timeout)
						during := srv.down()
						got, err := store.Load(ctx, s, id)
						cancel()
						if err != nil || !bytes.Equal(got, want[id]) {
							t.Errorf("Load %s (store down: %v): %v", id.Short(), during, err)
							return
						}
						loads.Add(1)
						if during {
							outageLoads.Add(1)
						}
						time.Sleep(5 * time.Millisecond)
					}
				})
			}
			time.Sleep(outage / 4)
			srv.Outage(outage)
			wg.Wait()
			if outageLoads.Load() == 0 {
				t.Fatal("no Load started during the outage")
			}
			t.Logf("%d loads, %d started during the %v outage", loads.Load(), outageLoads.Load(), outage)
		})
	}
}

// A first store that accepts connections and never answers (stopped with
// SIGSTOP, say) does not take a read's whole deadline: the second store
// is asked after hedgeAfter, and the next reads go to it first.
func TestOpenListHungFirstStore(t *testing.T) {
	l := openLocal(t)
	var ids []store.ID
	for i := range 8 {
		id, _ := saveChunk(t, l, uint64(200+i), 3000)
		ids = append(ids, id)
	}
	good := testserver.HTTP(t, l, false)
	hung, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns atomic.Int64
	var held sync.WaitGroup
	done := make(chan struct{})
	go func() {
		for {
			c, err := hung.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			held.Go(func() { <-done; c.Close() })
		}
	}()
	t.Cleanup(func() { hung.Close(); close(done); held.Wait() })
	s, err := location.OpenList(context.Background(), []string{"http://" + hung.Addr().String() + "/", good}, location.Options{Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, id := range ids {
		// A deadline well under the store's own timeout: without asking
		// the second store, the hung one would take all of it.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		_, err := store.Load(ctx, s, id)
		cancel()
		if err != nil {
			t.Fatalf("Load past a hung first store: %v", err)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("the hung store was asked on %d connections over %d reads, want 1: once it failed to answer, the other store goes first", n, len(ids))
	}
}

// A store that refuses connections from the first request is a wrong
// address, not a restart: the read fails at once, naming the refusal,
// instead of retrying until its deadline.
func TestOpenListRefusedFromTheStart(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String() + "/"
	ln.Close()
	s, err := location.OpenList(context.Background(), []string{dead}, location.Options{Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = store.Load(ctx, s, store.Sum([]byte("x")))
	if err == nil || ctx.Err() != nil || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("Load from a store that never answered: %v (context: %v); want connection refused, at once", err, ctx.Err())
	}
}
