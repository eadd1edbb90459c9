package ocistore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sync/errgroup"

	"github.com/mkbootfs/mkbootfs/store"
)

// upload pushes data as a blob: POST opens an upload, PUT sends the
// bytes and names the digest (two requests; a registry that has the blob
// already takes it again).
func (s *Store) upload(ctx context.Context, data []byte, mediaType types.MediaType) (v1.Descriptor, error) {
	d := v1.Descriptor{MediaType: mediaType, Size: int64(len(data)), Digest: digest(data)}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	resp, err := s.do(ctx, http.MethodPost, s.url("/blobs/uploads/"), nil, nil)
	if err != nil {
		return d, err
	}
	if resp.StatusCode != http.StatusAccepted {
		defer resp.Body.Close()
		return d, s.status(resp, "opening a blob upload")
	}
	drain(resp)
	loc, err := resp.Request.URL.Parse(resp.Header.Get("Location"))
	if err != nil || resp.Header.Get("Location") == "" {
		return d, fmt.Errorf("POST %s: the registry gave no upload location %q (%v)", resp.Request.URL, resp.Header.Get("Location"), err)
	}
	q := loc.Query()
	q.Set("digest", d.Digest.String())
	loc.RawQuery = q.Encode()
	resp, err = s.do(ctx, http.MethodPut, loc.String(), http.Header{"Content-Type": {"application/octet-stream"}}, data)
	if err != nil {
		return d, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return d, s.status(resp, "uploading a blob")
	}
	drain(resp)
	return d, nil
}

// uploads are the uploads Stage started and Commit waits for.
type uploads struct {
	g      *errgroup.Group
	ctx    context.Context
	cancel context.CancelFunc
}

// Stage starts uploading a chunk and returns; at most Parallelism uploads
// run at once, so Stage waits for one to end when that many are running.
// Commit waits for them all. The converter uses it so that uploads, which
// wait on the network, overlap with each other and with compression.
func (s *Store) Stage(ctx context.Context, id store.ID, compressed []byte) error {
	s.stageMu.Lock()
	if s.staging == nil {
		ctx, cancel := context.WithCancel(ctx)
		g, ctx := errgroup.WithContext(ctx)
		g.SetLimit(s.opt.Parallelism)
		s.staging = &uploads{g: g, ctx: ctx, cancel: cancel}
	}
	u := s.staging
	s.stageMu.Unlock()
	if err := u.ctx.Err(); err != nil {
		return s.fail(ctx, id, fmt.Errorf("an earlier upload failed: %w", context.Cause(u.ctx)))
	}
	u.g.Go(func() error { return s.Put(u.ctx, id, compressed) })
	return nil
}

// Commit waits for the staged uploads and returns the first error.
func (s *Store) Commit(ctx context.Context) error {
	s.stageMu.Lock()
	u := s.staging
	s.staging = nil
	s.stageMu.Unlock()
	if u == nil {
		return nil
	}
	done := make(chan error, 1)
	go func() { done <- u.g.Wait() }()
	select {
	case err := <-done:
		u.cancel()
		return err
	case <-ctx.Done():
		u.cancel()
		<-done
		return ctx.Err()
	}
}

// Abort stops the staged uploads and waits for them to end. The blobs
// already uploaded stay until the registry's garbage collector removes
// them, since no chunk manifest lists them.
func (s *Store) Abort() {
	s.stageMu.Lock()
	u := s.staging
	s.staging = nil
	s.stageMu.Unlock()
	if u != nil {
		u.cancel()
		u.g.Wait()
	}
}

// ErrLost is wrapped by PushChunkManifest's error when the registry lacks
// chunks that the repository's chunk tables list (their blobs were deleted
// through its API, or lost from its storage). The store has forgotten
// them: putting them again (a conversion into the store again) and
// pushing again repairs the repository.
var ErrLost = errors.New("the registry lost chunks that its chunk manifests list")

// errBlobUnknown is wrapped by the error of a manifest push that the
// registry refused for a blob it does not have.
var errBlobUnknown = errors.New("a blob the manifest lists is unknown to the registry")

// ChunkManifests record the chunks of one image in a repository.
type ChunkManifests struct {
	// Table is the chunk table: a reader pinned to it (Pinned) reads the
	// image's chunks.
	Table v1.Descriptor
	// Parts are the chunk manifests: what an index lists, or a tag
	// reaches (TagChunkManifests), keeps the table and chunks from the
	// registry's garbage collector.
	Parts []v1.Descriptor
}

