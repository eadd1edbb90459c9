package ocistore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"

	"github.com/docker/cli/cli/config"
	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sync/errgroup"

	"github.com/mkbootfs/mkbootfs/store"
)

// manifestTypes are the manifests a chunk manifest may be found in.
var manifestTypes = []string{
	string(types.OCIManifestSchema1), string(types.OCIImageIndex),
	string(types.DockerManifestSchema2), string(types.DockerManifestList),
}

// lookup returns the blob of chunk id, reading the chunk tables first: of
// a pinned table as many parts as it takes to find id.
func (s *Store) lookup(ctx context.Context, id store.ID) (v1.Descriptor, bool, error) {
	if err := s.load(ctx, func() bool { _, ok := s.chunks[id]; return ok }); err != nil {
		return v1.Descriptor{}, false, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	d, ok := s.chunks[id]
	return d, ok, nil
}

// load reads the chunk tables until enough (called under s.mu; nil:
// never) holds or all is read: the pinned one a part at a time, or those
// of every chunk manifest the repository's tags reach. A load that fails
// is tried again by the next caller.
func (s *Store) load(ctx context.Context, enough func() bool) error {
	done := func() bool {
		s.mu.RLock()
		defer s.mu.RUnlock()
		return s.loaded || enough != nil && enough()
	}
	for !done() {
		if err := s.loadMore(ctx, done); err != nil {
			return err
		}
	}
	return nil
}

// loadMore reads the next part of the pinned chunk table, or every table
// the tags reach, unless done holds once it is this caller's turn.
func (s *Store) loadMore(ctx context.Context, done func() bool) error {
	select {
	case s.loadSem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-s.loadSem }()
	if done() {
		return nil
	}
	if s.pin != "" {
		return s.loadPinned(ctx)
	}
	l := &learner{s: s, found: map[store.ID]v1.Descriptor{}, seen: map[v1.Hash]bool{}}
	if err := l.tags(ctx); err != nil {
		return err
	}
	s.mu.Lock()
	for id, d := range l.found {
		if _, ok := s.chunks[id]; !ok {
			s.chunks[id] = d
		}
	}
	s.loaded = true
	s.mu.Unlock()
	return nil
}

// tablePart is the first part of a pinned chunk table that a store reads
// (a range request): 963 chunks, some 24 MB of data at the chunker's
// average size, where a start's reads come first.
const tablePart = 64 << 10

// loadPinned reads the next part of the pinned chunk table: the first
// s.first bytes, then as many bytes as were read before it, at least
// tablePart, up to the table's end, or all of it if the registry does
// not serve ranges. A warm start that fetches the rest of its profile's
// files finds their chunks in the part after the profile's, a few KB:
// reading the rest of the table (0.28 MB for python's image) cost each
// such start over an oci:// store a tenth of a second on a 25 Mbit/s
// link. The entries of a part are used at once, before the table can be
// checked against its digest (once whole): a chunk is checked against its
// ID all the same.
func (s *Store) loadPinned(ctx context.Context) error {
	h, _ := v1.NewHash(s.pin) // checked by Open
	u := s.url("/blobs/" + h.String())
	s.mu.RLock()
	have := s.part
	s.mu.RUnlock()
	// A table of fewer bytes than asked for is sent whole.
	from, to := int64(0), s.first-1
	if have != nil {
		n, _ := tableCount(have) // decoded before
		from = int64(len(have))
		to = min(from+max(from, tablePart), tableHeader+int64(n)*tableEntry) - 1
	}
	body, whole, err := s.fetchRange(ctx, u, from, to, maxTable, "the chunk table")
	if errors.Is(err, errRange) {
		body, whole, err = s.fetchRange(ctx, u, 0, -1, maxTable, "the chunk table")
	}
	if err != nil {
		return err
	}
	if whole {
		have = nil
	}
	table := append(have[:len(have):len(have)], body...)
	ids, blobs, size, err := decodePrefix(table)
	if err == nil && whole && int64(len(table)) != size {
		err = fmt.Errorf("%d bytes of a table of %d", len(table), size)
	}
	if err == nil && int64(len(table)) == size && digest(table) != h {
		err = fmt.Errorf("GET %s, the chunk table: the bytes do not match the digest: %w", u, store.ErrCorrupt)
		s.mu.Lock()
		s.part = nil // the next load reads it again, whole
		s.mu.Unlock()
		return err
	}
	if err != nil {
		return store.Permanent(fmt.Errorf("%s@%s: %w; pin the store to the chunk table a boot image records", s.repo.Name(), h, err))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, id := range ids {
		if _, ok := s.chunks[id]; !ok {
			s.chunks[id] = blobs[i]
		}
	}
	s.order = ids
	s.part = table
	if int64(len(table)) == size {
		s.loaded, s.part = true, nil
	}
	return nil
}

// Leading returns the first n chunks of the pinned chunk table, in its
// order (fewer if it lists fewer): those of a boot image's profile, in
// the order a start reads them, when the image says how many (see
// bootimage.LabelPrefetch). Read first, the table's first part is those n
// chunks; else they are read from the parts read, or all of it.
func (s *Store) Leading(ctx context.Context, n int) ([]store.ID, error) {
	if s.pin == "" {
		return nil, fmt.Errorf("%s: not pinned to a chunk table", s.name)
	}
	s.mu.Lock()
	if s.part == nil && !s.loaded {
		s.first = tableHeader + int64(max(n, 1))*tableEntry
	}
	s.mu.Unlock()
	if err := s.load(ctx, func() bool { return len(s.order) >= n }); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.order[:min(n, len(s.order)):min(n, len(s.order))], nil
}

// learner collects the chunks of chunk tables.
type learner struct {
	s     *Store
	mu    sync.Mutex
	found map[store.ID]v1.Descriptor
	seen  map[v1.Hash]bool // manifests and tables read or being read
}

// first reports whether manifest or table h is new to the learner.
func (l *learner) first(h v1.Hash) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.seen[h] {
		return false
	}
	l.seen[h] = true
	return true
}

// table reads the chunk table h; one it cannot decode (another
// version's, a damaged one) it skips: its chunks are only not reused.
func (l *learner) table(ctx context.Context, h v1.Hash) error {
	if !l.first(h) {
		return nil
	}
	body, err := l.s.blob(ctx, h, -1, maxTable, "the chunk table")
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrCorrupt) {
		return nil // a registry that lost it lost its chunks too: uploaded again
	}
	if err != nil {
		return err
	}
	ids, blobs, err := decodeTable(body)
	if err != nil {
		return nil // its chunks are not reused: uploaded again if needed
	}
	l.mu.Lock()
	for i, id := range ids {
		l.found[id] = blobs[i]
	}
	l.mu.Unlock()
	return nil
}

