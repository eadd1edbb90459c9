// Package ocistore owns chunk stores in an OCI registry repository: the
// chunks live next to the boot image, so no chunk server is needed.
//
// Each chunk is one blob (its zstd bytes, media type ChunkMediaType). A
// blob's digest is the SHA-256 of the compressed bytes while a chunk's ID
// is that of the uncompressed ones, so a chunk table maps one to the other
// for the chunks of one image (68 bytes a chunk). Chunk manifests keep
// table and blobs alive: OCI image manifests of artifact type
// ChunksArtifactType whose config is the table and whose layers are the
// chunk blobs, at most Options.PartChunks to a manifest. The registry's
// garbage collector keeps a chunk as long as a tag reaches a chunk
// manifest that lists it (a boot image's index lists them).
//
// A writer trusts only what it can fetch: a chunk manifest or table a tag
// reaches but the registry lost lends no chunk, and chunks the registry
// lost while their manifest stayed make it refuse the next chunk manifest
// that lists them, after which the store forgets them (ErrLost). Either
// way a conversion uploads them again, so converting an image again
// repairs its repository.
//
// A store URL is oci://REGISTRY/REPO, which knows the chunks of every
// chunk manifest the repository's tags reach (what a conversion reuses),
// or oci://REGISTRY/REPO@sha256:HEX, pinned to one chunk table (what a
// boot image records: one request for the table's first part, which
// lists the chunks a start reads first, then one blob request per chunk
// read, and one for the rest of the table once a read needs it).
//
// Credentials come from a docker config file (Options.AuthFile), then
// docker's usual places (go-containerregistry's default keychain:
// ~/.docker/config.json, $DOCKER_CONFIG, $REGISTRY_AUTH_FILE). A 401 in
// the middle of a run re-reads them and authenticates again, so an expired
// token or a rotated secret does not fail a read.
package ocistore

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/mkbootfs/mkbootfs/store"
	storetransport "github.com/mkbootfs/mkbootfs/store/internal/transport"
)

// Media types of chunk manifests.
const (
	// ChunkMediaType is the media type of a chunk blob: zstd, as stored.
	ChunkMediaType = "application/vnd.mkbootfs.chunk.v1.zstd"
	// TableMediaType is the media type of a chunk table, a chunk manifest's config.
	TableMediaType = "application/vnd.mkbootfs.chunktable.v1"
	// ChunksArtifactType marks a chunk manifest, and its descriptor in an index.
	ChunksArtifactType = "application/vnd.mkbootfs.chunks.v1"
)

// PartChunks is the default bound on the layers of one chunk manifest:
// about 2.6 MB of JSON, under the 4 MiB that registries commonly accept
// for a manifest (docker-registry 2.8 among them).
const PartChunks = 20000

// maxStored bounds a stored chunk: zstd may grow an incompressible chunk
// of MaxChunkSize by a little.
const maxStored = store.MaxChunkSize + 1<<20

// maxManifest bounds a manifest or tag list read.
const maxManifest = 16 << 20

// maxTable bounds a chunk table: 4 million chunks, 256 GiB of data at the
// chunker's average size.
const maxTable = tableHeader + 4<<20*tableEntry

// Options tune a Store. Zero fields take the defaults.
type Options struct {
	// Timeout bounds each request, from dial to the last byte (default 1 minute).
	Timeout time.Duration
	// Parallelism is how many requests run at once: the uploads Stage
	// starts, the manifests read when learning a repository, and the idle
	// connections kept for a caller's parallel reads (default 16).
	Parallelism int
	// AuthFile is a docker config file (config.json) whose credentials
	// come before those of the default keychain, when it exists.
	AuthFile string
	// Push asks for push access when authenticating, for a store that
	// will be written.
	Push bool
	// PartChunks bounds the chunks of one chunk manifest (default
	// PartChunks); a longer list is split into parts.
	PartChunks int
	// Host is how the registry is reached, when something other than
	// its name says (containerd's hosts configuration, say).
	Host Host
}

