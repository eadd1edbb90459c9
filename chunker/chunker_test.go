package chunker

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"testing/iotest"
)

// randomBytes returns n bytes that depend only on seed.
func randomBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	var key [32]byte
	key[0], key[1] = byte(seed), byte(seed>>8)
	rand.NewChaCha8(key).Read(b)
	return b
}

// reference cuts data with Params.Cut over the whole buffer, the form that
// never sees a read boundary.
func reference(data []byte, p Params) [][]byte {
	var chunks [][]byte
	for len(data) > 0 {
		n := p.Cut(data)
		chunks = append(chunks, data[:n])
		data = data[n:]
	}
	return chunks
}

// collect runs c to the end of its stream.
func collect(t *testing.T, c *Chunker) [][]byte {
	t.Helper()
	var chunks [][]byte
	for {
		chunk, err := c.Next()
		if err == io.EOF {
			return chunks
		}
		if err != nil {
			t.Fatalf("Next after %d chunks: %v", len(chunks), err)
		}
		chunks = append(chunks, chunk)
	}
}

// checkChunks compares got with the reference chunking of data, cut first
// at cuts (ascending), and checks that every chunk is within p's bounds but
// those that end at a cut or at the end. It runs after all chunks were
// taken, so it also catches a chunker that reuses its buffers.
func checkChunks(got [][]byte, data []byte, p Params, cuts ...int64) error {
	var want [][]byte
	ends := map[int64]bool{int64(len(data)): true}
	var at int64
	for _, c := range append(cuts, int64(len(data))) {
		c = min(c, int64(len(data)))
		if c > at {
			want = append(want, reference(data[at:c], p)...)
			at = c
		}
		ends[c] = true
	}
	if len(got) != len(want) {
		return fmt.Errorf("got %d chunks, want %d", len(got), len(want))
	}
	var end int64
	for i, chunk := range got {
		if !bytes.Equal(chunk, want[i]) {
			return fmt.Errorf("chunk %d: got %d bytes, want %d (or other bytes)", i, len(chunk), len(want[i]))
		}
		end += int64(len(chunk))
		if len(chunk) > p.Max || len(chunk) == 0 || (len(chunk) < p.Min && !ends[end]) {
			return fmt.Errorf("chunk %d of %d: %d bytes, outside %d..%d", i, len(got), len(chunk), p.Min, p.Max)
		}
	}
	return nil
}

// seededCuts returns ascending offsets up to a little past n that depend
// only on seed: none, dense, or sparse.
func seededCuts(seed uint64, n int) []int64 {
	rnd := rand.New(rand.NewPCG(seed, 2))
	var cuts []int64
	step := []int{0, 50, 3000}[seed%3]
	for at := 0; step > 0 && at < n+step; {
		at += 1 + rnd.IntN(2*step)
		cuts = append(cuts, int64(at))
	}
	return cuts
}

// randomReader returns reads of random sizes from 0 to max bytes.
type randomReader struct {
	r   io.Reader
	rnd *rand.Rand
	max int
}

func (r *randomReader) Read(p []byte) (int, error) {
	n := r.rnd.IntN(r.max + 1)
	if n > len(p) {
		n = len(p)
	}
	return r.r.Read(p[:n])
}

// readers wrap data in readers that return reads of odd and small sizes.
func readers(data []byte, seed uint64) map[string]io.Reader {
	rnd := rand.New(rand.NewPCG(seed, 1))
	return map[string]io.Reader{
		"whole":   bytes.NewReader(data),
		"onebyte": iotest.OneByteReader(bytes.NewReader(data)),
		"half":    iotest.HalfReader(bytes.NewReader(data)),
		"dataerr": iotest.DataErrReader(bytes.NewReader(data)),
		"random":  &randomReader{bytes.NewReader(data), rnd, 1 + rnd.IntN(5000)},
	}
}

// fuzzParams are small, so that short inputs make many chunks; odd spans
// test the 2-byte steps.
var fuzzParams = []Params{
	{Min: 64, Avg: 256, Max: 1024},
	{Min: 101, Avg: 333, Max: 1001},
	{Min: 64, Avg: 65, Max: 66},
	{Min: 1000, Avg: 1500, Max: 4000},
}

