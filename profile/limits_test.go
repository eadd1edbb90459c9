package profile

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

// TestRecorderLimits: a recorder stops at the first read past a bound and
// keeps the reads before it, and what it keeps parses within the bounds.
func TestRecorderLimits(t *testing.T) {
	x := testIndex(t)
	a, _ := x.Resolve("a")
	b, _ := x.Resolve("dir/b")
	ino := func(e uint32) uint32 { return x.Entries[e].Inode }
	reads := func(r *Recorder) {
		r.Read(ino(a), a, 0, 10)
		r.Read(ino(a), a, 10, 10) // extends: no new range
		r.Read(ino(a), a, 100, 10)
		r.Read(ino(b), b, 0, 50)
		r.Read(ino(a), a, 120, 10) // after a bound, never recorded
	}
	for _, tc := range []struct {
		name   string
		l      Limits
		want   string
		passed string // what the next read past the kept ones gives Parse
	}{
		{"none", Limits{}, `"/a" 0+20 100+10 120+10|"/dir/b" 0+50`, ""},
		{"files", Limits{Files: 1}, `"/a" 0+20 100+10`, "more than 1 files"},
		{"ranges", Limits{Ranges: 2}, `"/a" 0+20 100+10`, "more than 2 ranges"},
		{"bytes", Limits{Bytes: 40}, `"/a" 0+20 100+10`, "ranges of more than 40 bytes"},
		{"size", Limits{Size: 19 + 5 + 2*int64(rangeText)}, `"/a" 0+20 100+10`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := NewRecorder(x, tc.l)
			reads(r)
			var buf bytes.Buffer
			r.Profile().WriteTo(&buf)
			got := strings.ReplaceAll(strings.TrimSuffix(strings.TrimPrefix(buf.String(), header+"\n"), "\n"), "\n", "|")
			if got != tc.want {
				t.Errorf("recorded %s, want %s", got, tc.want)
			}
			if _, err := tc.l.Parse(&buf, "t"); err != nil {
				t.Errorf("what the recorder kept does not parse within its limits: %v", err)
			}
			if tc.passed == "" {
				return
			}
			past := header + "\n" + `"/a" 0+20 100+10` + "\n" + `"/dir/b" 0+50` + "\n"
			if _, err := tc.l.Parse(strings.NewReader(past), "t"); err == nil || !strings.Contains(err.Error(), tc.passed) {
				t.Errorf("Parse of one more read: %v, want %q", err, tc.passed)
			}
		})
	}

	r := NewRecorder(x, Limits{})
	r.Read(ino(a), a, 0, 10)
	r.Stop()
	r.Read(ino(b), b, 0, 10)
	if p := r.Profile(); len(p.Files) != 1 {
		t.Errorf("recorded after Stop: %+v", p.Files)
	}
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// TestParseLimits: input past a bound fails, having read at most Size+1
// bytes of it, however it is made.
func TestParseLimits(t *testing.T) {
	l := Limits{Files: 100, Ranges: 1000, Bytes: 1 << 20, Size: 64 << 10}
	lines := func(n int, line string) string { return header + "\n" + strings.Repeat(line, n) }
	many := func(n int) string {
		var b strings.Builder
		b.WriteString(header + "\n")
		for i := range n {
			b.WriteString(`"/f` + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + `/` + string(rune('0'+i/26%10)) + `/` + string(rune('0'+i/260)) + `" 0+1` + "\n")
		}
		return b.String()
	}
	for _, tc := range []struct{ name, in, want string }{
		{"files", many(101), "more than 100 files"},
		{"ranges", lines(1, `"/a"`+strings.Repeat(" 0+1", 1001)+"\n"), "more than 1000 ranges"},
		{"bytes", lines(1, `"/a" 0+1048577`+"\n"), "ranges of more than 1048576 bytes"},
		{"huge range", lines(1, `"/a" 0+4611686018427387904`+"\n"), "ranges of more than"},
		{"huge ranges", lines(1, `"/a" 0+4611686018427387904`+"\n"+`"/b" 0+4611686018427387904`+"\n"), "ranges of more than"},
		{"size", lines(100000, "\n"), "longer than 65536 bytes"},
		{"one long line", header + "\n" + `"/` + strings.Repeat("\xff", 10<<20), "line 2: longer than 65536 bytes"},
		{"garbage", strings.Repeat("\x7fELF\x00\x01", 1<<20), "line 1: longer than 65536 bytes"},
		{"garbage lines", strings.Repeat("\x7fELF\n", 1<<20), "line 1: starts with"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cr := &countingReader{r: strings.NewReader(tc.in)}
			_, err := l.Parse(cr, "t")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Parse: %v, want %q", err, tc.want)
			}
			if cr.n > l.Size+1 {
				t.Errorf("Parse read %d bytes, past the %d it may", cr.n, l.Size+1)
			}
		})
	}
	ok := many(100)
	if p, err := l.Parse(strings.NewReader(ok), "t"); err != nil || len(p.Files) != 100 {
		t.Errorf("a profile at the bounds: %v", err)
	}
}

func TestCheck(t *testing.T) {
	x := testIndex(t)
	for _, tc := range []struct {
		f    File
		want string
	}{
		{File{"/dir/sparse", []Range{{0, 200000}}}, ""},
		{File{"/a", nil}, ""},
		{File{"/gone", nil}, `"/gone" is not in the image`},
		{File{"/dir", nil}, `"/dir" is not a regular file`},
		{File{"/a/x", nil}, `"/a/x" is not in the image`},
		{File{"/a", []Range{{100, 51}}}, `"/a" is read at 100+51, past its end (150 bytes)`},
		{File{"/a", []Range{{1 << 62, 1 << 62}}}, "past its end"},
		{File{"/a", []Range{{-1, 1}}}, "past its end"},
	} {
		err := (&Profile{Files: []File{{"/a", []Range{{0, 150}}}, tc.f}}).Check(x)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("Check(%+v): %v, want %q", tc.f, err, tc.want)
		}
	}
}

// FuzzLimitsParse: no input panics Parse or passes its bounds, and what it
// accepts writes back as it reads.
func FuzzLimitsParse(f *testing.F) {
	f.Add([]byte(header + "\n\"/a\" 0+10 5+10 100+1\n\"/b\"\n"))
	f.Add([]byte(header + staticMark + "\n\"/\\xff\" 4611686018427387903+1\n"))
	f.Add([]byte(header + "\n\"/a\" 0+1\n\"/a\" 0+1\n"))
	l := Limits{Files: 8, Ranges: 16, Bytes: 1 << 20, Size: 4096}
	f.Fuzz(func(t *testing.T, in []byte) {
		p, err := l.Parse(bytes.NewReader(in), "fuzz")
		if err != nil {
			return
		}
		ranges := 0
		for _, file := range p.Files {
			ranges += len(file.Ranges)
		}
		if len(p.Files) > l.Files || ranges > l.Ranges || p.Bytes() > l.Bytes {
			t.Fatalf("accepted %d files, %d ranges, %d bytes, past %+v", len(p.Files), ranges, p.Bytes(), l)
		}
		var out bytes.Buffer
		p.WriteTo(&out)
		q, err := Parse(bytes.NewReader(out.Bytes()), "again")
		if err != nil {
			t.Fatalf("what Parse accepted does not parse again: %v\n%s", err, out.Bytes())
		}
		var again bytes.Buffer
		q.WriteTo(&again)
		if !bytes.Equal(again.Bytes(), out.Bytes()) {
			t.Fatalf("round trip:\n%s\nthen\n%s", out.Bytes(), again.Bytes())
		}
	})
}
