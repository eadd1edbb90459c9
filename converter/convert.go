// Package converter turns an image or a root directory into an index and
// chunks: it flattens the layers in order (OCI whiteouts included), lays
// every regular file's data end to end in path order, cuts that stream
// into content-defined chunks, and stores each chunk the store lacks.
//
// It reads tar streams and never writes the image's entries to the host, so
// a hostile layer cannot touch it; Extract materializes an index safely.
package converter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/mkbootfs/mkbootfs/bootimage"
	"github.com/mkbootfs/mkbootfs/chunker"
	"github.com/mkbootfs/mkbootfs/imagemount"
	"github.com/mkbootfs/mkbootfs/index"
	"github.com/mkbootfs/mkbootfs/profile"
	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/ocistore"
)

// Options configure a conversion.
type Options struct {
	// Source names what to convert, in skopeo's transport syntax: a bare
	// reference (daemon when it has it, else registry), docker-daemon:REF,
	// docker-archive:PATH, oci:PATH[:TAG], dir:PATH.
	Source string
	// Store receives the chunks.
	Store store.Store
	// StoreURLs are recorded in the index for readers.
	StoreURLs []string
	// Params are the chunk size bounds; zero means chunker.DefaultParams.
	Params chunker.Params
	// Platform picks an image from a multi-platform index ("os/arch[/variant]"); empty: the host's.
	Platform string
	// Pull reads a bare reference from its registry even when the local docker daemon has it.
	Pull bool
	// TmpDir holds spooled layers; empty: os.TempDir().
	TmpDir string
	// Progress, when set, receives a self-updating progress line.
	Progress io.Writer
	// Profile, when set, lays the files a start reads first in the stream.
	Profile *profile.Profile
	// StaticProfile adds a profile found in the image without running it
	// (its command's program, interpreters, loader and libraries; see
	// package execdeps): alone if Profile is nil, else after it, for the
	// files Profile does not name.
	StaticProfile bool
}

// Stats count what a conversion did.
type Stats struct {
	Entries      int   `json:"entries"`
	Inodes       int   `json:"inodes"`
	DataBytes    int64 `json:"data_bytes"`    // the data stream, holes left out
	Chunks       int   `json:"chunks"`        // chunks in the stream
	UniqueChunks int   `json:"unique_chunks"` // distinct chunk IDs
	NewChunks    int   `json:"new_chunks"`    // chunks the store did not have
	NewBytes     int64 `json:"new_bytes"`     // compressed bytes written to the store
	// ProfileChunks and ProfileBytes are the chunks holding what the
	// profile reads, and their uncompressed size: what a boot prefetches.
	ProfileChunks int   `json:"profile_chunks,omitempty"`
	ProfileBytes  int64 `json:"profile_bytes,omitempty"`
	// StaticFiles are the files of the profile that the static profile
	// added.
	StaticFiles int `json:"static_files,omitempty"`
	// LostChunks are chunks a registry store's chunk manifests listed but
	// the registry had lost, uploaded again.
	LostChunks int `json:"lost_chunks,omitempty"`
}

// Result is a finished conversion.
type Result struct {
	Index *index.Index
	Stats Stats
	// Image is the source image's config, nil for a directory.
	Image *ImageInfo
	// Profile is the profile the stream was laid out by, or nil.
	Profile *profile.Profile
	// StaticErr says why, with Options.StaticProfile, the static profile
	// is missing or stops short; nil when it is whole or the image names
	// no command.
	StaticErr error

	// manifests list the chunks in manifestStore, a registry's store.
	manifests     *ocistore.ChunkManifests
	manifestStore *ocistore.Store
	// leading is how many chunks the chunk table lists first: the
	// profile's, in the order a start reads them (tableOrder).
	leading int
}

// tableOrder returns the chunks of x in the order a chunk table lists
// them: the profile's first, each once, in the order a start reads them
// (as a mount prefetches them), then every chunk in the stream's order;
// and how many of the profile's come first.
func tableOrder(x *index.Index, prof *profile.Profile) ([]store.ID, int) {
	var first []store.ID
	if prof != nil {
		first = imagemount.IDs(x, imagemount.RegularFiles(prof, x).Chunks(x), map[store.ID]bool{})
	}
	return append(first, chunkIDs(x.Chunks)...), len(first)
}

