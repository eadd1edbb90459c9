package nodecache

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/local"
	"github.com/mkbootfs/mkbootfs/store/storetest"
)

// BenchmarkCacheHit times the FUSE read path's hit, store.Cache.Load of a
// chunk in the directory, over store/local's directory as before the
// bound ("local"), over nodecache's ("nodecache": an fstat'ed read, no
// touch), and with a touch on every read ("touch-always", the cost the
// hourly touch saves).
func BenchmarkCacheHit(b *testing.B) {
	dir := b.TempDir()
	ids := cached(b, dir, 64)
	ctx := context.Background()
	for _, mode := range []string{"local", "nodecache", "touch-always"} {
		b.Run(mode, func(b *testing.B) {
			var cd store.CacheDir
			if mode == "local" {
				cd, _ = local.Open(dir, false)
			} else {
				d, err := openDir(dir, Options{MaxSize: 1 << 30})
				if err != nil {
					b.Fatal(err)
				}
				if mode == "touch-always" {
					d.touchAfter.Store(-1)
				}
				cd = d
			}
			c, err := store.NewCache(cd, openRemote(b, b.TempDir()))
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			b.SetBytes(chunkSize)
			b.ResetTimer()
			for i := range b.N {
				if _, err := c.Load(ctx, ids[i%len(ids)]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkPut times keeping a fetched chunk: store/local's PutNoSync,
// and nodecache's, which counts it (and flushes the count every 1/256 of
// the bound).
func BenchmarkPut(b *testing.B) {
	ctx := context.Background()
	data := make([][]byte, 256)
	for i := range data {
		data[i] = store.EncodeRaw(storetest.Chunk(uint64(i), chunkSize))
	}
	for _, mode := range []string{"local", "nodecache"} {
		b.Run(mode, func(b *testing.B) {
			dir := b.TempDir()
			var d store.CacheDir
			d, _ = local.Open(dir, true)
			if mode == "nodecache" {
				nd, err := openDir(dir, Options{MaxSize: 1 << 40})
				if err != nil {
					b.Fatal(err)
				}
				d = nd
			}
			defer d.Close()
			b.SetBytes(chunkSize)
			b.ResetTimer()
			for i := range b.N {
				// A fresh ID each time: every Put is a new file.
				id := store.ID{byte(i), byte(i >> 8), byte(i >> 16), byte(i >> 24), 0xee}
				if err := d.PutNoSync(ctx, id, data[i%len(data)]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkEvictPerStart fills a cache to its bound, then times, for each
// start of a new image that keeps 40 MiB of new chunks, the evictor's work
// to bring it back under the bound: the eviction cost per container start
// (on the evictor's goroutine, not the start's).
func BenchmarkEvictPerStart(b *testing.B) {
	for _, bound := range []int64{256 << 20, 1 << 30} {
		b.Run(FormatSize(bound), func(b *testing.B) {
			dir := b.TempDir()
			// The benchmark runs the evictor's rounds itself, when a write
			// finds the cache past its bound, and times them.
			d, err := openDir(dir, Options{MaxSize: bound})
			if err != nil {
				b.Fatal(err)
			}
			defer d.Close()
			ctx := context.Background()
			raw := store.EncodeRaw(storetest.Chunk(1, chunkSize))
			next := 0
			var evicting time.Duration
			var passes int
			start := func(n int64) {
				for range n / chunkSize {
					next++
					id := store.Sum([]byte(fmt.Sprint(next))) // spread over the shards as real IDs
					for {
						err := d.PutNoSync(ctx, id, raw)
						if err == nil {
							break
						}
						if !errors.Is(err, errOver) {
							b.Fatal(err)
						}
						t := time.Now()
						if err := d.check(ctx); err != nil {
							b.Fatal(err)
						}
						evicting += time.Since(t)
						passes++
					}
				}
			}
			start(bound + bound/8) // past the bound
			evicting, passes = 0, 0
			b.ResetTimer()
			for range b.N {
				start(40 << 20)
			}
			b.ReportMetric(float64(evicting.Microseconds())/1e3/float64(b.N), "evict-ms/start")
			b.ReportMetric(float64(passes)/float64(b.N), "passes/start")
			w := onDisk(b, dir)
			if w.bytes > bound+bound/16 {
				b.Fatalf("the cache holds %d bytes, a batch past its bound %d", w.bytes, bound)
			}
		})
	}
}
