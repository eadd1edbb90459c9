package index_test

import (
	"crypto/sha256"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"

	"github.com/mkbootfs/mkbootfs/index"
)

// benchIndex is shaped like a Debian bookworm minbase rootfs: about 7,000
// entries (10% directories, 12% symlinks, some hardlinks), 175 MB of data
// in about 3,000 chunks.
func benchIndex(b *testing.B) *index.Index {
	rnd := rand.New(rand.NewPCG(42, 0))
	name := func() string {
		const letters = "abcdefghijklmnopqrstuvwxyz0123456789-._"
		n := make([]byte, 3+rnd.IntN(20))
		for i := range n {
			n[i] = letters[rnd.IntN(len(letters))]
		}
		return string(n)
	}
	inodes := []index.Inode{{Mode: syscall.S_IFDIR | 0o755}}
	root := &index.Node{}
	dirs := []*index.Node{root}
	taken := map[*index.Node]map[string]bool{}
	add := func(n index.Inode) *index.Node {
		inodes = append(inodes, n)
		return addLink(rnd, dirs, taken, name, uint32(len(inodes)-1))
	}
	for range 700 {
		dirs = append(dirs, add(index.Inode{Mode: syscall.S_IFDIR | 0o755, Mtime: 1.7e18}))
	}
	var stream int64
	for range 5500 {
		size := int64(rnd.ExpFloat64() * (32 << 10))
		add(index.Inode{Mode: syscall.S_IFREG | 0o644, Size: size, Offset: stream, Mtime: 1.7e18})
		stream += size
	}
	for range 800 {
		add(index.Inode{Mode: syscall.S_IFLNK | 0o777, Target: "../lib/" + name(), Mtime: 1.7e18})
		inodes[len(inodes)-1].Size = int64(len(inodes[len(inodes)-1].Target))
	}
	for range 50 {
		addLink(rnd, dirs, taken, name, uint32(701+rnd.IntN(5500)))
	}
	var chunks []index.Chunk
	for off := int64(0); off < stream; {
		size := min(stream-off, int64(stream/3000/2+rnd.Int64N(stream/3000)))
		var c index.Chunk
		for i := range c.ID {
			c.ID[i] = byte(rnd.Uint32())
		}
		c.Size = uint32(size)
		chunks = append(chunks, c)
		off += size
	}
	x, err := index.Build(root, inodes, chunks, map[string]string{"source": "bench"})
	if err != nil {
		b.Fatal(err)
	}
	return x
}

func addLink(rnd *rand.Rand, dirs []*index.Node, taken map[*index.Node]map[string]bool, name func() string, ino uint32) *index.Node {
	d := dirs[rnd.IntN(len(dirs))]
	if taken[d] == nil {
		taken[d] = map[string]bool{}
	}
	n := name()
	for taken[d][n] {
		n = name()
	}
	taken[d][n] = true
	c := &index.Node{Name: n, Inode: ino}
	d.Children = append(d.Children, c)
	return c
}

// vsPeer reports b's time per op over peer's as metric unit, timing the
// peer for as many ops right after b's loop, so the ratio comes from one
// run on one machine state.
func vsPeer(b *testing.B, unit string, peer func(i int)) {
	ours := b.Elapsed()
	start := time.Now()
	for i := range b.N {
		peer(i)
	}
	b.ReportMetric(float64(ours)/float64(time.Since(start)), unit)
}

// BenchmarkDecode decodes a minbase-sized index; the peer is hashing the
// same bytes, which any checksummed format must do.
func BenchmarkDecode(b *testing.B) {
	enc, err := benchIndex(b).MarshalBinary()
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(enc)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := index.Decode(enc); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(enc)), "index-bytes")
	vsPeer(b, "decode/sha256", func(int) { sha256.Sum256(enc) })
}

// BenchmarkResolve resolves every path of a minbase-sized index; the peer
// is a map from path to entry, what a reader would build without the
// index's sorted tables.
func BenchmarkResolve(b *testing.B) {
	x := benchIndex(b)
	paths := make([]string, len(x.Entries))
	byPath := make(map[string]uint32, len(x.Entries))
	for e := range uint32(len(x.Entries)) {
		paths[e] = x.Path(e)
		byPath[paths[e]] = e
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := x.Resolve(paths[i%len(paths)]); err != nil {
			b.Fatal(err)
		}
		i++
	}
	vsPeer(b, "resolve/map", func(i int) {
		if _, ok := byPath[paths[i%len(paths)]]; !ok {
			b.Fatal("missing")
		}
	})
}

// BenchmarkLookup looks every entry up by directory and name, as a FUSE
// lookup does; the peer is a map keyed by both.
func BenchmarkLookup(b *testing.B) {
	x := benchIndex(b)
	type key struct {
		dir  uint32
		name string
	}
	byName := make(map[key]uint32, len(x.Entries))
	for e := 1; e < len(x.Entries); e++ {
		byName[key{x.Entries[e].Parent, x.Entries[e].Name}] = uint32(e)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		e := &x.Entries[1+i%(len(x.Entries)-1)]
		if _, ok := x.Lookup(e.Parent, e.Name); !ok {
			b.Fatal("missing")
		}
		i++
	}
	vsPeer(b, "lookup/map", func(i int) {
		e := &x.Entries[1+i%(len(x.Entries)-1)]
		if _, ok := byName[key{e.Parent, e.Name}]; !ok {
			b.Fatal("missing")
		}
	})
}
