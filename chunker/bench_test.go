package chunker_test

import (
	"bytes"
	"crypto/sha256"
	"io"
	"math/bits"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/folbricht/desync"
	fastcdc "github.com/jotfs/fastcdc-go"
	restic "github.com/restic/chunker"

	"github.com/mkbootfs/mkbootfs/chunker"
)

// benchData is 256 MiB of random bytes, made once per process.
var benchData = sync.OnceValue(func() []byte {
	b := make([]byte, 256<<20)
	rand.NewChaCha8([32]byte{'m', 'k', 'b', 'o', 'o', 't', 'f', 's'}).Read(b)
	return b
})

var benchParams = chunker.DefaultParams

// chunkers run a chunker over data, calling fn on each chunk; the chunk is
// only valid during the call, since most peers reuse their buffers.
var chunkers = map[string]func(b *testing.B, data []byte, fn func([]byte)){
	"mkbootfs": func(b *testing.B, data []byte, fn func([]byte)) {
		c, err := chunker.New(bytes.NewReader(data), benchParams)
		if err != nil {
			b.Fatal(err)
		}
		for {
			chunk, err := c.Next()
			if err == io.EOF {
				return
			}
			if err != nil {
				b.Fatal(err)
			}
			fn(chunk)
		}
	},
	// The hot loop alone, over the data in place: no reads, no buffers.
	"mkbootfs-cut": func(b *testing.B, data []byte, fn func([]byte)) {
		for len(data) > 0 {
			n := benchParams.Cut(data)
			fn(data[:n])
			data = data[n:]
		}
	},
	"fastcdc-go": func(b *testing.B, data []byte, fn func([]byte)) {
		c, err := fastcdc.NewChunker(bytes.NewReader(data), fastcdc.Options{
			MinSize: benchParams.Min, AverageSize: benchParams.Avg, MaxSize: benchParams.Max,
		})
		if err != nil {
			b.Fatal(err)
		}
		for {
			chunk, err := c.Next()
			if err == io.EOF {
				return
			}
			if err != nil {
				b.Fatal(err)
			}
			fn(chunk.Data)
		}
	},
	// restic takes no average: it cuts on 2^k after its minimum, so the
	// closest is k = log2(Avg).
	"restic": func(b *testing.B, data []byte, fn func([]byte)) {
		c := restic.NewWithBoundaries(bytes.NewReader(data), restic.Pol(0x3DA3358B4DC173),
			uint(benchParams.Min), uint(benchParams.Max))
		c.SetAverageBits(bits.Len(uint(benchParams.Avg)) - 1)
		buf := make([]byte, benchParams.Max)
		for {
			chunk, err := c.Next(buf)
			if err == io.EOF {
				return
			}
			if err != nil {
				b.Fatal(err)
			}
			fn(chunk.Data)
		}
	},
	"desync": func(b *testing.B, data []byte, fn func([]byte)) {
		c, err := desync.NewChunker(bytes.NewReader(data),
			uint64(benchParams.Min), uint64(benchParams.Avg), uint64(benchParams.Max))
		if err != nil {
			b.Fatal(err)
		}
		for {
			_, chunk, err := c.Next()
			if err != nil {
				b.Fatal(err)
			}
			if len(chunk) == 0 {
				return
			}
			fn(chunk)
		}
	},
}

// run benchmarks one chunker over benchData with fn applied to each chunk,
// and reports the mean chunk size. With a peer, each pass is followed by an
// untimed pass of the peer, and run reports the ratio of their times: the
// two share the machine's load of the moment, so the ratio holds on a busy
// machine where MB/s do not.
func run(b *testing.B, name, peer string, fn func([]byte)) {
	data := benchData()
	b.SetBytes(int64(len(data)))
	var count int
	var peerTime time.Duration
	for b.Loop() {
		count = 0
		chunkers[name](b, data, func(chunk []byte) {
			count++
			fn(chunk)
		})
		if peer != "" {
			b.StopTimer()
			start := time.Now()
			chunkers[peer](b, data, fn)
			peerTime += time.Since(start)
			b.StartTimer()
		}
	}
	b.ReportMetric(float64(len(data)/count), "B/chunk")
	if peer != "" {
		b.ReportMetric(peerTime.Seconds()/b.Elapsed().Seconds(), "×"+peer)
	}
}

// BenchmarkBoundaries measures boundary detection alone on random data,
// every chunker reading from an io.Reader; mkbootfs-cut is Params.Cut over
// the bytes in memory, without the copy into and zeroing of the Chunker's
// buffers.
func BenchmarkBoundaries(b *testing.B) {
	nop := func([]byte) {}
	b.Run("mkbootfs", func(b *testing.B) { run(b, "mkbootfs", "fastcdc-go", nop) })
	b.Run("mkbootfs-cut", func(b *testing.B) { run(b, "mkbootfs-cut", "fastcdc-go", nop) })
	for _, peer := range []string{"fastcdc-go", "restic", "desync"} {
		b.Run(peer, func(b *testing.B) { run(b, peer, "", nop) })
	}
}

// BenchmarkChunkHash measures what the converter does before compressing:
// cut, then SHA-256 each chunk.
func BenchmarkChunkHash(b *testing.B) {
	hash := func(chunk []byte) { sha256.Sum256(chunk) }
	b.Run("mkbootfs", func(b *testing.B) { run(b, "mkbootfs", "fastcdc-go", hash) })
	b.Run("fastcdc-go", func(b *testing.B) { run(b, "fastcdc-go", "", hash) })
}