// chunkIDs returns the IDs of chunks.
func chunkIDs(chunks []index.Chunk) []store.ID {
	ids := make([]store.ID, len(chunks))
	for i, c := range chunks {
		ids[i] = store.ID(c.ID)
	}
	return ids
}

// Meta keys the converter records in the index.
const (
	MetaSource    = "source"
	MetaStores    = bootimage.MetaStores
	MetaChunker   = "chunker"
	MetaNewChunks = "convert.new_chunks"
	MetaNewBytes  = "convert.new_bytes"
)

// Convert converts opts.Source.
func Convert(ctx context.Context, opts Options) (*Result, error) {
	if opts.Params == (chunker.Params{}) {
		opts.Params = chunker.DefaultParams
	}
	if err := opts.Params.Validate(); err != nil {
		return nil, err
	}
	if opts.Store == nil {
		return nil, fmt.Errorf("converter: no store")
	}
	src, err := bootimage.ParseSource(opts.Source)
	if err != nil {
		return nil, err
	}
	p := newProgress(opts.Progress)
	defer p.close()

	t := newTree()
	res := &Result{}
	if src.Dir != "" {
		if err := readDir(ctx, src.Dir, t); err != nil {
			return nil, err
		}
	} else {
		img, info, err := openSource(ctx, src, opts)
		if err != nil {
			return nil, err
		}
		res.Image = info
		tmp := opts.TmpDir
		if tmp == "" {
			tmp = os.TempDir()
		}
		spools, err := flattenImage(ctx, img, t, tmp, p)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", opts.Source, err)
		}
		defer func() {
			for _, s := range spools {
				s.Close()
			}
		}()
	}

	prof := opts.Profile
	if opts.StaticProfile {
		static, err := staticProfile(t, res.Image.config())
		prof, res.Stats.StaticFiles = profile.Merge(prof, static)
		res.StaticErr = err
	}
	root, inodes, files := arrange(t, prof)
	cuts := readCuts(t, prof, int64(opts.Params.Min))
	chunks, stats, err := chunkFiles(ctx, files, cuts, opts, p)
	if err != nil {
		return nil, err
	}
	stats.StaticFiles = res.Stats.StaticFiles
	build := func() (*index.Index, error) {
		meta := map[string]string{
			MetaSource:    opts.Source,
			MetaChunker:   fmt.Sprintf("fastcdc %d/%d/%d", opts.Params.Min, opts.Params.Avg, opts.Params.Max),
			MetaNewChunks: strconv.Itoa(stats.NewChunks),
			MetaNewBytes:  strconv.FormatInt(stats.NewBytes, 10),
		}
		if len(opts.StoreURLs) > 0 {
			meta[MetaStores] = strings.Join(opts.StoreURLs, ",")
		}
		return index.Build(root, inodes, chunks, meta)
	}
	x, err := build()
	if err != nil {
		return nil, err
	}
	if oci, ok := opts.Store.(*ocistore.Store); ok {
		res.manifestStore = oci
		order, leading := tableOrder(x, prof)
		res.manifests, err = oci.PushChunkManifest(ctx, order)
		if errors.Is(err, ocistore.ErrLost) {
			// The store forgot the chunks the registry lost: chunking the
			// stream again uploads them.
			var again Stats
			if chunks, again, err = chunkFiles(ctx, files, cuts, opts, p); err != nil {
				return nil, err
			}
			stats.NewChunks += again.NewChunks
			stats.NewBytes += again.NewBytes
			stats.LostChunks = again.NewChunks
			if x, err = build(); err != nil {
				return nil, err
			}
			res.manifests, err = oci.PushChunkManifest(ctx, order)
		}
		if err != nil {
			return nil, err
		}
		res.leading = leading
	}
	stats.Entries, stats.Inodes = len(x.Entries), len(x.Inodes)
	if prof != nil {
		for _, i := range prof.Chunks(x) {
			stats.ProfileChunks++
			stats.ProfileBytes += int64(x.Chunks[i].Size)
		}
	}
	res.Index, res.Stats, res.Profile = x, stats, prof
	return res, nil
}

