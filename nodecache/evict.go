package nodecache

import (
	"cmp"
	"context"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// Eviction. When the account says the cache is past its bound, the
// process that sees it evicts down to a batch below: shard by shard, the
// fullest first, each walked (a sixteenth of the cache: one read of the top
// directory, then its own chunk directories) and its least recently used
// chunks removed until it holds its share. IDs are hashes, so each shard
// holds a like sample of the cache's ages, and the oldest of each are about
// the oldest of all. An unused tree whose last use is older than the
// chunks a shard would lose goes first, and so does the oldest unused tree
// while trees hold more than three quarters of the bound.
//
// A chunk removed under a running container is fetched again by its next
// read: removal is one unlink, so a reader has the whole file open or
// finds none. A tree in use is never removed (see UseTree).

// evictor is one eviction pass.
type evictor struct {
	ctx     context.Context
	dir     string
	acct    *account // nil: no account (a volume too full to make one), no locks
	target  int64
	rec     record
	trees   []treeInfo // unused candidates, least recently used first
	removed int64      // bytes
}

// aSixteenth as evict's target frees a sixteenth of every shard: for a
// volume that filled up below the bound, or that has no account.
const aSixteenth = -1

// evict removes least recently used chunks and unused trees of the cache
// at dir until the account counts at most target bytes, or frees a
// sixteenth of each shard (target aSixteenth, or no account).
func evict(ctx context.Context, dir string, acct *account, target int64) (int64, error) {
	if acct == nil {
		target = aSixteenth
	}
	e := &evictor{ctx: ctx, dir: dir, acct: acct, target: target}
	var err error
	if target != aSixteenth {
		if e.rec, err = acct.read(); err != nil {
			return 0, err
		}
		if e.rec.total() <= target {
			return 0, nil
		}
	}
	trees, _ := listTrees(dir, false)
	for _, t := range trees {
		if !t.Temp {
			e.trees = append(e.trees, t)
		}
	}
	slices.SortFunc(e.trees, func(a, b treeInfo) int { return a.LastUse.Compare(b.LastUse) })
	// Trees past three quarters of the bound leave chunks too little.
	for e.rec.Trees > 3*target/4 && e.removeTrees(time.Now()) {
	}
	order := make([]int, shards)
	for s := range order {
		order[s] = s
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(e.rec.Shards[b].Bytes, e.rec.Shards[a].Bytes) })
	for _, s := range order {
		if target != aSixteenth && e.rec.total() <= target {
			break
		}
		if err := ctx.Err(); err != nil {
			return e.removed, err
		}
		var unlock func()
		if acct != nil {
			var ok bool
			if unlock, ok = acct.tryLock(shardLock + int64(s)); !ok {
				continue // another process evicts it
			}
		}
		lo := e.share
		if target == aSixteenth {
			lo = func(walked int64) int64 { return walked - walked/16 }
		}
		n, err := evictShard(ctx, dir, acct, e, s, lo)
		if unlock != nil {
			unlock()
		}
		e.removed += n
		if err != nil {
			return e.removed, err
		}
		if acct != nil && target != aSixteenth {
			if e.rec, err = acct.read(); err != nil {
				return e.removed, err
			}
		}
	}
	return e.removed, nil
}

// share is what one shard keeps when it is evicted: its sixteenth of
// what the target leaves chunks beside trees and profiles (never under a
// quarter of it), less an eighth, so that a walk frees an eighth of what it
// looks at (the pass stops once the whole is under the target, most often
// after half the shards) rather than the few chunks it is over by.
func (e *evictor) share(int64) int64 {
	s := max(e.target-e.rec.Trees-e.rec.Profiles, e.target/4) / shards
	return s - s/8
}