// manifest reads the chunk table of a chunk manifest; it skips one of
// another format.
func (l *learner) manifest(ctx context.Context, ref string, body []byte) error {
	var m v1.Manifest
	if err := json.Unmarshal(body, &m); err != nil {
		return fmt.Errorf("chunk manifest %s@%s: %w", l.s.repo.Name(), ref, err)
	}
	if m.ArtifactType != ChunksArtifactType || m.Config.MediaType != TableMediaType {
		return nil // another format: its chunks are not reused
	}
	return l.table(ctx, m.Config.Digest)
}

// tags reads the chunk tables of the chunk manifests every tag reaches:
// a tagged chunk manifest, or those an index lists (a boot image's).
func (l *learner) tags(ctx context.Context) error {
	tags, err := l.s.tags(ctx)
	if err != nil {
		return err
	}
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(l.s.opt.Parallelism)
	for _, tag := range tags {
		g.Go(func() error {
			body, err := l.s.manifest(ctx, tag)
			if errors.Is(err, store.ErrNotFound) {
				return nil // deleted since the listing
			}
			if err != nil {
				return err
			}
			var m struct {
				MediaType    types.MediaType `json:"mediaType"`
				ArtifactType string          `json:"artifactType"`
				Manifests    []v1.Descriptor `json:"manifests"`
			}
			if err := json.Unmarshal(body, &m); err != nil {
				return fmt.Errorf("manifest %s:%s: %w", l.s.repo.Name(), tag, err)
			}
			if !m.MediaType.IsIndex() {
				if m.ArtifactType != ChunksArtifactType {
					return nil
				}
				return l.manifest(ctx, tag, body)
			}
			for _, d := range m.Manifests {
				if d.ArtifactType != ChunksArtifactType || !l.first(d.Digest) {
					continue
				}
				body, err := l.s.manifest(ctx, d.Digest.String())
				if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrCorrupt) {
					// Deleted (distribution 2.x's collector with
					// --delete-untagged deletes a tagged index's
					// children): its chunks are not trusted, and a
					// conversion uploads them again.
					continue
				}
				if err != nil {
					return err
				}
				if err := l.manifest(ctx, d.Digest.String(), body); err != nil {
					return err
				}
			}
			return nil
		})
	}
	return g.Wait()
}

