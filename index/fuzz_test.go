package index_test

import (
	"crypto/sha256"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the fuzz seed corpus in testdata/fuzz/FuzzDecode")

// FuzzDecode feeds untrusted bytes to Decode. With reseal set it first
// fixes the trailing checksum, so the fuzzer's damage reaches the decoder
// and the validator rather than stopping at the checksum.
func FuzzDecode(f *testing.F) {
	f.Add([]byte("mkbfidx\x00garbage"), false)
	f.Fuzz(func(t *testing.T, in []byte, reseal bool) {
		if reseal && len(in) >= sha256.Size {
			in = seal(in[:len(in)-sha256.Size])
		}
		checkDecode(t, in)
	})
}

// seeds are the checked-in corpus: small valid indexes of every shape, as
// they are and resealed.
func seeds(t *testing.T) map[string][]byte {
	one := newBuilder(5)
	one.file(one.root, "f", 3)
	out := map[string][]byte{
		"fixture": encoded(t, newFixture(t).x),
		"small":   encoded(t, small(t)),
		"one":     encoded(t, one.build(t, 2, map[string]string{})),
	}
	_, x := readTree(t, 0)
	out["sparse"] = encoded(t, x)
	return out
}

// TestSeeds checks the seed corpus matches what this package encodes;
// `go test ./index -run TestSeeds -update` rewrites it.
func TestSeeds(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzDecode")
	for name, b := range seeds(t) {
		for _, reseal := range []bool{false, true} {
			file := filepath.Join(dir, fmt.Sprintf("%s-%v", name, reseal))
			want := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\nbool(%v)\n", b, reseal)
			if *update {
				if err := os.WriteFile(file, []byte(want), 0o644); err != nil {
					t.Fatal(err)
				}
				continue
			}
			if got, err := os.ReadFile(file); err != nil || string(got) != want {
				t.Errorf("seed %s is missing or stale (%v): run go test ./index -run TestSeeds -update", file, err)
			}
		}
	}
}