// FuzzReadSizes checks that the chunks do not depend on read sizes, nor on
// where the chunker's buffer ends: data is a fuzzed prefix then size bytes
// of noise; seed picks the params, the buffer size and the read sizes.
func FuzzReadSizes(f *testing.F) {
	f.Add([]byte{}, uint64(0), uint16(0))
	f.Add([]byte("a"), uint64(1), uint16(0))
	f.Add(bytes.Repeat([]byte{0}, 5000), uint64(2), uint16(100))
	f.Add([]byte(strings.Repeat("mkbootfs", 300)), uint64(3), uint16(7777))
	f.Fuzz(func(t *testing.T, prefix []byte, seed uint64, size uint16) {
		data := append(prefix[:len(prefix):len(prefix)], randomBytes(seed, int(size))...)
		p := fuzzParams[seed%uint64(len(fuzzParams))]
		for name, r := range readers(data, seed) {
			c, err := New(r, p)
			if err != nil {
				t.Fatal(err)
			}
			c.bufSize = p.Max + int(seed>>8%uint64(3*p.Max))
			cuts := seededCuts(seed>>4, len(data))
			c.CutAt(cuts...)
			if err := checkChunks(collect(t, c), data, p, cuts...); err != nil {
				t.Fatalf("%d bytes, %s reader, %+v, buffer %d, %d cuts: %v", len(data), name, p, c.bufSize, len(cuts), err)
			}
		}
	})
}