// Host is how a registry is reached; zero fields take the store's
// defaults.
type Host struct {
	// Scheme is "http" or "https"; "": go-containerregistry's choice by
	// the name (HTTP for loopback and private addresses, else HTTPS).
	Scheme string
	// Transport carries the requests to the registry (with its TLS
	// settings: CAs, client certificates, no verification); it should
	// keep Options.Parallelism connections alive. nil: the store's own.
	Transport http.RoundTripper
	// Header is sent with every request to the registry that lacks the
	// field (a token the credentials got comes first): a login, say.
	Header http.Header
}

// Store is a chunk store in a registry repository.
type Store struct {
	repo    name.Repository
	pin     string // digest of the pinned chunk table, or ""
	name    string // the URL, for messages
	opt     Options
	scheme  string
	base    http.RoundTripper
	timeout time.Duration

	authMu sync.Mutex // held while authenticating
	auth   *authState

	loadSem chan struct{} // held while learning the chunk map
	mu      sync.RWMutex
	loaded  bool       // every chunk table is read
	first   int64      // how much of the pinned chunk table to read first
	part    []byte     // what is read of the pinned chunk table, until all of it is
	order   []store.ID // the chunks of the pinned chunk table read so far, in its order
	chunks  map[store.ID]v1.Descriptor

	stageMu sync.Mutex
	staging *uploads
}

// authState is one authentication: a client and the generation it is,
// so that concurrent 401s re-authenticate once.
type authState struct {
	client *http.Client
	gen    int
}

// Open returns the store at rawURL (oci://REGISTRY/REPO[@sha256:HEX]). It
// does not contact the registry: the first request authenticates and
// reads the chunk tables.
func Open(rawURL string, opt Options) (*Store, error) {
	rest, ok := strings.CutPrefix(rawURL, "oci://")
	if !ok {
		return nil, fmt.Errorf("store %s: want oci://REGISTRY/REPO[@sha256:DIGEST]", rawURL)
	}
	ref, pin, _ := strings.Cut(rest, "@")
	// The host is the registry, even one docker would take for a Docker
	// Hub user (no dot, no port).
	host, path, _ := strings.Cut(ref, "/")
	nameOpts := []name.Option{name.StrictValidation}
	if opt.Host.Scheme == "http" {
		// Lets go-containerregistry's ping fall back to HTTP.
		nameOpts = append(nameOpts, name.Insecure)
	}
	reg, err := name.NewRegistry(host, nameOpts...)
	if err == nil {
		_, err = name.NewRepository("registry.invalid/"+path, name.StrictValidation)
	}
	if err != nil || path == "" {
		return nil, fmt.Errorf("store %s: want oci://REGISTRY/REPO[@sha256:DIGEST] (%v)", rawURL, err)
	}
	repo := reg.Repo(path)
	if pin != "" {
		if _, err := v1.NewHash(pin); err != nil {
			return nil, fmt.Errorf("store %s: pinned chunk table: %w", rawURL, err)
		}
	}
	if opt.Timeout <= 0 {
		opt.Timeout = time.Minute
	}
	if opt.Parallelism <= 0 {
		opt.Parallelism = 16
	}
	if opt.PartChunks <= 0 {
		opt.PartChunks = PartChunks
	}
	var base http.RoundTripper = storetransport.New(opt.Timeout, opt.Parallelism, nil)
	if opt.Host.Transport != nil {
		base = opt.Host.Transport
	}
	if len(opt.Host.Header) > 0 {
		base = withHeader{rt: base, host: reg.RegistryStr(), header: opt.Host.Header}
	}
	return &Store{
		repo:    repo,
		pin:     pin,
		name:    rawURL,
		opt:     opt,
		scheme:  cmp.Or(opt.Host.Scheme, reg.Scheme()),
		base:    base,
		timeout: opt.Timeout,
		loadSem: make(chan struct{}, 1),
		first:   tablePart,
		chunks:  map[store.ID]v1.Descriptor{},
	}, nil
}

func (s *Store) String() string { return s.name }

// Repository returns the registry repository the store is in.
func (s *Store) Repository() name.Repository { return s.repo }

// Pinned returns the URL of the store pinned to the chunk table digest.
func (s *Store) Pinned(digest v1.Hash) string {
	return "oci://" + s.repo.Name() + "@" + digest.String()
}

// Blob returns the blob that holds chunk id.
func (s *Store) Blob(ctx context.Context, id store.ID) (v1.Descriptor, bool, error) {
	return s.lookup(ctx, id)
}

