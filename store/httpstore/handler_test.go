package httpstore_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/httpstore"
	"github.com/mkbootfs/mkbootfs/store/storetest"
)

func TestHandler(t *testing.T) {
	l := openLocal(t)
	data := storetest.Chunk(1, 3000)
	id, _, err := store.Save(context.Background(), l, data)
	if err != nil {
		t.Fatal(err)
	}
	h := id.String()
	path := "/" + h[:4] + "/" + h + ".cacnk"
	other := storetest.Chunk(2, 3000)
	oh := store.Sum(other).String()
	otherPath := "/" + oh[:4] + "/" + oh + ".cacnk"
	for _, tc := range []struct {
		name     string
		writable bool
		method   string
		path     string
		body     []byte
		status   int
	}{
		{"health", false, "GET", "/healthz", nil, 200},
		{"get", false, "GET", path, nil, 200},
		{"head", false, "HEAD", path, nil, 200},
		{"missing", false, "GET", otherPath, nil, 404},
		{"head missing", false, "HEAD", otherPath, nil, 404},
		{"uppercase id", false, "GET", strings.ToUpper(path[:6]) + strings.ToUpper(h) + ".cacnk", nil, 404},
		{"wrong prefix", false, "GET", "/0000/" + h + ".cacnk", nil, 404},
		{"no extension", false, "GET", "/" + h[:4] + "/" + h, nil, 404},
		{"dot dot", false, "GET", "/../../etc/passwd", nil, 404},
		{"escaped dot dot", false, "GET", "/" + h[:4] + "/..%2f..%2f" + h + ".cacnk", nil, 404},
		{"root", false, "GET", "/", nil, 404},
		{"put read-only", false, "PUT", otherPath, store.Encode(other), 405},
		{"delete", true, "DELETE", path, nil, 405},
		{"put", true, "PUT", otherPath, store.Encode(other), 201},
		{"put existing", true, "PUT", path, store.Encode(data), 201},
		{"put corrupt", true, "PUT", otherPath, store.Encode(data), 400},
		{"put garbage", true, "PUT", otherPath, []byte("garbage"), 400},
		{"put too big", true, "PUT", otherPath, make([]byte, store.MaxChunkSize+2<<20), 413},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			hd := httpstore.NewHandler(l, httpstore.HandlerOptions{Writable: tc.writable, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			w := httptest.NewRecorder()
			hd.ServeHTTP(w, httptest.NewRequest(tc.method, tc.path, bytes.NewReader(tc.body)))
			if w.Code != tc.status {
				t.Fatalf("%s %s: %d %s; want %d", tc.method, tc.path, w.Code, strings.TrimSpace(w.Body.String()), tc.status)
			}
			if tc.method == "GET" && tc.status == 200 && tc.path == path && !bytes.Equal(w.Body.Bytes(), store.Encode(data)) {
				t.Error("GET returned other bytes than stored")
			}
			if !strings.Contains(logs.String(), fmt.Sprintf("status=%d", tc.status)) || !strings.Contains(logs.String(), "method="+tc.method) {
				t.Errorf("no request log line: %q", logs.String())
			}
		})
	}
	if got, err := store.Load(context.Background(), l, store.Sum(other)); err != nil || !bytes.Equal(got, other) {
		t.Errorf("chunk put through the handler: %v", err)
	}
}

// TestServe: Serve answers until its context ends, then returns.
func TestServe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	h := httpstore.NewHandler(openLocal(t), httpstore.HandlerOptions{})
	go func() { done <- httpstore.Serve(ctx, ln, h, nil) }()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + ln.Addr().String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("healthz: %s", resp.Status)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Serve did not return after its context ended")
	}
}

// TestServeRefusesHugeHeaders: Serve answers a request with 64 KiB of
// headers 431.
func TestServeRefusesHugeHeaders(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	h := httpstore.NewHandler(openLocal(t), httpstore.HandlerOptions{})
	go func() { done <- httpstore.Serve(ctx, ln, h, nil) }()
	defer func() { cancel(); <-done }()
	req, err := http.NewRequest("GET", "http://"+ln.Addr().String()+"/healthz", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Huge", strings.Repeat("x", 64<<10)) // past the 16 KiB bound, within socket buffers: the client is done writing when the server answers
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("64 KiB of headers: %s; want 431", resp.Status)
	}
}