// TestReadSizes runs the default params over a stream that spans several
// of the chunker's buffers.
func TestReadSizes(t *testing.T) {
	data := randomBytes(1, 9<<20+12345)
	for name, r := range readers(data, 1) {
		t.Run(name, func(t *testing.T) {
			c, err := New(r, DefaultParams)
			if err != nil {
				t.Fatal(err)
			}
			if err := checkChunks(collect(t, c), data, DefaultParams); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestCutAt checks that forced cuts end chunks, whatever the read sizes,
// and that between them the content decides as without them.
func TestCutAt(t *testing.T) {
	data := randomBytes(2, 5<<20+777)
	cuts := []int64{1, 4096, 4097, 100000, 100001 + int64(DefaultParams.Max), 3 << 20, 5<<20 + 777, 6 << 20}
	for name, r := range readers(data, 2) {
		t.Run(name, func(t *testing.T) {
			c, err := New(r, DefaultParams)
			if err != nil {
				t.Fatal(err)
			}
			c.CutAt(cuts...)
			got := collect(t, c)
			if err := checkChunks(got, data, DefaultParams, cuts...); err != nil {
				t.Fatal(err)
			}
			// Past the last cut inside the data, the chunks are those of
			// the uncut stream that starts there.
			tail := reference(data[3<<20:], DefaultParams)
			if !bytes.Equal(got[len(got)-1], tail[len(tail)-1]) {
				t.Error("the last chunk differs from the uncut stream's")
			}
		})
	}
}

// TestSizes checks the bounds, and that the mean chunk size on random data
// lands within 5% of Avg.
func TestSizes(t *testing.T) {
	data := randomBytes(2, 48<<20)
	for _, p := range []Params{
		DefaultParams,
		{Min: 8 << 10, Avg: 32 << 10, Max: 128 << 10},
		{Min: 32 << 10, Avg: 128 << 10, Max: 512 << 10},
		{Min: 2 << 10, Avg: 16 << 10, Max: 64 << 10},
		{Min: 48 << 10, Avg: 64 << 10, Max: 256 << 10},
		{Min: 1000, Avg: 3001, Max: 7777},
	} {
		c, err := New(bytes.NewReader(data), p)
		if err != nil {
			t.Fatal(err)
		}
		chunks := collect(t, c)
		if err := checkChunks(chunks, data, p); err != nil {
			t.Fatalf("%+v: %v", p, err)
		}
		mean := len(data) / len(chunks)
		t.Logf("%+v: %d chunks, mean %d", p, len(chunks), mean)
		if mean < p.Avg*95/100 || mean > p.Avg*105/100 {
			t.Errorf("%+v: mean chunk size %d, want %d ± 5%%", p, mean, p.Avg)
		}
	}
}

// TestShift inserts a few bytes near the start of a large input: the chunks
// after the edit must come back, or dedup across versions fails.
func TestShift(t *testing.T) {
	data := randomBytes(3, 64<<20)
	ids := func(data []byte) map[[32]byte]bool {
		c, err := New(bytes.NewReader(data), DefaultParams)
		if err != nil {
			t.Fatal(err)
		}
		set := map[[32]byte]bool{}
		for _, chunk := range collect(t, c) {
			set[sha256.Sum256(chunk)] = true
		}
		return set
	}
	before := ids(data)
	for _, edit := range []struct {
		name string
		data []byte
	}{
		{"insert", append(append(data[:1000:1000], "hello"...), data[1000:]...)},
		{"delete", append(data[:20000:20000], data[20007:]...)},
	} {
		after := ids(edit.data)
		shared := 0
		for id := range after {
			if before[id] {
				shared++
			}
		}
		t.Logf("%s: %d of %d chunks shared", edit.name, shared, len(after))
		if shared*100 < len(after)*95 {
			t.Errorf("%s: %d of %d chunks shared, want ≥ 95%%", edit.name, shared, len(after))
		}
	}
}

// emptyReader makes no progress.
type emptyReader struct{}

func (emptyReader) Read([]byte) (int, error) { return 0, nil }

func TestReadError(t *testing.T) {
	boom := errors.New("boom")
	data := randomBytes(4, 3<<20)
	for _, tc := range []struct {
		name string
		r    io.Reader
		want error
	}{
		{"after data", io.MultiReader(bytes.NewReader(data), iotest.ErrReader(boom)), boom},
		{"first read", iotest.ErrReader(boom), boom},
		{"timeout", iotest.TimeoutReader(bytes.NewReader(data)), iotest.ErrTimeout},
		{"no progress", emptyReader{}, io.ErrNoProgress},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(tc.r, DefaultParams)
			if err != nil {
				t.Fatal(err)
			}
			// The chunks before the error are those of the intact stream.
			want := reference(data, DefaultParams)
			for i := 0; ; i++ {
				chunk, err := c.Next()
				if err != nil {
					if !errors.Is(err, tc.want) || !strings.HasPrefix(err.Error(), "chunker: read: ") {
						t.Fatalf("chunk %d: got error %q, want chunker: read: %v", i, err, tc.want)
					}
					if _, again := c.Next(); again != err {
						t.Fatalf("second Next after %q returned %v", err, again)
					}
					return
				}
				if !bytes.Equal(chunk, want[i]) {
					t.Fatalf("chunk %d differs from the intact stream's", i)
				}
			}
		})
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		p    Params
		want string // "" for valid
	}{
		{DefaultParams, ""},
		{Params{Min: 64, Avg: 65, Max: 66}, ""},
		{Params{Min: 1 << 20, Avg: 16 << 20, Max: 64 << 20}, ""},
		{Params{}, "min size 0 is below 64 bytes"},
		{Params{Min: 63, Avg: 128, Max: 256}, "min size 63 is below 64 bytes"},
		{Params{Min: -1, Avg: 128, Max: 256}, "below 64 bytes"},
		{Params{Min: 128, Avg: 128, Max: 256}, "sizes must grow"},
		{Params{Min: 128, Avg: 64, Max: 256}, "sizes must grow"},
		{Params{Min: 64, Avg: 256, Max: 256}, "sizes must grow"},
		{Params{Min: 64, Avg: 256, Max: 128}, "sizes must grow"},
		{Params{Min: 64, Avg: 256, Max: 64<<20 + 1}, "above 64 MiB"},
	} {
		err := tc.p.Validate()
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%+v: got %v, want %q", tc.p, err, tc.want)
		}
		if _, nerr := New(strings.NewReader(""), tc.p); (nerr == nil) != (err == nil) {
			t.Errorf("%+v: New returned %v, Validate %v", tc.p, nerr, err)
		}
	}
}

func TestParseParams(t *testing.T) {
	for in, want := range map[string]Params{
		"64K":            DefaultParams,
		"16K:64K:256K":   DefaultParams,
		"16384":          {4096, 16384, 65536},
		"1K:4K:1M":       {1 << 10, 4 << 10, 1 << 20},
		"4096:8192:9000": {4096, 8192, 9000},
	} {
		if got, err := ParseParams(in); err != nil || got != want {
			t.Errorf("ParseParams(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for in, msg := range map[string]string{
		"":           `"" is not a size`,
		"64K:256K":   "want AVG or MIN:AVG:MAX",
		"64X":        `"64X" is not a size`,
		"-1":         `"-1" is not a size`,
		"1M:64K:2M":  "sizes must grow",
		"128":        "min size 32 is below 64 bytes",
		"100M":       `"100M" is not a size`,
		"1K:2K:100M": `"100M" is not a size`,
	} {
		if _, err := ParseParams(in); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("ParseParams(%q): %v; want an error saying %s", in, err, msg)
		}
	}
}