// tags lists the repository's tags; a repository that does not exist
// has none.
func (s *Store) tags(ctx context.Context) ([]string, error) {
	var all []string
	next := s.url("/tags/list?n=1000")
	for next != "" {
		var page struct {
			Tags []string `json:"tags"`
		}
		body, link, err := s.fetchPage(ctx, next)
		if errors.Is(err, store.ErrNotFound) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		if err := json.Unmarshal(body, &page); err != nil {
			return nil, fmt.Errorf("tags of %s: %w", s.repo.Name(), err)
		}
		all = append(all, page.Tags...)
		next = link
	}
	return all, nil
}

// fetchPage GETs a page of the tag list and returns it with the URL of
// the next page, from the Link header.
func (s *Store) fetchPage(ctx context.Context, u string) ([]byte, string, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	resp, err := s.do(ctx, http.MethodGet, u, nil, nil)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, "", s.status(resp, "the tag list")
	}
	body, err := readAll(resp.Body, nil, maxManifest)
	if err != nil {
		return nil, "", fmt.Errorf("GET %s: %w", u, err)
	}
	link := resp.Header.Get("Link")
	if link == "" {
		return body, "", nil
	}
	// Link: </v2/repo/tags/list?last=x&n=1000>; rel="next"
	target, _, _ := strings.Cut(strings.TrimPrefix(strings.TrimSpace(link), "<"), ">")
	next, err := resp.Request.URL.Parse(target)
	if err != nil {
		return nil, "", fmt.Errorf("GET %s: Link header %q: %w", u, link, err)
	}
	return body, next.String(), nil
}

// manifest GETs the manifest at ref, a tag or a digest; one fetched by
// digest is checked against it.
func (s *Store) manifest(ctx context.Context, ref string) ([]byte, error) {
	u := s.url("/manifests/" + url.PathEscape(ref))
	body, err := s.fetch(ctx, u, manifestTypes, maxManifest, "the manifest")
	if err != nil {
		return nil, err
	}
	if len(body) > maxManifest {
		return nil, store.Permanent(fmt.Errorf("GET %s: a manifest of more than %d bytes", u, maxManifest))
	}
	if h, err := v1.NewHash(ref); err == nil && digest(body) != h {
		return nil, fmt.Errorf("GET %s: the manifest does not match its digest: %w", u, store.ErrCorrupt)
	}
	return body, nil
}

// fileKeychain reads credentials from a docker config file each time it
// is asked, so a rotated secret is picked up on the next authentication.
type fileKeychain string

func (f fileKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	fh, err := os.Open(string(f))
	if errors.Is(err, os.ErrNotExist) {
		return authn.Anonymous, nil
	}
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	cf, err := config.LoadFromReader(fh)
	if err != nil {
		return nil, fmt.Errorf("docker config %s: %w", f, err)
	}
	for _, key := range []string{r.String(), r.RegistryStr()} {
		c, err := cf.GetAuthConfig(key)
		if err != nil {
			return nil, fmt.Errorf("docker config %s: %w", f, err)
		}
		if c.Username != "" || c.Password != "" || c.Auth != "" || c.IdentityToken != "" || c.RegistryToken != "" {
			return authn.FromConfig(authn.AuthConfig{
				Username: c.Username, Password: c.Password, Auth: c.Auth,
				IdentityToken: c.IdentityToken, RegistryToken: c.RegistryToken,
			}), nil
		}
	}
	return authn.Anonymous, nil
}
