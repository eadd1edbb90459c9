package nodecache

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// PruneOptions say what Prune removes.
type PruneOptions struct {
	// MaxSize is what the cache may hold after: chunks and unused trees go,
	// least recently used first, until it holds at most this.
	MaxSize int64
	// MaxAge, if set, also removes trees and profiles unused this long.
	MaxAge time.Duration
}

// Pruned is what Prune did.
type Pruned struct {
	Dir          string   `json:"dir"`
	Before       int64    `json:"before_bytes"`
	After        int64    `json:"after_bytes"`
	Chunks       Count    `json:"chunks_removed"`
	Trees        []string `json:"trees_removed"`
	TreeBytes    int64    `json:"tree_bytes_removed"`
	Profiles     []string `json:"profiles_removed"`
	InUse        []string `json:"trees_kept_in_use"` // would have gone, but a running container uses them
	StaleTemps   int      `json:"stale_temps_removed"`
	Foreign      Count    `json:"foreign_left"`
	ProfileBytes int64    `json:"profile_bytes_removed"`
}

// pruneLockWait bounds how long Prune waits for an evictor of the cache to
// finish a shard.
const pruneLockWait = 30 * time.Second

// Prune removes from the cache at dir, least recently used first, chunks
// and trees that no running container uses, until it holds at most
// opt.MaxSize; and with opt.MaxAge, trees and profiles unused that long.
// It walks the whole cache, so its order is exact; it leaves foreign files
// alone, and the size account exact. It works on a full volume.
func Prune(ctx context.Context, dir string, opt PruneOptions) (*Pruned, error) {
	if err := checkCache(dir); err != nil {
		return nil, err
	}
	if err := unix.Access(dir, unix.W_OK); err != nil {
		return nil, fmt.Errorf("cache %s: %w: prune removes files; run it where the cache is writable", dir, err)
	}
	acct, err := openAccount(dir)
	if err == nil { // none on a volume too full to make it: no evictor runs there either
		defer acct.Close()
		for _, at := range append([]int64{sweepLock}, shardLocks()...) {
			if err := acct.lock(unix.F_WRLCK, at, 1, pruneLockWait); err != nil {
				return nil, fmt.Errorf("cache %s: another process has been evicting it for %v (%w); try again", dir, pruneLockWait, err)
			}
		}
	}
	p := &Pruned{Dir: dir, Trees: []string{}, Profiles: []string{}, InUse: []string{}} // [] in JSON, not null
	now := time.Now()

	trees, err := listTrees(dir, true)
	if err != nil {
		return nil, fmt.Errorf("cache %s: trees: %w", dir, err)
	}
	var live []treeInfo
	for _, t := range trees {
		p.Before += t.Bytes
		switch {
		case t.Temp && (now.Sub(t.LastUse) > staleTemp || strings.HasPrefix(t.Name, trashPrefix)):
			if os.RemoveAll(filepath.Join(dir, treesDir, t.Name)) == nil {
				p.TreeBytes += t.Bytes
			}
		case t.Temp:
		case opt.MaxAge > 0 && now.Sub(t.LastUse) > opt.MaxAge:
			if p.removeTree(dir, t) {
				continue
			}
			live = append(live, t)
		default:
			live = append(live, t)
		}
	}
	profiles, profileCount, profilesBefore := p.pruneProfiles(dir, now, opt.MaxAge)
	p.Before += profilesBefore

	prefixes, err := chunkPrefixes(dir)
	if err != nil {
		return nil, fmt.Errorf("cache %s: %w", dir, err)
	}
	w, err := walkChunks(ctx, dir, prefixes, func(string) bool { return true }, true)
	if err != nil {
		return nil, err
	}
	p.StaleTemps += w.staleTemps
	p.Foreign = Count{Files: w.foreign, Bytes: w.foreignBytes}
	p.Before += w.bytes
	total := w.bytes + profiles
	for _, t := range live {
		total += t.Bytes
	}

	// One order for chunks and trees: last use.
	type victim struct {
		at    int64
		chunk *chunkFile
		tree  *treeInfo
	}
	var vs []victim
	for i := range w.chunks {
		vs = append(vs, victim{at: w.chunks[i].mtime, chunk: &w.chunks[i]})
	}
	for i := range live {
		vs = append(vs, victim{at: live[i].LastUse.UnixNano(), tree: &live[i]})
	}
	slices.SortFunc(vs, func(a, b victim) int { return cmp.Compare(a.at, b.at) })
	var shardBytes, shardFiles [shards]int64
	for _, c := range w.chunks {
		shardBytes[shardOf(c.prefix)] += c.bytes
		shardFiles[shardOf(c.prefix)]++
	}
	for p, b := range w.dirs {
		shardBytes[shardOf(p)] += b
	}
	emptied := map[string]bool{}
	for _, v := range vs {
		if total <= opt.MaxSize || ctx.Err() != nil {
			break
		}
		if v.tree != nil {
			if p.removeTree(dir, *v.tree) {
				total -= v.tree.Bytes
				v.tree.Bytes = -1 // gone
			}
			continue
		}
		if removeChunk(dir, *v.chunk) {
			total -= v.chunk.bytes
			s := shardOf(v.chunk.prefix)
			shardBytes[s] -= v.chunk.bytes
			shardFiles[s]--
			p.Chunks.Files++
			p.Chunks.Bytes += v.chunk.bytes
			emptied[v.chunk.prefix] = true
		}
	}
	for pr := range emptied {
		if unix.Rmdir(filepath.Join(dir, pr)) == nil {
			total -= w.dirs[pr]
			shardBytes[shardOf(pr)] -= w.dirs[pr]
			p.Chunks.Bytes += w.dirs[pr]
		}
	}
	p.After = total
	if acct != nil {
		var treeBytes, treeCount int64
		for _, t := range live {
			if t.Bytes >= 0 {
				treeBytes += t.Bytes
				treeCount++
			}
		}
		acct.update(func(r *record) {
			for s := range shards {
				r.Shards[s] = shardRec{Bytes: shardBytes[s], Files: shardFiles[s], CountedAt: now.Unix(), Cutoff: r.Shards[s].Cutoff}
			}
			r.Trees, r.TreeCount = treeBytes, treeCount
			r.Profiles, r.ProfileCount = profiles, profileCount
			r.SweptAt, r.RecountAt = now.Unix(), now.Unix()
		})
	}
	return p, ctx.Err()
}

