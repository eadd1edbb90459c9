package snapshotter

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mkbootfs/mkbootfs/bootimage"
	"github.com/mkbootfs/mkbootfs/imagemount"
	"github.com/mkbootfs/mkbootfs/index"
	"github.com/mkbootfs/mkbootfs/internal/atomicfile"
	"github.com/mkbootfs/mkbootfs/lazyfs"
	"github.com/mkbootfs/mkbootfs/profile"
	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/location"
)

// A boot snapshot's directory, snapshots/ID as containerd's overlayfs
// snapshotter made it, holds besides its fs/ (the marker that tells
// bootinit its root is mounted) the lazy mount and the state of the
// process that serves it:
//
//	lazy/                  the image's tree, a FUSE mount
//	mkbootfs/layer.tar     the boot image's own layer, uncompressed: index, boot config, profile
//	mkbootfs/mount.json    what the mount process needs besides (mountConfig)
//	mkbootfs/pid           the mount process's pid
//	mkbootfs/mount.log     its log, at most maxLog bytes
//	mkbootfs/stats.sock    its counters, as JSON over HTTP (mountStats)
const (
	lazyDir     = "lazy"
	stateDir    = "mkbootfs"
	layerFile   = "layer.tar"
	configFile  = "mount.json"
	pidFile     = "pid"
	logFile     = "mount.log"
	statsSocket = "stats.sock"
	maxLog      = 1 << 20
)

// Mount process bounds.
const (
	// storeCheck bounds the fetch of the image's first chunk, which fails
	// a mount whose stores cannot serve it before a container reads it.
	storeCheck = 20 * time.Second
)

// mountConfig is what a mount process is told, in mkbootfs/mount.json.
type mountConfig struct {
	Image       string        `json:"image"`                   // the boot image, for messages
	Cache       string        `json:"cache"`                   // the node cache directory
	CacheSize   int64         `json:"cache_size,omitempty"`    // its bound; 0: nodecache's default
	CacheMaxAge time.Duration `json:"cache_max_age,omitempty"` // how long it keeps trees and profiles unused; 0: nodecache's default
	HostsDir    string        `json:"hosts_dir,omitempty"`     // containerd's hosts configuration, for oci:// stores
}

// ServeMount is the mount process of the boot snapshot at dir
// (`mkbootfs snapshotter mount DIR`): it mounts the image's tree lazily at
// dir/lazy and serves it until it is unmounted, or until SIGTERM, when it
// unmounts it (detaching it, should a file still be open there). It runs
// in a session of its own, so that the mounts outlive the daemon that
// started them: a restarted daemon takes them back. status, when not nil,
// gets "ok" once the tree is mounted, or the one line that says why not.
func ServeMount(dir string, status *os.File) error {
	err := serveMount(dir, status)
	if status != nil {
		if err != nil {
			fmt.Fprintln(status, err)
		}
		status.Close()
	}
	return err
}

