package store

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"runtime"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// MaxChunkSize bounds a decompressed chunk; a stored chunk that claims more is corrupt.
const MaxChunkSize = 16 << 20

// One decoder serves every goroutine: DecodeAll is safe for concurrent
// use, as EncodeAll is for the one encoder.
var decoder, _ = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(MaxChunkSize), zstd.WithDecoderLowmem(true))

// Each encoder is made by its first use, and only Encode and
// EncodeSmallest refer to them: a program that calls neither (bootinit
// reads chunks, and keeps them raw) links none of zstd's compressors.
type lazyEncoder struct {
	level zstd.EncoderLevel
	once  sync.Once
	enc   *zstd.Encoder
}

func (l *lazyEncoder) encode(data []byte) []byte {
	l.once.Do(func() {
		l.enc, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(l.level), zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)),
			// The chunk ID already checks the content, as in casync's chunks.
			zstd.WithEncoderCRC(false))
	})
	return l.enc.EncodeAll(data, make([]byte, 0, len(data)/2+64))
}

var (
	defaultEncoder  = lazyEncoder{level: zstd.SpeedDefault}
	smallestEncoder = lazyEncoder{level: zstd.SpeedBestCompression}
)

// Encode returns the stored form of an uncompressed chunk: one zstd frame,
// as casync and desync write it.
func Encode(data []byte) []byte { return defaultEncoder.encode(data) }

// EncodeSmallest is Encode at zstd's best compression: some 7% smaller
// for programs and libraries, at a fraction of the speed; for the few
// chunks that every start of an image fetches (its profile's), where a
// byte saved is saved on every node's link.
func EncodeSmallest(data []byte) []byte { return smallestEncoder.encode(data) }

// Raw blocks of a zstd frame hold at most rawBlockMax bytes (RFC 8878,
// Block_Maximum_Size).
const rawBlockMax = 128 << 10

// rawHeader starts every EncodeRaw frame: the magic, and a descriptor
// saying single segment (the window is the content), a 4-byte content
// size, no checksum, no dictionary. The size follows.
var rawHeader = []byte{0x28, 0xb5, 0x2f, 0xfd, 0xa0}

// EncodeRaw returns the stored form of a chunk left uncompressed: one zstd
// frame of raw blocks, which every zstd reader (Decode, casync, desync)
// takes, and which decodes at the speed of a copy. The node cache keeps
// chunks so: it trades disk for the decompression that every container
// start would otherwise pay again for the same chunks.
func EncodeRaw(data []byte) []byte {
	n := (len(data) + rawBlockMax - 1) / rawBlockMax
	out := make([]byte, 0, len(rawHeader)+4+3*max(n, 1)+len(data))
	out = append(out, rawHeader...)
	out = binary.LittleEndian.AppendUint32(out, uint32(len(data)))
	for {
		k := min(len(data), rawBlockMax)
		header := uint32(k) << 3 // block type 0: raw
		if k == len(data) {
			header |= 1 // the last block
		}
		out = append(out, byte(header), byte(header>>8), byte(header>>16))
		out, data = append(out, data[:k]...), data[k:]
		if len(data) == 0 {
			return out
		}
	}
}

// Decode decompresses a stored chunk and verifies it against id.
func Decode(id ID, raw []byte) ([]byte, error) {
	data, err := decoder.DecodeAll(raw, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: not a zstd chunk (%d bytes): %v", ErrCorrupt, len(raw), err)
	}
	return verified(id, data)
}

// DecodeInPlace is Decode for a stored chunk the caller owns and uses no
// more: an EncodeRaw frame is decoded where it lies, its blocks moved
// together, with no copy to allocate. Reading the node cache's chunks so
// keeps a start from faulting in fresh memory for every chunk.
func DecodeInPlace(id ID, raw []byte) ([]byte, error) {
	n, ok := rawContent(raw)
	if !ok {
		return Decode(id, raw)
	}
	data := raw[:0]
	for p := len(rawHeader) + 4; len(data) < n; {
		k := int(rawBlockHeader(raw[p:]) >> 3)
		data = append(data, raw[p+3:p+3+k]...) // moves down within raw
		p += 3 + k
	}
	return verified(id, data)
}

// rawContent checks that raw is an EncodeRaw frame, raw blocks to the
// last, and returns the size of its content.
func rawContent(raw []byte) (n int, ok bool) {
	p := len(rawHeader) + 4
	if len(raw) < p || !bytes.Equal(raw[:len(rawHeader)], rawHeader) {
		return 0, false
	}
	size := int(binary.LittleEndian.Uint32(raw[len(rawHeader):]))
	for {
		if len(raw)-p < 3 {
			return 0, false
		}
		h := rawBlockHeader(raw[p:])
		k := int(h >> 3)
		if h>>1&3 != 0 || k > rawBlockMax || len(raw)-p-3 < k || n+k > size {
			return 0, false // a block not raw, too long, or past the end
		}
		n += k
		p += 3 + k
		if h&1 != 0 {
			return n, p == len(raw) && n == size
		}
	}
}

func rawBlockHeader(b []byte) uint32 { return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 }

// verified returns data if it is chunk id's content.
func verified(id ID, data []byte) ([]byte, error) {
	if sum := Sum(data); sum != id {
		return nil, fmt.Errorf("%w: content hashes to %s", ErrCorrupt, sum.Short())
	}
	return data, nil
}
