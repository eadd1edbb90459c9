package nodecache

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/local"
	"github.com/mkbootfs/mkbootfs/store/storetest"
)

// chunkSize is the test chunks' size: a casync average chunk.
const chunkSize = 48 << 10

// remoteWith makes a store in dir holding n chunks (seeds from..from+n).
func remoteWith(t testing.TB, dir string, from, n int) []store.ID {
	t.Helper()
	l, err := local.Open(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ids := make([]store.ID, n)
	for i := range ids {
		if ids[i], _, err = store.Save(context.Background(), l, storetest.Chunk(uint64(from+i), chunkSize)); err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

// cached fills the cache at dir with n chunks, read through it, and
// returns their IDs.
func cached(t testing.TB, dir string, n int) []store.ID {
	t.Helper()
	remoteDir := t.TempDir()
	ids := remoteWith(t, remoteDir, 0, n)
	c, err := Open(dir, openRemote(t, remoteDir), Options{MaxSize: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if _, err := store.Load(context.Background(), c, id); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	return ids
}

func openRemote(t testing.TB, dir string) store.Store {
	t.Helper()
	l, err := local.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// onDisk is what the cache's chunk directories hold, walked.
func onDisk(t testing.TB, dir string) walked {
	t.Helper()
	prefixes, err := chunkPrefixes(dir)
	if err != nil {
		t.Fatal(err)
	}
	w, err := walkChunks(context.Background(), dir, prefixes, func(string) bool { return true }, false)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// checkChunks verifies every chunk file in the cache (none is half
// written or half removed) and counts its foreign files.
func checkChunks(t testing.TB, dir string, foreign int64) int {
	t.Helper()
	w := onDisk(t, dir)
	for _, c := range w.chunks {
		id, err := store.ParseID(strings.TrimSuffix(c.name, ".cacnk"))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(dir, c.prefix, c.name))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := store.DecodeInPlace(id, b); err != nil {
			t.Errorf("chunk file %s: %v", c.name, err)
		}
	}
	if w.foreign != foreign {
		t.Errorf("the cache holds %d foreign files, want %d", w.foreign, foreign)
	}
	return len(w.chunks)
}

func readAccount(t testing.TB, dir string) record {
	t.Helper()
	a, err := openAccount(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	r, err := a.read()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// The account counts what the cache writes, and a recount agrees.
func TestAccountCounts(t *testing.T) {
	dir := t.TempDir()
	ids := cached(t, dir, 40)
	r := readAccount(t, dir)
	w := onDisk(t, dir)
	var chunkBytes int64
	for _, c := range w.chunks {
		chunkBytes += c.bytes
	}
	got, files := r.chunks()
	if files != int64(len(ids)) || got != w.bytes {
		t.Fatalf("account: %d chunks, %d bytes; on disk %d chunks, %d bytes (and %d of directories)", files, got, len(w.chunks), chunkBytes, w.bytes-chunkBytes)
	}
	a, _ := openAccount(dir)
	defer a.Close()
	for s := range shards {
		if _, err := evictShard(context.Background(), dir, a, nil, s, nil); err != nil {
			t.Fatal(err)
		}
	}
	r, _ = a.read()
	if got, files := r.chunks(); files != int64(len(ids)) || got != w.bytes {
		t.Fatalf("recounted: %d chunks, %d bytes; walked %d, %d", files, got, len(w.chunks), w.bytes)
	}
}

// Past its bound the cache evicts in the background while it is read:
// it never holds more than a batch past the bound, every read returns the
// right bytes, and no chunk file is ever half there.
func TestBound(t *testing.T) {
	const bound = 16 << 20
	remoteDir, dir := t.TempDir(), t.TempDir()
	ids := remoteWith(t, remoteDir, 0, 700) // 33 MiB
	c, err := Open(dir, openRemote(t, remoteDir), Options{MaxSize: bound})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var peak int64
	for round := range 2 {
		for i, id := range ids {
			got, err := store.Load(context.Background(), c, id)
			if err != nil || store.Sum(got) != id {
				t.Fatalf("round %d, chunk %d: %v", round, i, err)
			}
			time.Sleep(time.Millisecond) // a fetch takes a while
			if i%10 == 0 {
				peak = max(peak, onDisk(t, dir).bytes)
			}
		}
	}
	if peak > bound+bound/16+2*chunkSize { // a batch, and the writes under way
		t.Errorf("the cache held %d bytes, more than a batch past its bound %d", peak, bound)
	}
	if peak < bound*3/4 {
		t.Errorf("the cache held at most %d bytes under a bound of %d: it evicts too much", peak, bound)
	}
	st := c.Stats()
	// Writes the evictor has not made room for yet are not kept (the test
	// fetches at 48 MB/s, faster than a loaded machine's evictor frees a
	// 16 MiB cache); most are.
	if st.Misses < int64(len(ids)) || st.WriteErrors > st.Misses/2 {
		t.Errorf("stats %+v: more than half the chunks fetched were not kept", st)
	}
	c.Close()
	checkChunks(t, dir, 0)
	t.Logf("peak %d bytes under a bound of %d; %d chunks fetched, %d not kept", peak, bound, st.Misses, st.WriteErrors)
}

// Eviction removes the least recently used first: by shard, the oldest,
// and so, over the shards, mostly the oldest of all.
func TestEvictOldestFirst(t *testing.T) {
	dir := t.TempDir()
	ids := cached(t, dir, 256)
	// Chunk i was last used i minutes after the first.
	base := time.Now().Add(-24 * time.Hour)
	l, _ := local.Open(dir, false)
	age := map[string]int{}
	for i, id := range ids {
		mt := base.Add(time.Duration(i) * time.Minute)
		os.Chtimes(l.Path(id), mt, mt)
		age[filepath.Base(l.Path(id))] = i
	}
	before := onDisk(t, dir).bytes
	a, _ := openAccount(dir)
	defer a.Close()
	for s := range shards {
		evictShard(context.Background(), dir, a, nil, s, nil)
	}
	if _, err := evict(context.Background(), dir, a, before/2); err != nil {
		t.Fatal(err)
	}
	w := onDisk(t, dir)
	if w.bytes > before/2 {
		t.Fatalf("evict to %d left %d bytes", before/2, w.bytes)
	}
	kept := map[int]bool{}
	for _, c := range w.chunks {
		kept[age[c.name]] = true
	}
	oldHalfKept, newHalfKept := 0, 0
	for i := range ids {
		if kept[i] {
			if i < len(ids)/2 {
				oldHalfKept++
			} else {
				newHalfKept++
			}
		}
	}
	if oldHalfKept > len(ids)/8 || newHalfKept < len(ids)/2-len(ids)/8 {
		t.Fatalf("kept %d of the older half and %d of the newer: not the least recently used first", oldHalfKept, newHalfKept)
	}
	t.Logf("kept %d of the older half, %d of the newer", oldHalfKept, newHalfKept)
}

// A read of a chunk that was not used for a while touches it; a read of
// one used lately does not.
func TestTouchOnRead(t *testing.T) {
	remoteDir, dir := t.TempDir(), t.TempDir()
	ids := remoteWith(t, remoteDir, 0, 2)
	c, err := Open(dir, openRemote(t, remoteDir), Options{MaxSize: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	for _, id := range ids {
		store.Load(ctx, c, id)
	}
	l, _ := local.Open(dir, false)
	waitFile(t, l.Path(ids[0]))
	waitFile(t, l.Path(ids[1]))
	old := time.Now().Add(-2 * time.Hour)
	lately := time.Now().Add(-10 * time.Second).Truncate(time.Second)
	os.Chtimes(l.Path(ids[0]), old, old)
	os.Chtimes(l.Path(ids[1]), lately, lately)
	for _, id := range ids {
		if _, err := store.Load(ctx, c, id); err != nil {
			t.Fatal(err)
		}
	}
	if fi, err := os.Stat(l.Path(ids[0])); err != nil || time.Since(fi.ModTime()) > time.Minute {
		t.Errorf("a chunk unused for 2 h was read and not touched: %v", err)
	}
	if fi, err := os.Stat(l.Path(ids[1])); err != nil || !fi.ModTime().Equal(lately) {
		t.Errorf("a chunk used 10 s ago was touched again: %v", err)
	}
}

func waitFile(t testing.TB, p string) {
	t.Helper()
	for range 500 {
		if _, err := os.Stat(p); err == nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s never appeared", p)
}

// loaderEnv runs TestHelperLoader: "cache-dir remote-dir bound seed".
const loaderEnv = "NODECACHE_LOADER"

// TestHelperLoader reads chunks through a bounded cache when run by
// TestProcessesEvict in a child process; otherwise it does nothing.
func TestHelperLoader(t *testing.T) {
	args := strings.Fields(os.Getenv(loaderEnv))
	if len(args) != 4 {
		return
	}
	bound, _ := strconv.ParseInt(args[2], 10, 64)
	seed, _ := strconv.ParseUint(args[3], 10, 64)
	l, _ := local.Open(args[1], false)
	var ids []store.ID
	l.Walk(func(id store.ID) error { ids = append(ids, id); return nil })
	slices.SortFunc(ids, func(a, b store.ID) int { return bytes.Compare(a[:], b[:]) })
	c, err := Open(args[0], l, Options{MaxSize: bound})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, 0))
	for range 3 * len(ids) {
		id := ids[rng.IntN(len(ids))]
		got, err := store.Load(context.Background(), c, id)
		if err != nil || store.Sum(got) != id {
			t.Fatalf("Load %s: %v", id.Short(), err)
		}
	}
	c.Close()
	json.NewEncoder(os.Stdout).Encode(c.Stats())
}

// Processes that share a cache evict it at once while they read: every
// read is right, no chunk file is half there, the bound holds, and the
// account agrees with the disk.
func TestProcessesEvict(t *testing.T) {
	const bound, procs = 8 << 20, 4
	remoteDir, dir := t.TempDir(), t.TempDir()
	remoteWith(t, remoteDir, 0, 400) // 19 MiB
	var wg sync.WaitGroup
	var peak atomic.Int64
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-time.After(5 * time.Millisecond):
			}
			prefixes, _ := chunkPrefixes(dir)
			w, _ := walkChunks(context.Background(), dir, prefixes, func(string) bool { return true }, false)
			if w.bytes > peak.Load() {
				peak.Store(w.bytes)
			}
		}
	}()
	for p := range procs {
		wg.Go(func() {
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperLoader$", "-test.count=1")
			cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %s %d %d", loaderEnv, dir, remoteDir, bound, p))
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Errorf("loader %d: %v\n%s", p, err, out)
			}
		})
	}
	wg.Wait()
	close(done)
	n := checkChunks(t, dir, 0)
	w := onDisk(t, dir)
	r := readAccount(t, dir)
	got, _ := r.chunks()
	if d := got - w.bytes; d < -w.bytes/8 || d > w.bytes/8 {
		t.Errorf("the account counts %d bytes, the disk holds %d", got, w.bytes)
	}
	if p := peak.Load(); p > bound+bound/16+procs*3*chunkSize { // a batch, and each process's fetch and two writes under way
		t.Errorf("the cache held up to %d bytes under a bound of %d", p, bound)
	}
	t.Logf("%d chunks, %d bytes left; peak %d; account %d", n, w.bytes, peak.Load(), got)
}
