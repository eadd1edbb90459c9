package local

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/store"
)

// graveSuffix ends the name a chunk takes while GC decides whether to
// remove it; casync's layout, and so every reader, ignores it.
const graveSuffix = ".gc"

// gcParallelism is how many chunk directories GC reads or sweeps at once:
// enough to keep a disk's queue busy, few enough for a small machine.
const gcParallelism = 8

// Root is an index that a collection keeps: every chunk it names stays.
type Root struct {
	Name   string // the index or boot image, for messages
	Chunks []store.ID
}

// GCOptions configure GC.
type GCOptions struct {
	// KeepNewer keeps every chunk used within this long before the
	// collection started, whatever references it: a conversion running
	// now writes chunks, or finds them present (store.Keeper), before
	// an index names them.
	KeepNewer time.Duration
	// DryRun counts what would be removed and removes nothing.
	DryRun bool

	afterScan func() // a test's, called between the scan and the sweep
}

// GCStats count what a collection found and did. Bytes are the sizes of
// the chunk files, as stored (compressed).
type GCStats struct {
	Chunks          int   `json:"chunks"` // chunk files found
	Bytes           int64 `json:"bytes"`
	Referenced      int   `json:"referenced"` // kept: an index names them
	ReferencedBytes int64 `json:"referenced_bytes"`
	Recent          int   `json:"recent"` // kept: no index names them, used within KeepNewer
	RecentBytes     int64 `json:"recent_bytes"`
	Removed         int   `json:"removed"` // removed, or would be with DryRun
	RemovedBytes    int64 `json:"removed_bytes"`
	Missing         int   `json:"missing"`       // named by an index, not in the store
	Temps           int   `json:"temps_removed"` // temporary files of writers that died, removed
	Foreign         int   `json:"foreign"`       // files that are not chunks, left alone
	DryRun          bool  `json:"dry_run,omitempty"`
}

// found is a file of the store that a collection may remove.
type found struct {
	path  string
	id    store.ID
	size  int64
	mtime time.Time
	kind  int
}

// Kinds of found files.
const (
	chunkFile = iota
	tempFile  // a writer's, see writeTemp
	graveFile // a chunk a collection renamed and did not finish with
)

// GC removes every chunk that no root names and that was not used within
// opt.KeepNewer, and the temporary files of writers older than that. It
// reads the whole store before it removes anything, and removes nothing
// when a root has chunks and none of them is in the store (the wrong
// store, or the wrong indexes). Files that are not in casync's layout are
// left alone and counted.
//
// A conversion into the store that runs at the same time and ends within
// KeepNewer is never broken: its new chunks are younger than that, and
// those it found present it touched (Keep). A chunk is removed by renaming
// it away first, then checking its time on the renamed file: a touch that
// came before the rename is seen and the chunk is put back, and one that
// came after finds no chunk (Keep looks again after touching).
func (s *Store) GC(ctx context.Context, roots []Root, opt GCOptions) (GCStats, error) {
	st := GCStats{DryRun: opt.DryRun}
	cutoff := time.Now().Add(-opt.KeepNewer)
	if !opt.DryRun {
		if err := unix.Access(s.dir, unix.W_OK); err != nil {
			return st, fmt.Errorf("store %s: %w; nothing was removed", s.dir, hint(err))
		}
	}
	files, foreign, err := s.scan(ctx)
	if err != nil {
		return st, err
	}
	st.Foreign = foreign
	present := make(map[store.ID]bool, len(files))
	for _, f := range files {
		if f.kind != tempFile {
			present[f.id] = true
		}
	}
	live := map[store.ID]bool{}
	for _, r := range roots {
		have := 0
		for _, id := range r.Chunks {
			if present[id] {
				have++
			}
			live[id] = true
		}
		if len(r.Chunks) > 0 && have == 0 {
			return st, fmt.Errorf("store %s holds none of the %d chunks of %s: is it that image's store? nothing was removed", s.dir, len(r.Chunks), r.Name)
		}
	}
	for id := range live {
		if !present[id] {
			st.Missing++
		}
	}

	// doomed are the files to remove, and the graves of chunks to put back.
	var doomed []found
	for _, f := range files {
		old := f.mtime.Before(cutoff)
		if f.kind == tempFile {
			if old {
				st.Temps++
				doomed = append(doomed, f)
			}
			continue
		}
		st.Chunks++
		st.Bytes += f.size
		switch {
		case live[f.id]:
			st.Referenced++
			st.ReferencedBytes += f.size
		case !old:
			st.Recent++
			st.RecentBytes += f.size
		default:
			st.Removed++
			st.RemovedBytes += f.size
		}
		if f.kind == graveFile || !live[f.id] && old {
			doomed = append(doomed, f)
		}
	}
	if opt.DryRun {
		return st, nil
	}
	if opt.afterScan != nil {
		opt.afterScan()
	}
	return s.sweep(ctx, doomed, live, cutoff, st)
}

