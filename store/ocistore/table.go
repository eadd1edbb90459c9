package ocistore

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/mkbootfs/mkbootfs/store"
)

// A chunk table maps the chunks of one image to their blobs, in the order
// the chunk manifests list the blobs: 68 bytes a chunk, against some 250
// for a manifest layer with the ID in an annotation, and one blob that a
// reader fetches whole, or in two parts: the converter lists a boot
// image's chunks in the order a start reads them (the profile's first), so
// the first part serves the start, and the rest is fetched only when a
// read misses it. Layout, integers big-endian:
//
//	magic "mkbootfs-chunktable\x00" (20 bytes), version uint32 = 1, count uint32
//	count × { chunk ID [32]byte, blob sha256 [32]byte, blob size uint32 }
var tableMagic = []byte("mkbootfs-chunktable\x00")

const (
	tableVersion = 1
	tableHeader  = 28
	tableEntry   = 68
)

// encodeTable encodes the blobs of chunks ids, each descriptor a sha256
// blob of at most maxStored bytes.
func encodeTable(ids []store.ID, blobs []v1.Descriptor) []byte {
	b := make([]byte, 0, tableHeader+len(ids)*tableEntry)
	b = append(b, tableMagic...)
	b = binary.BigEndian.AppendUint32(b, tableVersion)
	b = binary.BigEndian.AppendUint32(b, uint32(len(ids)))
	for i, id := range ids {
		b = append(b, id[:]...)
		sum, _ := hex.DecodeString(blobs[i].Digest.Hex)
		b = append(b, sum...)
		b = binary.BigEndian.AppendUint32(b, uint32(blobs[i].Size))
	}
	return b
}

// decodeTable decodes a chunk table into ids and their blobs.
func decodeTable(b []byte) ([]store.ID, []v1.Descriptor, error) {
	n, err := tableCount(b)
	if err != nil {
		return nil, nil, err
	}
	if uint64(len(b)-tableHeader) != uint64(n)*tableEntry {
		return nil, nil, fmt.Errorf("chunk table of %d chunks has %d bytes, want %d", n, len(b), tableHeader+uint64(n)*tableEntry)
	}
	return decodeEntries(b[tableHeader:])
}

// decodePrefix decodes the entries of the first bytes of a chunk table,
// those it holds whole, and returns the table's size.
func decodePrefix(b []byte) ([]store.ID, []v1.Descriptor, int64, error) {
	n, err := tableCount(b)
	if err != nil {
		return nil, nil, 0, err
	}
	size := tableHeader + int64(n)*tableEntry
	if int64(len(b)) > size {
		return nil, nil, 0, fmt.Errorf("chunk table of %d chunks has more than %d bytes", n, size)
	}
	whole := (len(b) - tableHeader) / tableEntry
	ids, blobs, err := decodeEntries(b[tableHeader : tableHeader+whole*tableEntry])
	return ids, blobs, size, err
}

// tableCount checks a chunk table's header and returns its count.
func tableCount(b []byte) (uint32, error) {
	if len(b) < tableHeader || !bytes.Equal(b[:len(tableMagic)], tableMagic) {
		return 0, fmt.Errorf("not a chunk table (%d bytes)", len(b))
	}
	if v := binary.BigEndian.Uint32(b[20:]); v != tableVersion {
		return 0, fmt.Errorf("chunk table version %d, want %d: a newer mkbootfs wrote it", v, tableVersion)
	}
	return binary.BigEndian.Uint32(b[24:]), nil
}

// decodeEntries decodes whole table entries.
func decodeEntries(b []byte) ([]store.ID, []v1.Descriptor, error) {
	n := len(b) / tableEntry
	ids := make([]store.ID, n)
	blobs := make([]v1.Descriptor, n)
	for i := range ids {
		e := b[i*tableEntry:]
		copy(ids[i][:], e[:32])
		size := binary.BigEndian.Uint32(e[64:])
		if size > maxStored {
			return nil, nil, fmt.Errorf("chunk table entry %d: a blob of %d bytes, more than any chunk", i, size)
		}
		blobs[i] = v1.Descriptor{
			MediaType: ChunkMediaType,
			Size:      int64(size),
			Digest:    v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(e[32:64])},
		}
	}
	return ids, blobs, nil
}
