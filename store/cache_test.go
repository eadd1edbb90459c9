package store_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/local"
)

// countingRemote is a remote store that counts Gets, can be slowed down
// (so that fetches overlap) and can be told to fail.
type countingRemote struct {
	store.Store
	delay time.Duration
	gets  atomic.Int64
	fail  atomic.Value // error to return from Get, or nil
}

func (r *countingRemote) Get(ctx context.Context, id store.ID) ([]byte, error) {
	r.gets.Add(1)
	if err, _ := r.fail.Load().(error); err != nil {
		return nil, err
	}
	if r.delay > 0 {
		time.Sleep(r.delay)
	}
	return r.Store.Get(ctx, id)
}

// cacheChunks fills a local store in dir with n random chunks.
func cacheChunks(t testing.TB, dir string, n int) []store.ID {
	t.Helper()
	s, err := local.Open(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, uint64(n)))
	ids := make([]store.ID, n)
	for i := range ids {
		data := make([]byte, 1000+rng.IntN(64<<10))
		for j := range data {
			data[j] = byte(rng.IntN(16)) // compressible, like files
		}
		if ids[i], _, err = store.Save(context.Background(), s, data); err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

func openCache(t testing.TB, cacheDir string, remote store.Store) *store.Cache {
	t.Helper()
	l, err := local.Open(cacheDir, true)
	if err != nil {
		t.Fatal(err)
	}
	c, err := store.NewCache(l, remote)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func openRemote(t testing.TB, dir string, delay time.Duration) *countingRemote {
	t.Helper()
	s, err := local.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	return &countingRemote{Store: s, delay: delay}
}

func TestCacheLoad(t *testing.T) {
	ctx := context.Background()
	remoteDir := t.TempDir()
	ids := cacheChunks(t, remoteDir, 2)
	id := ids[0]
	want, err := store.Load(ctx, openRemote(t, remoteDir, 0), id)
	if err != nil {
		t.Fatal(err)
	}
	cachePath := func(dir string) string {
		h := id.String()
		return filepath.Join(dir, h[:4], h+".cacnk")
	}
	for _, tc := range []struct {
		name    string
		setup   func(t *testing.T, cacheDir string, r *countingRemote)
		wantErr error // nil: the load succeeds
		gets    int64 // remote Gets for two loads
		stats   store.CacheStats
	}{
		{
			name:  "miss then hit",
			gets:  1,
			stats: store.CacheStats{Hits: 1, Misses: 1},
		},
		{
			name: "already cached",
			setup: func(t *testing.T, cacheDir string, r *countingRemote) {
				raw, _ := r.Store.Get(ctx, id)
				os.MkdirAll(filepath.Dir(cachePath(cacheDir)), 0o755)
				os.WriteFile(cachePath(cacheDir), raw, 0o644)
			},
			stats: store.CacheStats{Hits: 2},
		},
		{
			name: "corrupt cache entry is replaced",
			setup: func(t *testing.T, cacheDir string, r *countingRemote) {
				os.MkdirAll(filepath.Dir(cachePath(cacheDir)), 0o755)
				os.WriteFile(cachePath(cacheDir), []byte("torn by a crash"), 0o644)
			},
			gets:  1,
			stats: store.CacheStats{Hits: 1, Misses: 1, Repaired: 1},
		},
		{
			name: "empty cache entry is replaced",
			setup: func(t *testing.T, cacheDir string, r *countingRemote) {
				os.MkdirAll(filepath.Dir(cachePath(cacheDir)), 0o755)
				os.WriteFile(cachePath(cacheDir), nil, 0o644)
			},
			gets:  1,
			stats: store.CacheStats{Hits: 1, Misses: 1, Repaired: 1},
		},
		{
			name: "missing in the remote",
			setup: func(t *testing.T, cacheDir string, r *countingRemote) {
				r.fail.Store(fmt.Errorf("remote: %w", store.ErrNotFound))
			},
			wantErr: store.ErrNotFound,
			gets:    2,
			stats:   store.CacheStats{FetchErrors: 2},
		},
		{
			name: "corrupt in the remote is never cached",
			setup: func(t *testing.T, cacheDir string, r *countingRemote) {
				raw, _ := r.Store.Get(ctx, ids[1])
				r.Store.Put(ctx, id, raw) // another chunk's bytes under id
			},
			wantErr: store.ErrCorrupt,
			gets:    2,
			stats:   store.CacheStats{FetchErrors: 2},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Each case gets its own copy of the remote, as it may damage it.
			rdir := t.TempDir()
			copyDir(t, remoteDir, rdir)
			r := openRemote(t, rdir, 0)
			cacheDir := t.TempDir()
			if tc.setup != nil {
				tc.setup(t, cacheDir, r)
			}
			c := openCache(t, cacheDir, r)
			for range 2 {
				got, err := store.Load(ctx, c, id)
				if tc.wantErr != nil {
					var ce *store.ChunkError
					if !errors.Is(err, tc.wantErr) || !errors.As(err, &ce) || ce.ID != id {
						t.Fatalf("Load = %v, want a ChunkError for %s wrapping %v", err, id.Short(), tc.wantErr)
					}
					if _, err := os.Stat(cachePath(cacheDir)); err == nil {
						t.Fatal("a chunk that failed to load is in the cache")
					}
					continue
				}
				if err != nil || !bytes.Equal(got, want) {
					t.Fatalf("Load = %d bytes, %v; want the chunk", len(got), err)
				}
			}
			if got := r.gets.Load(); got != tc.gets {
				t.Errorf("remote Gets = %d, want %d", got, tc.gets)
			}
			st := c.Stats()
			st.FetchedBytes = 0
			if st != tc.stats {
				t.Errorf("stats = %+v, want %+v", st, tc.stats)
			}
			// A fetched chunk is kept uncompressed, so no start decompresses it.
			if tc.stats.Misses > 0 {
				c.Close() // waits for the write
				if kept, err := os.ReadFile(cachePath(cacheDir)); err != nil || !bytes.Equal(kept, store.EncodeRaw(want)) {
					t.Errorf("the cache keeps %d bytes (%v), want the chunk's raw frame", len(kept), err)
				}
			}
		})
	}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", from+"/.", to).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
}

func TestCacheGetHasPut(t *testing.T) {
	ctx := context.Background()
	remoteDir := t.TempDir()
	ids := cacheChunks(t, remoteDir, 1)
	r := openRemote(t, remoteDir, 0)
	c := openCache(t, t.TempDir(), r)

	raw, err := c.Get(ctx, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Decode(ids[0], raw); err != nil {
		t.Fatalf("Get returned bytes that do not decode: %v", err)
	}
	if _, err := c.Get(ctx, ids[0]); err != nil || r.gets.Load() != 1 {
		t.Fatalf("second Get: %v, %d remote gets; want a hit", err, r.gets.Load())
	}

	data := []byte("a chunk put through the cache")
	id, isNew, err := store.Save(ctx, c, data)
	if err != nil || !isNew {
		t.Fatalf("Save = %v, %v", isNew, err)
	}
	if ok, _ := r.Has(ctx, id); !ok {
		t.Fatal("Put did not reach the remote")
	}
	if got, err := store.Load(ctx, c, id); err != nil || !bytes.Equal(got, data) || r.gets.Load() != 1 {
		t.Fatalf("Load after Put = %q, %v (%d remote gets); want it from the cache", got, err, r.gets.Load())
	}
}

// TestCacheRace has many goroutines load the same chunks at once: each
// chunk is fetched once, and every caller gets its own copy.
func TestCacheRace(t *testing.T) {
	remoteDir := t.TempDir()
	ids := cacheChunks(t, remoteDir, 16)
	r := openRemote(t, remoteDir, 2*time.Millisecond)
	c := openCache(t, t.TempDir(), r)

	var wg sync.WaitGroup
	for g := range 32 {
		wg.Go(func() {
			for i := range ids {
				id := ids[(i+g)%len(ids)]
				data, err := store.Load(context.Background(), c, id)
				if err != nil {
					t.Error(err)
					return
				}
				if store.Sum(data) != id {
					t.Error("bad data")
				}
				clear(data) // callers own their copy
			}
		})
	}
	wg.Wait()
	if got := r.gets.Load(); got != int64(len(ids)) {
		t.Errorf("remote Gets = %d for %d chunks, want one each", got, len(ids))
	}
}

func TestCacheTimeout(t *testing.T) {
	remoteDir := t.TempDir()
	ids := cacheChunks(t, remoteDir, 1)
	r := openRemote(t, remoteDir, time.Second)
	c := openCache(t, t.TempDir(), r)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := store.Load(ctx, c, ids[0]); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Load = %v, want a deadline error", err)
	}
}

// childEnv names the cache and remote a re-executed test binary works on.
const childEnv = "MKBOOTFS_CACHE_TEST_CHILD"

type childReport struct {
	Gets  int64
	Stats store.CacheStats
	Err   string
}

// TestMain lets TestCacheProcesses re-execute the test binary as a second
// process sharing the cache directory.
func TestMain(m *testing.M) {
	if arg := os.Getenv(childEnv); arg != "" {
		var dirs [2]string
		json.Unmarshal([]byte(arg), &dirs)
		json.NewEncoder(os.Stdout).Encode(cacheChild(dirs[0], dirs[1]))
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// cacheChild loads every chunk of the remote through the cache, from 8
// goroutines, in an order of its own.
func cacheChild(remoteDir, cacheDir string) (rep childReport) {
	rs, err := local.Open(remoteDir, false)
	if err != nil {
		return childReport{Err: err.Error()}
	}
	r := &countingRemote{Store: rs, delay: 3 * time.Millisecond}
	l, err := local.Open(cacheDir, true)
	if err != nil {
		return childReport{Err: err.Error()}
	}
	c, err := store.NewCache(l, r)
	if err != nil {
		return childReport{Err: err.Error()}
	}
	defer c.Close()
	var ids []store.ID
	rs.Walk(func(id store.ID) error { ids = append(ids, id); return nil })
	rand.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		next int
	)
	for range 8 {
		wg.Go(func() {
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= len(ids) {
					return
				}
				if _, err := store.Load(context.Background(), c, ids[i]); err != nil {
					mu.Lock()
					rep.Err = err.Error()
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	rep.Gets, rep.Stats = r.gets.Load(), c.Stats()
	return rep
}

// TestCacheProcesses runs two processes that load the same chunks through
// one cache directory at once: together they fetch each chunk once.
func TestCacheProcesses(t *testing.T) {
	remoteDir, cacheDir := t.TempDir(), t.TempDir()
	ids := cacheChunks(t, remoteDir, 64)
	arg, _ := json.Marshal([2]string{remoteDir, cacheDir})
	var cmds [2]*exec.Cmd
	var outs [2]bytes.Buffer
	for i := range cmds {
		cmds[i] = exec.Command(os.Args[0], "-test.run=^$")
		cmds[i].Env = append(os.Environ(), childEnv+"="+string(arg))
		cmds[i].Stdout, cmds[i].Stderr = &outs[i], os.Stderr
		if err := cmds[i].Start(); err != nil {
			t.Fatal(err)
		}
	}
	var gets, hits int64
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("child %d: %v", i, err)
		}
		var rep childReport
		if err := json.Unmarshal(outs[i].Bytes(), &rep); err != nil || rep.Err != "" {
			t.Fatalf("child %d: %q, %v", i, outs[i].String(), err)
		}
		t.Logf("child %d: %d remote gets, %+v", i, rep.Gets, rep.Stats)
		gets += rep.Gets
		hits += rep.Stats.Hits
	}
	if gets != int64(len(ids)) {
		t.Errorf("the two processes fetched %d times for %d chunks, want once each", gets, len(ids))
	}
	if hits != int64(len(ids)) {
		t.Errorf("the two processes hit the cache %d times for %d chunks, want once each", hits, len(ids))
	}
}

// syncedDir makes a cache directory fsync every chunk, to measure what
// PutNoSync saves.
type syncedDir struct{ *local.Store }

func (d syncedDir) PutNoSync(ctx context.Context, id store.ID, b []byte) error {
	return d.Put(ctx, id, b)
}

// BenchmarkCacheFill fills empty caches from a local remote, with and
// without an fsync per chunk, and reports both and their ratio: the numbers
// behind PutNoSync.
func BenchmarkCacheFill(b *testing.B) {
	remoteDir := b.TempDir()
	ids := cacheChunks(b, remoteDir, 256)
	fill := func(synced bool) time.Duration {
		l, err := local.Open(b.TempDir(), true)
		if err != nil {
			b.Fatal(err)
		}
		var d store.CacheDir = l
		if synced {
			d = syncedDir{l}
		}
		c, err := store.NewCache(d, openRemote(b, remoteDir, 0))
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		start := time.Now()
		for _, id := range ids {
			if _, err := store.Load(context.Background(), c, id); err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(start)
	}
	var nosync, synced time.Duration
	for b.Loop() {
		nosync += fill(false)
		synced += fill(true)
	}
	per := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(b.N*len(ids)) }
	b.ReportMetric(per(nosync), "µs/chunk-nosync")
	b.ReportMetric(per(synced), "µs/chunk-fsync")
	b.ReportMetric(float64(synced)/float64(nosync), "fsync/nosync")
}

// TestCacheFetch fetches chunks into the cache without reading them: once
// each, however often asked, and then Load finds them there.
func TestCacheFetch(t *testing.T) {
	ctx := context.Background()
	remoteDir := t.TempDir()
	ids := cacheChunks(t, remoteDir, 3)
	r := openRemote(t, remoteDir, 0)
	c := openCache(t, t.TempDir(), r)
	for range 2 {
		for _, id := range ids {
			if err := c.Fetch(ctx, id); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n := r.gets.Load(); n != 3 {
		t.Errorf("fetching 3 chunks twice made %d remote gets, want 3", n)
	}
	for _, id := range ids {
		if _, err := store.Load(ctx, c, id); err != nil {
			t.Fatal(err)
		}
	}
	if st := c.Stats(); st.Misses != 3 || st.Hits != 3 || r.gets.Load() != 3 {
		t.Errorf("loads after fetches: %+v, %d remote gets; want 3 hits", st, r.gets.Load())
	}
	r.fail.Store(errors.New("remote down"))
	missing := store.Sum([]byte("not in the remote"))
	if err := c.Fetch(ctx, missing); err == nil {
		t.Error("fetching from a failing remote succeeded")
	}
}

// hungRemote answers no Get: each blocks until its context ends or, when
// deaf, until the test ends, as a store that stopped (SIGSTOP) would.
type hungRemote struct {
	store.Store
	deaf    bool
	started chan struct{} // gets a value as each Get starts
	end     chan struct{}
}

func (r *hungRemote) Get(ctx context.Context, id store.ID) ([]byte, error) {
	r.started <- struct{}{}
	if r.deaf {
		<-r.end
		return nil, errors.New("too late")
	}
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-r.end:
		return nil, errors.New("too late")
	}
}

// Close does not wait for fetches from a hung store: they fail as
// cancelled, are not counted as store errors, and leave no file; a chunk
// fetched before is still written.
func TestCacheCloseHungStore(t *testing.T) {
	for _, deaf := range []bool{false, true} {
		t.Run(fmt.Sprintf("deaf=%v", deaf), func(t *testing.T) {
			remoteDir, cacheDir := t.TempDir(), t.TempDir()
			ids := cacheChunks(t, remoteDir, 2)
			r := openRemote(t, remoteDir, 0)
			hung := &hungRemote{Store: r, deaf: deaf, started: make(chan struct{}, 1), end: make(chan struct{})}
			defer close(hung.end)
			l, err := local.Open(cacheDir, true)
			if err != nil {
				t.Fatal(err)
			}
			c, err := store.NewCache(l, &switchable{Store: r, to: hung, after: 1})
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			if _, err := store.Load(ctx, c, ids[0]); err != nil {
				t.Fatal(err)
			}
			const deadline = time.Minute // lazyfs's is 30 s
			lctx, cancel := context.WithTimeout(ctx, deadline)
			defer cancel()
			loaded := make(chan error, 1)
			go func() { _, err := store.Load(lctx, c, ids[1]); loaded <- err }()
			<-hung.started
			start := time.Now()
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			if took := time.Since(start); took > deadline/4 {
				t.Fatalf("Close took %v: it waited for the hung fetch", took)
			}
			if err := <-loaded; !errors.Is(err, context.Canceled) {
				t.Fatalf("the hung Load = %v, want cancelled", err)
			}
			if n := c.Stats().FetchErrors; n != 0 {
				t.Errorf("FetchErrors = %d; a fetch that Close cancelled is no store error", n)
			}
			var files []string
			filepath.WalkDir(cacheDir, func(p string, d os.DirEntry, err error) error {
				if err == nil && !d.IsDir() {
					files = append(files, filepath.Base(p))
				}
				return nil
			})
			want := []string{".mkbootfs-cache.lock", ids[0].String() + ".cacnk"}
			if fmt.Sprint(files) != fmt.Sprint(want) {
				t.Fatalf("the cache holds %v, want %v: the chunk fetched before Close, nothing of the hung one", files, want)
			}
		})
	}
}

// A fetch under way when the cache closes, whose caller has given up (the
// prefetch of a start whose app exited), ends and is kept: the next start
// does not fetch the chunk again.
func TestCacheCloseKeepsFetchUnderWay(t *testing.T) {
	remoteDir, cacheDir := t.TempDir(), t.TempDir()
	ids := cacheChunks(t, remoteDir, 1)
	slow := &gatedRemote{Store: openRemote(t, remoteDir, 0), started: make(chan struct{}), release: make(chan struct{})}
	l, err := local.Open(cacheDir, true)
	if err != nil {
		t.Fatal(err)
	}
	c, err := store.NewCache(l, slow)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	fetched := make(chan error, 1)
	go func() { fetched <- c.Fetch(ctx, ids[0]) }()
	<-slow.started
	cancel()
	if err := <-fetched; !errors.Is(err, context.Canceled) {
		t.Fatalf("Fetch with its context cancelled = %v, want cancelled", err)
	}
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	time.Sleep(5 * time.Millisecond) // the chunk's last bytes come in as the cache closes
	close(slow.release)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if ok, err := l.Has(context.Background(), ids[0]); err != nil || !ok {
		t.Fatalf("the chunk under way at Close is not in the cache (%v, %v)", ok, err)
	}
	if c.Stats().Misses != 1 {
		t.Fatalf("stats %+v: want the fetch counted", c.Stats())
	}
}

// gatedRemote's Gets wait for release, or end as cancelled, as over a
// network.
type gatedRemote struct {
	store.Store
	started, release chan struct{}
}

func (r *gatedRemote) Get(ctx context.Context, id store.ID) ([]byte, error) {
	close(r.started)
	select {
	case <-r.release:
		return r.Store.Get(ctx, id)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// switchable is a store that serves its first after Gets itself, then
// passes them to another.
type switchable struct {
	store.Store
	to    store.Store
	after int64
	n     atomic.Int64
}

func (s *switchable) Get(ctx context.Context, id store.ID) ([]byte, error) {
	if s.n.Add(1) > s.after {
		return s.to.Get(ctx, id)
	}
	return s.Store.Get(ctx, id)
}
