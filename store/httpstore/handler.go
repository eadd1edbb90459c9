package httpstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/mkbootfs/mkbootfs/store"
)

// HandlerOptions configure NewHandler.
type HandlerOptions struct {
	// Writable accepts PUT of verified chunks; otherwise the store is read-only.
	Writable bool
	// Logger gets one line per request; nil logs nothing.
	Logger *slog.Logger
}

// NewHandler serves s in casync's layout: GET and HEAD of
// /<4 hex>/<id>.cacnk, PUT when writable, and GET /healthz, which answers
// 200 while the store answers. A directory to serve is opened with local.OpenRoot,
// so that no symlink in it leads out of it.
func NewHandler(s store.Store, opt HandlerOptions) http.Handler {
	h := &handler{s: s, writable: opt.Writable}
	if opt.Logger == nil {
		return h
	}
	return logRequests(h, opt.Logger)
}

type handler struct {
	s        store.Store
	writable bool
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/healthz" {
		h.health(w, r)
		return
	}
	id, ok := parsePath(r.URL.Path)
	if !ok {
		http.Error(w, "not a chunk: want /<4 hex>/<64 hex>.cacnk", http.StatusNotFound)
		return
	}
	switch r.Method {
	case http.MethodGet:
		h.get(w, r, id)
	case http.MethodHead:
		h.head(w, r, id)
	case http.MethodPut:
		if !h.writable {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "the store is read-only (serve it with --writable to accept PUT)", http.StatusMethodNotAllowed)
			return
		}
		h.put(w, r, id)
	default:
		w.Header().Set("Allow", h.allow())
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}

func (h *handler) allow() string {
	if h.writable {
		return "GET, HEAD, PUT"
	}
	return "GET, HEAD"
}

// parsePath accepts exactly /<first 4 hex of id>/<id>.cacnk, so no request
// names anything but a chunk.
func parsePath(p string) (store.ID, bool) {
	dir, file, ok := strings.Cut(strings.TrimPrefix(p, "/"), "/")
	name, ok2 := strings.CutSuffix(file, ".cacnk")
	if !ok || !ok2 || len(dir) != 4 || !strings.HasPrefix(name, dir) {
		return store.ID{}, false
	}
	id, err := store.ParseID(name)
	return id, err == nil && id.String() == name // lowercase only, as written
}

func (h *handler) health(w http.ResponseWriter, r *http.Request) {
	if _, err := h.s.Has(r.Context(), store.ID{}); err != nil {
		http.Error(w, "store unavailable: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.WriteString(w, "ok\n")
}

// chunkHeaders are the same for every chunk: its bytes never change.
func chunkHeaders(w http.ResponseWriter, id store.ID) {
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	w.Header().Set("ETag", `"`+id.String()+`"`)
}

func (h *handler) get(w http.ResponseWriter, r *http.Request, id store.ID) {
	b, err := h.s.Get(r.Context(), id)
	if err != nil {
		h.error(w, r, err)
		return
	}
	chunkHeaders(w, id)
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.Write(b)
}

func (h *handler) head(w http.ResponseWriter, r *http.Request, id store.ID) {
	ok, err := h.s.Has(r.Context(), id)
	if err == nil && !ok {
		err = store.ErrNotFound
	}
	if err != nil {
		h.error(w, r, err)
		return
	}
	chunkHeaders(w, id)
	w.WriteHeader(http.StatusOK)
}

// put verifies the chunk before it stores it: a writable server must not
// let a client poison the store.
func (h *handler) put(w http.ResponseWriter, r *http.Request, id store.ID) {
	if r.ContentLength > maxStored {
		http.Error(w, fmt.Sprintf("a chunk is at most %d bytes", maxStored), http.StatusRequestEntityTooLarge)
		return
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, maxStored)); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			http.Error(w, fmt.Sprintf("a chunk is at most %d bytes", maxStored), http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, "reading the chunk: "+err.Error(), http.StatusBadRequest)
		return
	}
	if _, err := store.Decode(id, buf.Bytes()); err != nil {
		http.Error(w, "refused: "+err.Error(), http.StatusBadRequest)
		return
	}
	if err := h.s.Put(r.Context(), id, buf.Bytes()); err != nil {
		h.error(w, r, err)
		return
	}
	w.WriteHeader(http.StatusCreated)
}

func (h *handler) error(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, store.ErrNotFound):
		http.Error(w, "chunk not found", http.StatusNotFound)
	case errors.Is(err, store.ErrReadOnly):
		http.Error(w, err.Error(), http.StatusForbidden)
	case r.Context().Err() != nil: // the client left; nobody reads the answer
	default:
		http.Error(w, err.Error(), http.StatusInternalServerError)
	}
}

// statusWriter records what a handler answered, for the request log.
type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

func logRequests(h http.Handler, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		h.ServeHTTP(sw, r)
		level := slog.LevelInfo
		if sw.status >= 500 {
			level = slog.LevelWarn
		}
		log.LogAttrs(r.Context(), level, "request",
			slog.String("method", r.Method), slog.String("path", r.URL.Path),
			slog.Int("status", sw.status), slog.Int64("bytes", sw.bytes),
			slog.Duration("duration", time.Since(start)), slog.String("remote", r.RemoteAddr))
	})
}

// Server timeouts: a client that sends headers slowly or stalls mid-body is
// dropped; an idle keep-alive connection is kept long enough for the next
// burst of reads.
const (
	readHeaderTimeout = 10 * time.Second
	bodyTimeout       = 2 * time.Minute
	idleTimeout       = 2 * time.Minute
	shutdownTimeout   = 10 * time.Second
)

// Serve serves h on ln until ctx ends, then shuts down, letting requests
// in flight finish for a while.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       bodyTimeout,
		WriteTimeout:      bodyTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve http on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	<-errc
	if err != nil {
		return fmt.Errorf("shut down http on %s: %w", ln.Addr(), err)
	}
	return nil
}