// Close waits for staged uploads to end and drops idle connections.
func (s *Store) Close() error {
	s.Abort()
	if c, ok := s.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
	return nil
}

// withHeader adds header to the requests to host that lack its fields.
type withHeader struct {
	rt     http.RoundTripper
	host   string
	header http.Header
}

func (w withHeader) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Host != w.host {
		return w.rt.RoundTrip(req) // a token server's, say
	}
	r := req.Clone(req.Context())
	for k, v := range w.header {
		if r.Header.Get(k) == "" {
			r.Header[http.CanonicalHeaderKey(k)] = v
		}
	}
	return w.rt.RoundTrip(r)
}

func (w withHeader) CloseIdleConnections() {
	if c, ok := w.rt.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// Get implements store.Store: one GET of the chunk's blob, checked
// against the blob digest.
func (s *Store) Get(ctx context.Context, id store.ID) ([]byte, error) {
	d, ok, err := s.lookup(ctx, id)
	if err != nil {
		return nil, s.fail(ctx, id, err)
	}
	if !ok {
		return nil, &store.ChunkError{ID: id, Store: s.name, Err: fmt.Errorf("%w: no chunk table of %s lists it", store.ErrNotFound, s.where())}
	}
	raw, err := s.blob(ctx, d.Digest, d.Size, maxStored, "the chunk's blob")
	if err != nil {
		return nil, s.fail(ctx, id, err)
	}
	return raw, nil
}

// blob GETs blob h, of size bytes (-1: unknown, at most limit), and
// checks it against its digest.
func (s *Store) blob(ctx context.Context, h v1.Hash, size, limit int64, what string) ([]byte, error) {
	u := s.url("/blobs/" + h.String())
	if size >= 0 {
		limit = min(size, limit)
	}
	raw, err := s.fetch(ctx, u, nil, limit, what)
	if err != nil {
		return nil, err
	}
	if size >= 0 && int64(len(raw)) != size || int64(len(raw)) > limit {
		return nil, fmt.Errorf("GET %s, %s: %d bytes or more, want %d: %w", u, what, len(raw), size, store.ErrCorrupt)
	}
	if digest(raw) != h {
		return nil, fmt.Errorf("GET %s, %s: the bytes do not match the digest: %w", u, what, store.ErrCorrupt)
	}
	return raw, nil
}

// digest returns the sha256 digest of b.
func digest(b []byte) v1.Hash {
	sum := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}

// fetch GETs url within the request timeout and returns the body: all of
// it when it has at most limit bytes, else limit+1 bytes (the caller
// decides what too long means). A status other than 200 is an error.
func (s *Store) fetch(ctx context.Context, url string, accept []string, limit int64, what string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	var h http.Header
	if len(accept) > 0 {
		h = http.Header{"Accept": {strings.Join(accept, ", ")}}
	}
	resp, err := s.do(ctx, http.MethodGet, url, h, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, s.status(resp, what)
	}
	size := limit + 1
	if resp.ContentLength >= 0 {
		size = min(size, resp.ContentLength)
	}
	body, err := readAll(resp.Body, make([]byte, 0, size), limit+1)
	if err != nil {
		return nil, fmt.Errorf("GET %s: reading %s: %w", url, what, err)
	}
	return body, nil
}

// fetchRange GETs bytes from to to (both in the blob; to < 0: all of
// it) of url within the request timeout, at most limit bytes; whole
// reports a registry that sent all of it (200: it serves no ranges). A
// registry that refuses the range says errRange.
func (s *Store) fetchRange(ctx context.Context, url string, from, to, limit int64, what string) (body []byte, whole bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	var h http.Header
	want := "all"
	if to >= 0 {
		want = fmt.Sprintf("bytes=%d-%d", from, to)
		h = http.Header{"Range": {want}}
		limit = min(limit, to-from+1)
	}
	resp, err := s.do(ctx, http.MethodGet, url, h, nil)
	if err != nil {
		return nil, false, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		whole, limit = true, maxTable
	case http.StatusPartialContent:
		var start int64
		if _, err := fmt.Sscanf(resp.Header.Get("Content-Range"), "bytes %d-", &start); err != nil || start != from || to < 0 {
			return nil, false, fmt.Errorf("GET %s, %s: Content-Range %q for %s", url, what, resp.Header.Get("Content-Range"), want)
		}
	case http.StatusRequestedRangeNotSatisfiable:
		drain(resp)
		return nil, false, errRange
	default:
		return nil, false, s.status(resp, what)
	}
	body, err = readAll(resp.Body, nil, limit+1)
	if err != nil {
		return nil, false, fmt.Errorf("GET %s: reading %s: %w", url, what, err)
	}
	if int64(len(body)) > limit {
		return nil, false, store.Permanent(fmt.Errorf("GET %s, %s: more than %d bytes", url, what, limit))
	}
	return body, whole, nil
}

// errRange is a registry's refusal of a range (some refuse one that ends
// past the blob, as go-containerregistry's does).
var errRange = errors.New("the registry refuses the range")

// readAll appends r to buf, up to limit bytes.
func readAll(r io.Reader, buf []byte, limit int64) ([]byte, error) {
	for int64(len(buf)) < limit {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):min(int64(cap(buf)), limit)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
	return buf, nil
}

// Has implements store.Store from the chunk tables: the chunks they list,
// and those this store put. It sends no request once the tables are read.
func (s *Store) Has(ctx context.Context, id store.ID) (bool, error) {
	_, ok, err := s.lookup(ctx, id)
	if err != nil {
		return false, s.fail(ctx, id, err)
	}
	return ok, nil
}

// Put implements store.Store: it uploads the chunk as a blob (POST, then
// PUT with the bytes) and remembers it for PushChunkManifest. A blob no
// chunk manifest lists is removed by the registry's garbage collector.
func (s *Store) Put(ctx context.Context, id store.ID, compressed []byte) error {
	if _, ok, err := s.lookup(ctx, id); err != nil || ok {
		return s.fail(ctx, id, err)
	}
	d, err := s.upload(ctx, compressed, ChunkMediaType)
	if err != nil {
		return s.fail(ctx, id, err)
	}
	s.mu.Lock()
	s.chunks[id] = d
	s.mu.Unlock()
	return nil
}

// where names the chunk tables the store reads, for messages.
func (s *Store) where() string {
	if s.pin != "" {
		return s.repo.Name() + "@" + s.pin
	}
	return "the tags of " + s.repo.Name()
}

// fail wraps err for chunk id; when the request's context ended, the
// error says so even if the transport put it in other words.
func (s *Store) fail(ctx context.Context, id store.ID, err error) error {
	if err == nil {
		return nil
	}
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		err = fmt.Errorf("%w: %v", cerr, err)
	}
	var ce *store.ChunkError
	if errors.As(err, &ce) {
		return err
	}
	return &store.ChunkError{ID: id, Store: s.name, Err: err}
}

