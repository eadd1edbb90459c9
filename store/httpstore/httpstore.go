// Package httpstore owns chunk stores over HTTP(S) in casync's layout
// (<first 4 hex digits>/<id>.cacnk): a client that reads any static file
// server (nginx serving a local store works) and writes with PUT where the
// server allows it, and the handler that `mkbootfs serve --http` runs.
package httpstore

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/internal/transport"
)

// Options tune a Store. Zero fields take the defaults.
type Options struct {
	// Timeout bounds each request, from dial to the last byte (default 1 minute).
	Timeout time.Duration
	// Parallelism is how many requests the caller runs at once; as many
	// connections are kept alive for reuse (default 16).
	Parallelism int
	// TLSClientConfig, if set, replaces the TLS defaults (the system's
	// roots), for a server with its own CA.
	TLSClientConfig *tls.Config
}

// maxStored bounds a stored chunk: zstd may grow an incompressible chunk
// of MaxChunkSize by a little.
const maxStored = store.MaxChunkSize + 1<<20

// Store is a chunk store at an http:// or https:// URL.
type Store struct {
	base      string // scheme://host/path/, without credentials or query
	query     string // "?..." or ""
	name      string // the URL for messages, password redacted
	user      *url.Userinfo
	timeout   time.Duration
	transport *http.Transport
	client    *http.Client
}

// RedirectParam in a store's URL query, as RedirectParam=any, lets the
// store follow redirects to any scheme, host and port; it is not sent to the
// server. Without it a redirect stays on the URL's own scheme and host:port
// (chunks are verified wherever they come from, but a store should not
// steer its clients' requests at other hosts).
const RedirectParam = "mkbootfs-redirect"

// maxRedirects is as many as net/http follows by default.
const maxRedirects = 10

// New returns the store at rawURL. It does not contact the server.
func New(rawURL string, opt Options) (*Store, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", rawURL, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("store %s: want an http:// or https:// URL with a host", u.Redacted())
	}
	if opt.Timeout <= 0 {
		opt.Timeout = time.Minute
	}
	if opt.Parallelism <= 0 {
		opt.Parallelism = 16
	}
	name := u.Redacted()
	user := u.User
	u.User = nil
	rawQuery, anyRedirect, err := redirectPolicy(u.RawQuery)
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", name, err)
	}
	query := ""
	if rawQuery != "" {
		query = "?" + rawQuery
	}
	u.RawQuery, u.Fragment = "", ""
	if !strings.HasSuffix(u.Path, "/") {
		u.Path += "/"
		u.RawPath = ""
	}
	tr := transport.New(opt.Timeout, opt.Parallelism, opt.TLSClientConfig)
	client := &http.Client{Transport: tr, CheckRedirect: sameOrigin}
	if anyRedirect {
		client.CheckRedirect = nil // net/http's: any, at most 10
	}
	return &Store{
		base:      u.String(),
		query:     query,
		name:      name,
		user:      user,
		timeout:   opt.Timeout,
		transport: tr,
		client:    client,
	}, nil
}

// redirectPolicy takes RedirectParam out of a raw query, leaving the rest
// byte for byte (a signed URL's parameters must reach the server as given).
func redirectPolicy(rawQuery string) (rest string, anyRedirect bool, err error) {
	var kept []string
	for _, kv := range strings.Split(rawQuery, "&") {
		k, v, _ := strings.Cut(kv, "=")
		if k != RedirectParam {
			if kv != "" {
				kept = append(kept, kv)
			}
			continue
		}
		if v != "any" {
			return "", false, fmt.Errorf("%s=%s: want %s=any (follow redirects to any host), or no %s (the store's own scheme and host only)", k, v, RedirectParam, RedirectParam)
		}
		anyRedirect = true
	}
	return strings.Join(kept, "&"), anyRedirect, nil
}

// sameOrigin is the CheckRedirect of a store without RedirectParam=any.
func sameOrigin(req *http.Request, via []*http.Request) error {
	if origin(req.URL) != origin(via[0].URL) {
		return &redirectError{from: via[0].URL, to: req.URL}
	}
	if len(via) >= maxRedirects {
		return fmt.Errorf("stopped after %d redirects", maxRedirects)
	}
	return nil
}

// redirectError is a redirect to another origin, not followed.
type redirectError struct{ from, to *url.URL }

func (e *redirectError) Error() string {
	return fmt.Sprintf("redirected from %s to %s, another scheme, host or port: not followed; add ?%s=any to the store's URL to follow redirects anywhere",
		e.from.Redacted(), e.to.Redacted(), RedirectParam)
}

