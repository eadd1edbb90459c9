package ocistore

import (
	"crypto/sha256"
	"fmt"
	"reflect"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/mkbootfs/mkbootfs/store"
)

func sampleTable(n int) ([]store.ID, []v1.Descriptor) {
	ids := make([]store.ID, n)
	blobs := make([]v1.Descriptor, n)
	for i := range ids {
		ids[i] = store.Sum([]byte(fmt.Sprint(i)))
		blobs[i] = v1.Descriptor{MediaType: ChunkMediaType, Size: int64(i * 1000), Digest: digest(ids[i][:])}
	}
	return ids, blobs
}

func TestTableRoundTrip(t *testing.T) {
	for _, n := range []int{0, 1, 1000} {
		ids, blobs := sampleTable(n)
		b := encodeTable(ids, blobs)
		if len(b) != tableHeader+n*tableEntry {
			t.Fatalf("%d chunks: %d bytes", n, len(b))
		}
		gotIDs, gotBlobs, err := decodeTable(b)
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 && (!reflect.DeepEqual(gotIDs, ids) || !reflect.DeepEqual(gotBlobs, blobs)) {
			t.Fatalf("%d chunks: the table changed in a round trip", n)
		}
	}
}

func TestTableRejects(t *testing.T) {
	ids, blobs := sampleTable(3)
	good := encodeTable(ids, blobs)
	big := encodeTable(ids[:1], []v1.Descriptor{{Size: maxStored + 1, Digest: blobs[0].Digest}})
	newer := append([]byte{}, good...)
	newer[23] = 2
	for name, b := range map[string][]byte{
		"empty":        nil,
		"other magic":  append([]byte("x"), good[1:]...),
		"newer":        newer,
		"truncated":    good[:len(good)-1],
		"trailing":     append(append([]byte{}, good...), 0),
		"huge blob":    big,
		"chunk itself": store.Encode([]byte("chunk")),
	} {
		if _, _, err := decodeTable(b); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}

func FuzzDecodeTable(f *testing.F) {
	ids, blobs := sampleTable(2)
	f.Add(encodeTable(ids, blobs))
	f.Add(encodeTable(nil, nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		ids, blobs, err := decodeTable(b)
		if err != nil {
			return
		}
		// What decodes encodes back to the same bytes.
		if again := encodeTable(ids, blobs); string(again) != string(b) {
			t.Fatalf("decode then encode changed %d bytes into %d (sha %x)", len(b), len(again), sha256.Sum256(b))
		}
	})
}
