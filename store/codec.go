package store

import (
	"fmt"
	"runtime"

	"github.com/klauspost/compress/zstd"
)

// MaxChunkSize bounds a decompressed chunk; a stored chunk that claims more is corrupt.
const MaxChunkSize = 16 << 20

// One encoder and decoder serve every goroutine: EncodeAll and DecodeAll are
// safe for concurrent use.
var (
	encoder, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)),
		// The chunk ID already checks the content, as in casync's chunks.
		zstd.WithEncoderCRC(false))
	decoder, _ = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(MaxChunkSize), zstd.WithDecoderLowmem(true))
)

// Encode returns the stored form of an uncompressed chunk: one zstd frame,
// as casync and desync write it.
func Encode(data []byte) []byte {
	return encoder.EncodeAll(data, make([]byte, 0, len(data)/2+64))
}

// Decode decompresses a stored chunk and verifies it against id.
func Decode(id ID, raw []byte) ([]byte, error) {
	data, err := decoder.DecodeAll(raw, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: not a zstd chunk (%d bytes): %v", ErrCorrupt, len(raw), err)
	}
	if Sum(data) != id {
		return nil, fmt.Errorf("%w: content hashes to %s", ErrCorrupt, Sum(data).Short())
	}
	return data, nil
}