// sweep removes the doomed files, and puts back the graves of chunks to
// keep. st counts what it removed; a chunk used while it ran moves to
// Recent.
func (s *Store) sweep(ctx context.Context, doomed []found, live map[store.ID]bool, cutoff time.Time, st GCStats) (GCStats, error) {
	var mu sync.Mutex
	st.Removed, st.RemovedBytes = 0, 0
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(gcParallelism)
	for _, f := range doomed {
		g.Go(func() error {
			if err := ctx.Err(); err != nil {
				return err
			}
			spared, removed := false, false
			var err error
			switch {
			case f.kind == tempFile:
				err = os.Remove(f.path)
				if errors.Is(err, fs.ErrNotExist) {
					err = nil // committed or removed meanwhile
				}
			case f.kind == graveFile && (live[f.id] || !f.mtime.Before(cutoff)):
				err = s.restore(f.path, s.Path(f.id))
			case f.kind == graveFile:
				err = os.Remove(f.path)
				removed = err == nil
			default:
				spared, err = s.collect(f, cutoff)
				removed = err == nil && !spared
			}
			if err != nil {
				return fmt.Errorf("store %s: %w", s.dir, hint(err))
			}
			mu.Lock()
			defer mu.Unlock()
			if removed {
				st.Removed++
				st.RemovedBytes += f.size
			}
			if spared {
				st.Recent++
				st.RecentBytes += f.size
			}
			return nil
		})
	}
	err := g.Wait()
	return st, err
}

// collect removes one chunk unless it was used since cutoff, and reports
// whether it spared it. It renames the chunk away, then reads its time: a
// writer's Keep either touched it before the rename, and the chunk is put
// back, or finds it gone.
func (s *Store) collect(f found, cutoff time.Time) (spared bool, err error) {
	var rnd [8]byte
	rand.Read(rnd[:])
	grave := f.path + "." + hex.EncodeToString(rnd[:]) + graveSuffix
	if err := os.Rename(f.path, grave); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil // removed meanwhile
		}
		return false, err
	}
	fi, err := os.Lstat(grave)
	if err != nil {
		return false, err
	}
	if !fi.ModTime().Before(cutoff) {
		return true, s.restore(grave, f.path)
	}
	return false, os.Remove(grave)
}

// restore puts a renamed chunk back under its name; when a writer put the
// chunk again meanwhile, that copy stays and the renamed one goes.
func (s *Store) restore(grave, path string) error {
	err := unix.Renameat2(unix.AT_FDCWD, grave, unix.AT_FDCWD, path, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EEXIST) {
		return os.Remove(grave)
	}
	if err != nil {
		return &os.LinkError{Op: "rename", Old: grave, New: path, Err: err}
	}
	return nil
}

// scan lists the chunks, temporary files and graves of the store, and
// counts the other files.
func (s *Store) scan(ctx context.Context) ([]found, int, error) {
	top, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, 0, fmt.Errorf("store %s: %w", s.dir, err)
	}
	var shards []string
	var others []string
	for _, e := range top {
		if e.IsDir() && isShard(e.Name()) {
			shards = append(shards, e.Name())
		} else {
			others = append(others, e.Name())
		}
	}
	if len(shards) == 0 && len(others) > 0 {
		return nil, 0, fmt.Errorf("store %s is not a chunk store: it holds %d files and no chunk directory (XXXX/ID.cacnk), the first %q; give the store's directory. Nothing was removed", s.dir, len(others), others[0])
	}
	var (
		mu      sync.Mutex
		files   []found
		foreign = len(others)
	)
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(gcParallelism)
	for _, shard := range shards {
		g.Go(func() error {
			if err := ctx.Err(); err != nil {
				return err
			}
			got, n, err := s.scanShard(shard)
			mu.Lock()
			defer mu.Unlock()
			files = append(files, got...)
			foreign += n
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, 0, err
	}
	return files, foreign, nil
}

// scanShard lists one chunk directory.
func (s *Store) scanShard(shard string) ([]found, int, error) {
	dir := filepath.Join(s.dir, shard)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, 0, fmt.Errorf("store %s: %w", s.dir, err)
	}
	var files []found
	foreign := 0
	for _, e := range entries {
		f, ok := parseName(shard, e.Name())
		if ok && (e.Type().IsRegular() || e.Type() == fs.ModeSymlink) {
			fi, err := e.Info()
			if errors.Is(err, fs.ErrNotExist) {
				continue // removed meanwhile
			}
			if err != nil {
				return nil, 0, fmt.Errorf("store %s: %w", s.dir, err)
			}
			f.path, f.size, f.mtime = filepath.Join(dir, e.Name()), fi.Size(), fi.ModTime()
			files = append(files, f)
			continue
		}
		foreign++
	}
	return files, foreign, nil
}

// parseName recognizes the names a chunk directory holds: ID.cacnk,
// ID.cacnk.RANDOM.tmp and ID.cacnk.RANDOM.gc, with ID under its shard.
func parseName(shard, name string) (found, bool) {
	var f found
	if len(name) < 64+len(".cacnk") || !strings.HasPrefix(name, shard) {
		return f, false
	}
	id, err := store.ParseID(name[:64])
	if err != nil || id.String() != name[:64] {
		return f, false // upper case is not where Get looks
	}
	f.id = id
	rest, ok := strings.CutPrefix(name[64:], ".cacnk")
	if !ok {
		return f, false
	}
	if rest == "" {
		return f, true
	}
	rnd, ok := strings.CutPrefix(rest, ".")
	switch {
	case !ok:
		return f, false
	case strings.HasSuffix(rnd, tmpSuffix) && isHex(strings.TrimSuffix(rnd, tmpSuffix)):
		f.kind = tempFile
	case strings.HasSuffix(rnd, graveSuffix) && isHex(strings.TrimSuffix(rnd, graveSuffix)):
		f.kind = graveFile
	default:
		return f, false
	}
	return f, true
}

// isShard reports whether name is a chunk directory's: 4 lowercase hex digits.
func isShard(name string) bool { return len(name) == 4 && isHex(name) }

func isHex(s string) bool {
	for _, c := range []byte(s) {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return s != ""
}