func shardLocks() []int64 {
	l := make([]int64, shards)
	for s := range l {
		l[s] = shardLock + int64(s)
	}
	return l
}

// removeTree removes tree t unless it is in use, and notes which.
func (p *Pruned) removeTree(dir string, t treeInfo) bool {
	ok, err := removeTree(dir, t.Name)
	if ok {
		p.Trees = append(p.Trees, t.Name)
		p.TreeBytes += t.Bytes
		return err == nil || errors.Is(err, os.ErrNotExist)
	}
	if err == nil {
		p.InUse = append(p.InUse, t.Name)
	}
	return false
}

// pruneProfiles removes the profiles unused for maxAge (none when 0), and
// the temporary ones killed starts left; it returns the bytes and count of
// those left, and the bytes of all before.
func (p *Pruned) pruneProfiles(dir string, now time.Time, maxAge time.Duration) (left, count, before int64) {
	ps, temp, stale, _ := listProfiles(dir, true, now)
	p.StaleTemps += stale
	removed, kept := removeProfiles(dir, ps, now, maxAge)
	for _, r := range removed {
		p.Profiles = append(p.Profiles, r.name)
	}
	p.ProfileBytes = profileBytes(removed)
	left = profileBytes(kept) + temp.Bytes
	return left, int64(len(kept)), left + p.ProfileBytes
}