// arrange numbers the inodes in depth-first, name-sorted order and lays
// the regular files' data out in the stream: the profiled files first, in
// the order the profile reads them, so that a start's reads sit together;
// then the rest in the same depth-first order, so that a directory's files
// sit together and related images lay their common files out alike.
func arrange(t *tree, prof *profile.Profile) (*index.Node, []index.Inode, []*inode) {
	var inodes []index.Inode
	var files []*inode
	var visit func(n *node) *index.Node
	visit = func(n *node) *index.Node {
		ino := n.ino
		if !ino.numbered {
			ino.numbered, ino.id = true, uint32(len(inodes))
			if ino.meta.IsRegular() && ino.meta.DataLen() > 0 {
				files = append(files, ino)
			}
			inodes = append(inodes, ino.meta)
		}
		out := &index.Node{Name: n.name, Inode: ino.id}
		if n.isDir() {
			names := make([]string, 0, len(n.children))
			for name := range n.children {
				names = append(names, name)
			}
			sort.Strings(names)
			out.Children = make([]*index.Node, len(names))
			for i, name := range names {
				out.Children[i] = visit(n.children[name])
			}
		}
		return out
	}
	root := visit(t.root)
	files = profiledFirst(t, files, prof)
	var offset int64
	for _, f := range files {
		f.meta.Offset = offset
		inodes[f.id].Offset = offset
		offset += f.meta.DataLen()
	}
	return root, inodes, files
}

// profiledFirst reorders files: those of prof first, in its order, then
// the others as they were. Profiled paths the tree lacks are passed over.
func profiledFirst(t *tree, files []*inode, prof *profile.Profile) []*inode {
	if prof == nil {
		return files
	}
	first := map[*inode]bool{}
	var out []*inode
	for _, f := range prof.Files {
		n := t.lookup(strings.TrimPrefix(f.Path, "/"))
		if n == nil || first[n.ino] || !n.ino.meta.IsRegular() || n.ino.meta.DataLen() == 0 {
			continue
		}
		first[n.ino] = true
		out = append(out, n.ino)
	}
	for _, f := range files {
		if !first[f] {
			out = append(out, f)
		}
	}
	return out
}

// readCuts returns where in the data stream the profile's reads begin and
// end, after arrange placed the files: cutting chunks there keeps the bytes
// a start does not read out of the chunks it fetches. Each read is taken
// with profile.ReadAround of its file before and after it. Reads less than gap
// apart count as one, since a chunk for the gap alone would cost a request
// to save a few bytes; files read whole one after another are one read.
func readCuts(t *tree, prof *profile.Profile, gap int64) []int64 {
	if prof == nil {
		return nil
	}
	type span struct{ start, end int64 }
	var reads []span
	for _, f := range prof.Files {
		n := t.lookup(strings.TrimPrefix(f.Path, "/"))
		if n == nil || !n.ino.meta.IsRegular() {
			continue
		}
		m := &n.ino.meta
		for _, r := range f.Ranges {
			r = r.Around(m.Size)
			m.StreamSpans(r.Off, r.Len, func(start, length int64) {
				reads = append(reads, span{start, start + length})
			})
		}
	}
	sort.Slice(reads, func(i, j int) bool { return reads[i].start < reads[j].start })
	var cuts []int64
	for i := 0; i < len(reads); {
		cur := reads[i]
		for i++; i < len(reads) && reads[i].start-cur.end < gap; i++ {
			cur.end = max(cur.end, reads[i].end)
		}
		cuts = append(cuts, cur.start, cur.end)
	}
	return cuts
}

// stager is a store that can defer making puts durable to one Commit.
type stager interface {
	Stage(ctx context.Context, id store.ID, compressed []byte) error
	Commit(ctx context.Context) error
	Abort()
}