// origin is scheme://host:port, the port spelled out and the host in
// lower case, so that http://h/ and http://H:80/ are one origin.
func origin(u *url.URL) string {
	scheme := strings.ToLower(u.Scheme)
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[scheme]
	}
	return scheme + "://" + net.JoinHostPort(strings.ToLower(u.Hostname()), port)
}

func (s *Store) String() string { return s.name }

// Close drops the idle connections.
func (s *Store) Close() error {
	s.transport.CloseIdleConnections()
	return nil
}

// chunkURL returns the URL of chunk id.
func (s *Store) chunkURL(id store.ID) string {
	h := id.String()
	return s.base + h[:4] + "/" + h + ".cacnk" + s.query
}

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, id store.ID) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	resp, err := s.send(ctx, http.MethodGet, id, nil)
	if err != nil {
		return nil, s.fail(ctx, id, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, s.status(id, resp)
	}
	if resp.ContentLength > maxStored {
		return nil, s.fail(ctx, id, fmt.Errorf("GET %s: %d bytes, more than any chunk: %w", resp.Request.URL, resp.ContentLength, store.ErrCorrupt))
	}
	var buf bytes.Buffer
	if resp.ContentLength > 0 {
		buf.Grow(int(resp.ContentLength))
	}
	n, err := buf.ReadFrom(io.LimitReader(resp.Body, maxStored+1))
	if err != nil {
		return nil, s.fail(ctx, id, fmt.Errorf("GET %s: reading the body: %w", resp.Request.URL, err))
	}
	if n > maxStored {
		return nil, s.fail(ctx, id, fmt.Errorf("GET %s: more than %d bytes, more than any chunk: %w", resp.Request.URL, maxStored, store.ErrCorrupt))
	}
	return buf.Bytes(), nil
}

// Has implements store.Store with a HEAD request.
func (s *Store) Has(ctx context.Context, id store.ID) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	resp, err := s.send(ctx, http.MethodHead, id, nil)
	if err != nil {
		return false, s.fail(ctx, id, err)
	}
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		return true, nil
	case http.StatusNotFound, http.StatusGone:
		return false, nil
	}
	return false, s.status(id, resp)
}

// Put implements store.Store with a PUT request; the server must make the
// write atomic (nginx's WebDAV module and Handler do).
func (s *Store) Put(ctx context.Context, id store.ID, compressed []byte) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	resp, err := s.send(ctx, http.MethodPut, id, compressed)
	if err != nil {
		return s.fail(ctx, id, err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK, http.StatusCreated, http.StatusNoContent:
		return nil
	}
	return s.status(id, resp)
}

func (s *Store) send(ctx context.Context, method string, id store.ID, body []byte) (*http.Response, error) {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.chunkURL(id), r)
	if err != nil {
		return nil, err
	}
	if s.user != nil {
		pass, _ := s.user.Password()
		req.SetBasicAuth(s.user.Username(), pass)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	resp, err := s.client.Do(req)
	if re := (*redirectError)(nil); errors.As(err, &re) {
		return nil, store.Permanent(re) // it names both URLs: not net/http's words around it too
	}
	return resp, err
}

// fail wraps a transport error. When the request's context ended, the
// error says so even if the transport put it in other words.
func (s *Store) fail(ctx context.Context, id store.ID, err error) error {
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		err = fmt.Errorf("%w: %v", cerr, err)
	}
	return &store.ChunkError{ID: id, Store: s.name, Err: err}
}

// status turns an unexpected response into an error that names the
// request, the status and what to do. It drains a little of the body, so
// the connection can be reused.
func (s *Store) status(id store.ID, resp *http.Response) error {
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	req := resp.Request
	err := fmt.Errorf("%s %s: %s", req.Method, req.URL.Redacted(), resp.Status)
	code := resp.StatusCode
	switch {
	case code == http.StatusNotFound || code == http.StatusGone:
		err = fmt.Errorf("%w (%v)", store.ErrNotFound, err)
	case req.Method == http.MethodPut && (code == http.StatusMethodNotAllowed || code == http.StatusForbidden || code == http.StatusNotImplemented):
		err = fmt.Errorf("%w: %v: the server serves the store read-only (serve it with `mkbootfs serve --http --writable` or WebDAV PUT, or write to another store)", store.ErrReadOnly, err)
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		err = store.Permanent(fmt.Errorf("%v: the server refuses access; put the credentials in the URL (https://user:password@host/path)", err))
	case code == http.StatusRequestTimeout || code == http.StatusTooManyRequests || code >= 500:
		// the server may do better on another try
	case code >= 300:
		err = store.Permanent(err)
	}
	return &store.ChunkError{ID: id, Store: s.name, Err: err}
}