// url returns the URL of path under the repository's /v2/ API.
func (s *Store) url(path string) string {
	return s.scheme + "://" + s.repo.RegistryStr() + "/v2/" + s.repo.RepositoryStr() + path
}

// client returns the authenticated client, authenticating first if no
// request has yet, or if the one that failed with a 401 used generation
// stale.
func (s *Store) client(ctx context.Context, stale int) (*authState, error) {
	s.authMu.Lock()
	defer s.authMu.Unlock()
	if s.auth != nil && s.auth.gen != stale {
		return s.auth, nil
	}
	gen := 1
	if s.auth != nil {
		gen = s.auth.gen + 1
	}
	auth, err := authn.Resolve(ctx, s.keychain(), s.repo)
	if err != nil {
		return nil, fmt.Errorf("credentials for %s: %w", s.repo.RegistryStr(), err)
	}
	// With no credentials, reads go out without go-containerregistry's
	// ping (a round trip, two on a plain HTTP registry): a registry open
	// to all answers them, one that wants a token says 401, and the next
	// generation authenticates.
	if gen == 1 && auth == authn.Anonymous && !s.opt.Push {
		s.auth = &authState{client: &http.Client{Transport: storetransport.FreshBodies(s.base)}, gen: gen}
		return s.auth, nil
	}
	scopes := []string{s.repo.Scope(transport.PullScope)}
	if s.opt.Push {
		scopes = []string{s.repo.Scope(transport.PushScope)}
	}
	tr, err := transport.NewWithContext(ctx, s.repo.Registry, auth, storetransport.FreshBodies(s.base), scopes)
	if err != nil {
		return nil, authError(s.repo.RegistryStr(), err)
	}
	s.auth = &authState{client: &http.Client{Transport: tr}, gen: gen}
	return s.auth, nil
}