// chunkFiles streams the files' data through the chunker and stores the
// chunks the store lacks: cutting runs on one goroutine, hashing,
// compressing and writing on all cores. The chunks of the profile's reads
// (between cuts[2i] and cuts[2i+1]), which every start fetches, are
// compressed smallest.
func chunkFiles(ctx context.Context, files []*inode, cuts []int64, opts Options, p *progress) ([]index.Chunk, Stats, error) {
	var stats Stats
	stream := &streamReader{files: files}
	defer stream.close()
	ck, err := chunker.New(stream, opts.Params)
	if err != nil {
		return nil, stats, err
	}
	ck.CutAt(cuts...)
	st, staged := opts.Store.(stager)
	put := opts.Store.Put
	if staged {
		put = st.Stage
	}
	// A chunk found present is touched, so that a garbage collection of
	// the store running now keeps it until the index names it.
	has := opts.Store.Has
	keeper, keeps := opts.Store.(store.Keeper)
	if keeps {
		has = keeper.Keep
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	type job struct {
		data     []byte
		slot     *index.Chunk
		profiled bool // in one of the profile's reads: compressed smallest
	}
	jobs := make(chan job, 4*runtime.GOMAXPROCS(0))
	var (
		mu   sync.Mutex
		seen = map[store.ID]bool{}
		wg   sync.WaitGroup
	)
	worker := func() {
		defer wg.Done()
		for j := range jobs {
			id := store.Sum(j.data)
			*j.slot = index.Chunk{ID: id, Size: uint32(len(j.data))}
			mu.Lock()
			dup := seen[id]
			seen[id] = true
			mu.Unlock()
			if dup || ctx.Err() != nil {
				continue
			}
			have, err := has(ctx, id)
			if err != nil {
				cancel(err)
				continue
			}
			if have {
				continue
			}
			encode := store.Encode
			if j.profiled {
				encode = store.EncodeSmallest
			}
			raw := encode(j.data)
			if err := put(ctx, id, raw); err != nil {
				cancel(err)
				continue
			}
			mu.Lock()
			stats.NewChunks++
			stats.NewBytes += int64(len(raw))
			mu.Unlock()
			p.written.Add(1)
		}
	}
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go worker()
	}
	var slots []*index.Chunk
	var readErr error
	var off int64 // of the chunk in the stream
	read := 0     // cuts[read], cuts[read+1]: the first of the profile's reads not behind off
	for ctx.Err() == nil {
		data, err := ck.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			readErr = err
			break
		}
		for read+1 < len(cuts) && cuts[read+1] <= off {
			read += 2
		}
		profiled := read+1 < len(cuts) && cuts[read] <= off
		off += int64(len(data))
		slot := &index.Chunk{}
		slots = append(slots, slot)
		p.bytes.Add(int64(len(data)))
		p.chunks.Add(1)
		select {
		case jobs <- job{data, slot, profiled}:
		case <-ctx.Done():
		}
	}
	close(jobs)
	wg.Wait()
	if readErr == nil {
		readErr = context.Cause(ctx)
	}
	if readErr != nil {
		if staged {
			st.Abort()
		}
		return nil, stats, readErr
	}
	if staged {
		if err := st.Commit(ctx); err != nil {
			return nil, stats, err
		}
	}
	if keeps {
		if err := keepAll(ctx, keeper, opts.Store.String(), seen); err != nil {
			return nil, stats, err
		}
	}
	chunks := make([]index.Chunk, len(slots))
	for i, s := range slots {
		chunks[i] = *s
		stats.DataBytes += int64(s.Size)
	}
	stats.Chunks, stats.UniqueChunks = len(chunks), len(seen)
	return chunks, stats, nil
}

// keepAll touches every chunk of a conversion once more, after the last
// was written: a garbage collection spares them for its grace period
// again, and a chunk that one removed under a conversion that outlasted
// the grace period fails the conversion instead of going missing from
// its index.
func keepAll(ctx context.Context, k store.Keeper, name string, ids map[store.ID]bool) error {
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(runtime.GOMAXPROCS(0))
	for id := range ids {
		g.Go(func() error {
			ok, err := k.Keep(ctx, id)
			if err == nil && !ok {
				err = &store.ChunkError{ID: id, Store: name, Err: fmt.Errorf("%w: %w", store.ErrNotFound, store.ErrCollected)}
			}
			return err
		})
	}
	return g.Wait()
}

// streamReader is the data stream: every file's data runs, end to end.
type streamReader struct {
	files []*inode
	cur   readerCloser
	left  int64 // bytes still expected from cur
}

func (s *streamReader) Read(p []byte) (int, error) {
	for {
		if s.cur == nil {
			if len(s.files) == 0 {
				return 0, io.EOF
			}
			f := s.files[0]
			r, err := f.src.open()
			if err != nil {
				return 0, err
			}
			s.cur, s.left = r, f.meta.DataLen()
		}
		q := p
		if int64(len(q)) > s.left {
			q = q[:s.left]
		}
		n, err := s.cur.Read(q)
		s.left -= int64(n)
		if err == io.EOF || (err == nil && s.left == 0) {
			if s.left != 0 {
				return n, fmt.Errorf("file data ended %d bytes early", s.left)
			}
			s.cur.Close()
			s.cur, s.files = nil, s.files[1:]
			err = nil
		}
		if n > 0 || err != nil {
			return n, err
		}
	}
}

func (s *streamReader) close() {
	if s.cur != nil {
		s.cur.Close()
	}
}