// PushChunkManifest records ids, the chunks of one image in the order it
// reads them, in a chunk table and chunk manifests of the repository.
// Every chunk must be one the repository's chunk tables list or one this
// store put. Until a tag reaches the manifests, the registry's garbage
// collector may remove them.
func (s *Store) PushChunkManifest(ctx context.Context, ids []store.ID) (*ChunkManifests, error) {
	if err := s.load(ctx, nil); err != nil {
		return nil, fmt.Errorf("%s: %w", s.name, err)
	}
	var uniq []store.ID
	var layers []v1.Descriptor
	seen := make(map[store.ID]bool, len(ids))
	s.mu.RLock()
	for _, id := range ids {
		if seen[id] {
			continue
		}
		seen[id] = true
		d, ok := s.chunks[id]
		if !ok {
			s.mu.RUnlock()
			return nil, fmt.Errorf("%s: chunk %s is in no chunk table of the repository and was not put: %w", s.name, id.Short(), store.ErrNotFound)
		}
		uniq, layers = append(uniq, id), append(layers, d)
	}
	s.mu.RUnlock()
	table, err := s.upload(ctx, encodeTable(uniq, layers), TableMediaType)
	if err != nil {
		return nil, fmt.Errorf("%s: the chunk table: %w", s.name, err)
	}
	cm := &ChunkManifests{Table: table}
	per := s.opt.PartChunks
	for i := 0; i == 0 || i < len(layers); i += per {
		m := v1.Manifest{
			SchemaVersion: 2,
			MediaType:     types.OCIManifestSchema1,
			ArtifactType:  ChunksArtifactType,
			Config:        table,
			Layers:        append([]v1.Descriptor{}, layers[i:min(len(layers), i+per)]...),
		}
		body, err := json.Marshal(m)
		if err != nil {
			return nil, err
		}
		d := v1.Descriptor{MediaType: types.OCIManifestSchema1, Size: int64(len(body)), Digest: digest(body), ArtifactType: ChunksArtifactType}
		err = s.putManifest(ctx, d.Digest.String(), d.MediaType, body)
		if errors.Is(err, errBlobUnknown) {
			err = s.forgetLost(ctx, uniq[i:min(len(layers), i+per)], m.Layers, err)
		}
		if err != nil {
			return nil, err
		}
		cm.Parts = append(cm.Parts, d)
	}
	return cm, nil
}

// forgetLost asks the registry for each chunk blob of a chunk manifest it
// refused (refused), and forgets the chunks it lacks, so that Has reports
// them missing and Put uploads them again. It returns an error wrapping
// ErrLost, or refused when the registry has every chunk.
func (s *Store) forgetLost(ctx context.Context, ids []store.ID, blobs []v1.Descriptor, refused error) error {
	lost := make([]bool, len(ids))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(s.opt.Parallelism)
	for i, d := range blobs {
		g.Go(func() error {
			ok, err := s.hasBlob(gctx, d.Digest)
			lost[i] = err == nil && !ok
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("%w; then asking which chunks it lacks: %w", refused, err)
	}
	n := 0
	s.mu.Lock()
	for i, id := range ids {
		if lost[i] {
			delete(s.chunks, id)
			n++
		}
	}
	s.mu.Unlock()
	if n == 0 {
		return refused
	}
	return fmt.Errorf("%s: %w: %d of the image's chunks; they are forgotten, so that putting them again repairs the repository", s.name, ErrLost, n)
}

// hasBlob reports whether the repository serves blob h (HEAD).
func (s *Store) hasBlob(ctx context.Context, h v1.Hash) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	resp, err := s.do(ctx, http.MethodHead, s.url("/blobs/"+h.String()), nil, nil)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		return true, nil
	case http.StatusNotFound:
		return false, nil
	}
	return false, s.status(resp, "a chunk's blob")
}

// TagChunkManifests tags an index of the chunk manifests cm, so that the
// registry's garbage collector keeps their chunks when no boot image index
// in the repository lists them (a boot image written elsewhere).
func (s *Store) TagChunkManifests(ctx context.Context, tag string, cm *ChunkManifests) error {
	idx := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, ArtifactType: ChunksArtifactType, Manifests: cm.Parts}
	body, err := json.Marshal(idx)
	if err != nil {
		return err
	}
	return s.putManifest(ctx, tag, idx.MediaType, body)
}

// putManifest PUTs a manifest under ref, a digest or a tag.
func (s *Store) putManifest(ctx context.Context, ref string, mediaType types.MediaType, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	resp, err := s.do(ctx, http.MethodPut, s.url("/manifests/"+ref), http.Header{"Content-Type": {string(mediaType)}}, body)
	if err != nil {
		return fmt.Errorf("%s: pushing manifest %s: %w", s.name, ref, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("%s: %w", s.name, s.status(resp, "pushing a chunk manifest"))
	}
	drain(resp)
	return nil
}