// keychain is where credentials come from: the auth file, then docker's
// usual places.
func (s *Store) keychain() authn.Keychain {
	if s.opt.AuthFile == "" {
		return authn.DefaultKeychain
	}
	return authn.NewMultiKeychain(fileKeychain(s.opt.AuthFile), authn.DefaultKeychain)
}

// do sends a request through the authenticated client. A 401 re-reads the
// credentials, authenticates again and resends once: a token that expired
// or credentials that were rotated do not fail the request.
func (s *Store) do(ctx context.Context, method, url string, header http.Header, body []byte) (*http.Response, error) {
	stale := -1
	for attempt := 0; ; attempt++ {
		c, err := s.client(ctx, stale)
		if err != nil {
			return nil, err
		}
		var r io.Reader
		if body != nil {
			r = bytes.NewReader(body)
		}
		req, err := http.NewRequestWithContext(ctx, method, url, r)
		if err != nil {
			return nil, err
		}
		for k, v := range header {
			req.Header[k] = v
		}
		resp, err := c.client.Do(req)
		if err != nil {
			// The transport renews an expired token itself; with credentials
			// that no longer work the token server refuses them.
			if !refused(err) {
				return nil, err
			}
			if attempt > 0 {
				return nil, authError(s.repo.RegistryStr(), err)
			}
		} else {
			if resp.StatusCode != http.StatusUnauthorized || attempt > 0 {
				return resp, nil
			}
			drain(resp)
		}
		stale = c.gen
	}
}

// drain reads a little of a body that is not wanted and closes it, so the
// connection can be reused.
func drain(resp *http.Response) {
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}

// status turns an unexpected response into an error that names the
// request, the status, the registry's own message and what to do.
func (s *Store) status(resp *http.Response, what string) error {
	var msg struct {
		Errors []struct{ Code, Message string }
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	json.Unmarshal(b, &msg)
	detail, seen, blobUnknown := "", map[string]int{}, false
	for _, e := range msg.Errors {
		one := fmt.Sprintf(" (%s: %s)", e.Code, e.Message)
		if seen[one]++; seen[one] == 1 {
			detail += one // once: a manifest of unknown blobs gets one error a blob
		}
		blobUnknown = blobUnknown || e.Code == "MANIFEST_BLOB_UNKNOWN"
	}
	req := resp.Request
	err := fmt.Errorf("%s %s, %s: %s%s", req.Method, req.URL.Redacted(), what, resp.Status, detail)
	code := resp.StatusCode
	switch {
	case blobUnknown:
		return fmt.Errorf("%w (%v)", errBlobUnknown, err)
	case code == http.StatusNotFound || code == http.StatusGone:
		return fmt.Errorf("%w (%v)", store.ErrNotFound, err)
	case req.Method != http.MethodGet && req.Method != http.MethodHead && (code == http.StatusForbidden || code == http.StatusMethodNotAllowed):
		return fmt.Errorf("%w: %v: the registry refuses writes (read-only mode, or credentials without push access)", store.ErrReadOnly, err)
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		return store.Permanent(fmt.Errorf("%v: the registry refuses access; `docker login %s` where you convert, and on the node for its snapshotter, or mount that docker config into a container: -v ~/.docker/config.json:/.bootfs/auth.json:ro", err, s.repo.RegistryStr()))
	case code == http.StatusRequestTimeout || code == http.StatusTooManyRequests || code >= 500:
		return err // the registry may do better on another try
	}
	return store.Permanent(err)
}

// refused reports whether err is a token server's refusal.
func refused(err error) bool {
	var te *transport.Error
	return errors.As(err, &te) && (te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden)
}

// authError explains a failed authentication; refused credentials are
// a permanent error.
func authError(registry string, err error) error {
	err = fmt.Errorf("authenticating to %s: %w", registry, err)
	if refused(err) {
		return store.Permanent(fmt.Errorf("%w; check the credentials: `docker login %s` where you convert, and on the node for its snapshotter, or mount that docker config into a container: -v ~/.docker/config.json:/.bootfs/auth.json:ro", err, registry))
	}
	return err
}