func serveMount(dir string, status *os.File) error {
	started := time.Now()
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(lazyfs.MemoryLimit)
	}
	state := filepath.Join(dir, stateDir)
	logw, err := openLog(filepath.Join(state, logFile))
	if err != nil {
		return err
	}
	defer logw.Close()
	logger := log.New(logw, "", log.LstdFlags)
	if err := atomicfile.Write(filepath.Join(state, pidFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return err
	}
	var cfg mountConfig
	if b, err := os.ReadFile(filepath.Join(state, configFile)); err != nil {
		return err
	} else if err := json.Unmarshal(b, &cfg); err != nil {
		return fmt.Errorf("%s: %w", filepath.Join(state, configFile), err)
	}
	b, err := readLayer(filepath.Join(state, layerFile), cfg.Image)
	if err != nil {
		return fmt.Errorf("%w; push the boot image again, or convert it again", err)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	m, err := mountImage(b, filepath.Join(dir, lazyDir), cfg, logger)
	if err != nil {
		logger.Print(err)
		return err
	}
	defer m.close()
	logger.Printf("mounted %s (%d entries) at %s from %s in %v", cfg.Image, len(b.Index.Entries), m.srv.Dir(), m.st, time.Since(started).Round(time.Millisecond))
	stats, err := serveStats(filepath.Join(state, statsSocket), m)
	if err != nil {
		m.srv.Unmount()
		return err
	}
	defer stats.Close()
	if status != nil {
		fmt.Fprintln(status, "ok")
		status.Close()
		status = nil
	}
	done := make(chan struct{})
	go func() { m.srv.Wait(); close(done) }()
	select {
	case <-done: // unmounted from outside
	case s := <-sigs:
		logger.Printf("%v: unmounting %s", s, m.srv.Dir())
		if err := m.srv.Unmount(); err != nil {
			logger.Print(err)
		}
		<-done
	}
	logger.Printf("unmounted %s", m.srv.Dir())
	return nil
}

// readLayer reads the saved own layer of a boot image.
func readLayer(path, image string) (*bootimage.Boot, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return bootimage.ReadLayer(image, f)
}

// imageMount is a boot image's tree mounted lazily, through the node
// cache, its profile prefetched.
type imageMount struct {
	srv     *lazyfs.Server
	st      store.Store
	stores  []*countingStore
	cancel  context.CancelFunc
	fetches sync.WaitGroup // the check and the prefetch
}

// mountImage mounts the tree of b at point: its chunks read from the
// boot image's stores, with failover, through the node cache at
// cfg.Cache, and the chunks of its profile fetched at once.
func mountImage(b *bootimage.Boot, point string, cfg mountConfig, logger *log.Logger) (*imageMount, error) {
	if len(b.Stores) == 0 {
		return nil, fmt.Errorf("%s: the boot image records no chunk store", cfg.Image)
	}
	m := &imageMount{}
	// Bounded, and shared by every mount of the node (and by bootinit's
	// containers, should they mount the same directory).
	st, err := imagemount.Open(context.Background(), b.Stores, imagemount.Options{
		Cache: cfg.Cache, CacheSize: cfg.CacheSize, CacheMaxAge: cfg.CacheMaxAge, Log: func(s string) { logger.Print(s) },
		Stores: location.Options{
			RegistryHost: chunkRegistries(cfg.HostsDir, imagemount.ProfileWorkers),
			Wrap: func(loc string, s store.Store) store.Store {
				c := &countingStore{Store: s, url: loc}
				m.stores = append(m.stores, c)
				return c
			},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("%s: its chunk stores: %w", cfg.Image, err)
	}
	cache := st.(*store.Cache)
	m.st = cache
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	// The check and the profile's chunks are fetched while the tree is
	// mounted: a start waits for the link's round trips once, not in turn.
	checked := make(chan error, 1)
	chunks := profileChunks(b, logger, cfg.Image)
	m.fetches.Go(func() { checked <- check(ctx, b.Index, cache, chunks) })
	if len(chunks) > 0 {
		m.fetches.Go(func() { prefetch(ctx, b.Index, cache, chunks, logger) })
	}
	f := lazyfs.New(b.Index, cache, lazyfs.Options{Log: logger, ReadaheadWithinFiles: true})
	// nosuid,nodev, as every host mount of an image: the container's
	// overlay over it honours the image's setuid bits and device nodes.
	m.srv, err = lazyfs.Mount(point, f, lazyfs.MountOptions{AllowOther: true, FsName: "mkbootfs", MaxReadAhead: profile.ReadAround, DirectOnly: true})
	if err == nil {
		if err = <-checked; err != nil {
			m.srv.Unmount()
			err = fmt.Errorf("%s: the chunk stores %s cannot serve it: %w", cfg.Image, strings.Join(b.Stores, ", "), err)
		}
	}
	if err != nil {
		m.close()
		return nil, err
	}
	return m, nil
}

// close stops the check and the prefetch and closes the stores, once
// unmounted.
func (m *imageMount) close() {
	m.cancel()
	m.fetches.Wait()
	m.st.Close()
}

// check fetches the first of the profile's chunks, or else the image's
// first chunk, within storeCheck: stores that are down, or do not hold
// the image, fail its mount rather than the app's reads. The profile's
// first is what a prefetch before the mount (prefetchEarly) fetches
// first: the mount waits for no other chunk.
func check(ctx context.Context, x *index.Index, cache *store.Cache, chunks []int) error {
	if len(chunks) == 0 {
		return imagemount.Check(ctx, x, cache, storeCheck)
	}
	ctx, cancel := context.WithTimeout(ctx, storeCheck)
	defer cancel()
	_, err := store.Load(ctx, cache, store.ID(x.Chunks[chunks[0]].ID))
	return err
}

// profileChunks returns the chunks of the image's profile, in the order
// it reads them.
func profileChunks(b *bootimage.Boot, logger *log.Logger, image string) []int {
	if b.Profile == nil {
		return nil
	}
	p, err := profile.Parse(bytes.NewReader(b.Profile), image+" profile")
	if err != nil {
		logger.Printf("%v; no prefetch", err)
		return nil
	}
	return imagemount.RegularFiles(p, b.Index).Chunks(b.Index)
}

// prefetch fetches the chunks into the cache, in order; failures are
// left to the reads that need them.
func prefetch(ctx context.Context, x *index.Index, cache *store.Cache, chunks []int, logger *log.Logger) {
	start := time.Now()
	ids := imagemount.IDs(x, chunks, map[store.ID]bool{})
	fetched, failed := imagemount.Fetch(ctx, cache, ids, imagemount.ProfileWorkers)
	logger.Printf("prefetched the profile's %d chunks in %v (%d fetched, %d failed)", len(ids), time.Since(start).Round(time.Millisecond), fetched, failed)
}

// countingStore counts what one store of a mount fetched, for metrics.
type countingStore struct {
	store.Store
	url string
	mu  sync.Mutex
	s   storeStats
}

// storeStats are one store's counters.
type storeStats struct {
	URL     string    `json:"url"`
	Chunks  int64     `json:"chunks"`  // chunks fetched
	Bytes   int64     `json:"bytes"`   // their bytes, as the store sent them
	Errors  int64     `json:"errors"`  // fetches that failed
	Seconds []float64 `json:"seconds"` // fetch latency: counts per latencyBuckets bound, and past the last
	Sum     float64   `json:"sum"`     // seconds in all
}

// latencyBuckets are the upper bounds, in seconds, of the fetch latency
// histogram.
var latencyBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

func (c *countingStore) Get(ctx context.Context, id store.ID) ([]byte, error) {
	start := time.Now()
	b, err := c.Store.Get(ctx, id)
	c.count(time.Since(start), len(b), err)
	return b, err
}

func (c *countingStore) count(d time.Duration, n int, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.s.Seconds == nil {
		c.s.Seconds = make([]float64, len(latencyBuckets)+1)
	}
	if err != nil {
		c.s.Errors++
		return
	}
	sec := d.Seconds()
	c.s.Chunks++
	c.s.Bytes += int64(n)
	c.s.Sum += sec
	i := 0
	for i < len(latencyBuckets) && sec > latencyBuckets[i] {
		i++
	}
	c.s.Seconds[i]++
}

func (c *countingStore) stats() storeStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.s
	s.URL = c.url
	s.Seconds = append([]float64(nil), c.s.Seconds...)
	return s
}

// mountStats is what a mount process tells of itself.
type mountStats struct {
	Lazyfs lazyfs.Stats `json:"lazyfs"`
	Stores []storeStats `json:"stores"`
}

// serveStats serves the mount's counters on a unix socket.
func serveStats(path string, m *imageMount) (io.Closer, error) {
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("stats socket: %w", err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s := mountStats{Lazyfs: m.srv.Stats()}
		for _, c := range m.stores {
			s.Stores = append(s.Stores, c.stats())
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(s)
	})}
	go srv.Serve(l)
	return srv, nil
}

// cappedLog is a log file that starts again, empty, past maxLog bytes.
type cappedLog struct {
	mu sync.Mutex
	f  *os.File
	n  int64
}

func openLog(path string) (*cappedLog, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &cappedLog{f: f, n: fi.Size()}, nil
}

func (l *cappedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n+int64(len(p)) > maxLog {
		if err := l.f.Truncate(0); err != nil {
			return 0, err
		}
		l.n = 0
	}
	n, err := l.f.Write(p)
	l.n += int64(n)
	return n, err
}

func (l *cappedLog) Close() error { return l.f.Close() }