// removeTrees removes the least recently used unused tree last used
// before cutoff; it reports whether it removed one.
func (e *evictor) removeTrees(cutoff time.Time) bool {
	for len(e.trees) > 0 && e.trees[0].LastUse.Before(cutoff) {
		t := e.trees[0]
		e.trees = e.trees[1:]
		if ok, _ := removeTree(e.dir, t.Name); !ok {
			continue // in use
		}
		e.removed += t.Bytes
		e.rec.Trees = max(0, e.rec.Trees-t.Bytes)
		if e.acct != nil {
			e.acct.update(func(r *record) {
				r.Trees = max(0, r.Trees-t.Bytes)
				r.TreeCount = max(0, r.TreeCount-1)
			})
		}
		return true
	}
	return false
}

// evictShard walks shard s and, unless lo is nil (a recount), removes
// its least recently used chunks until it holds at most lo(its bytes). It
// sets the shard's count in the account to what the walk found, less what
// it removed, plus what others wrote meanwhile. e, when set, lends its
// trees: those older than the chunks the shard would lose go first.
func evictShard(ctx context.Context, dir string, acct *account, e *evictor, s int, lo func(int64) int64) (int64, error) {
	var before shardRec
	if acct != nil {
		r, err := acct.read()
		if err != nil {
			return 0, err
		}
		before = r.Shards[s]
	}
	if e == nil {
		e = &evictor{dir: dir}
	}
	// Listed after before was read: a chunk counted in before is in a
	// directory the walk sees, and one counted since is added back below.
	// A list made before before missed the directories writers made in
	// between, whose chunks the walk's count then dropped from the
	// account: five containers filling a 100M cache at once took it to
	// 112M.
	prefixes, err := chunkPrefixes(dir)
	if err != nil {
		return 0, err
	}
	w, err := walkChunks(ctx, dir, prefixes, func(p string) bool { return shardOf(p) == s }, true)
	if err != nil {
		return 0, err
	}
	var removed, files, newest int64
	if lo != nil {
		slices.SortFunc(w.chunks, func(a, b chunkFile) int { return cmp.Compare(a.mtime, b.mtime) })
		excess := w.bytes - lo(w.bytes)
		if excess > 0 && len(e.trees) > 0 && len(w.chunks) > 0 {
			if e.removeTrees(time.Unix(0, w.chunks[reach(w.chunks, excess)].mtime)) {
				excess = w.bytes - lo(w.bytes)
			}
		}
		emptied := map[string]bool{}
		for _, c := range w.chunks {
			if removed >= excess || ctx.Err() != nil {
				break
			}
			if removeChunk(dir, c) {
				removed += c.bytes
				files++
				newest = c.mtime
				emptied[c.prefix] = true
			}
		}
		// A directory left empty goes too: a cache that turns over would
		// otherwise fill with 65536 of them (256 MiB). A writer that made
		// it just now and loses it fails that one write.
		for p := range emptied {
			if unix.Rmdir(filepath.Join(dir, p)) == nil {
				removed += w.dirs[p]
			}
		}
	}
	if acct != nil {
		now := time.Now().Unix()
		acct.update(func(r *record) {
			sh := &r.Shards[s]
			sh.Bytes = max(0, w.bytes-removed+sh.Bytes-before.Bytes)
			sh.Files = max(0, int64(len(w.chunks))-files+sh.Files-before.Files)
			sh.CountedAt = now
			if newest > 0 {
				sh.Cutoff = newest / 1e9
			}
			if lo == nil {
				r.RecountAt = now
			}
		})
	}
	return removed, nil
}

// reach is the index of the chunk at which the oldest chunks hold n bytes.
func reach(chunks []chunkFile, n int64) int {
	var sum int64
	for i, c := range chunks {
		if sum += c.bytes; sum >= n {
			return i
		}
	}
	return len(chunks) - 1
}

// removeChunk unlinks chunk c unless it was used since the walk saw it.
func removeChunk(dir string, c chunkFile) bool {
	p := filepath.Join(dir, c.prefix, c.name)
	var st unix.Stat_t
	if unix.Lstat(p, &st) != nil || st.Mtim.Nano() != c.mtime {
		return false
	}
	return unix.Unlink(p) == nil
}
