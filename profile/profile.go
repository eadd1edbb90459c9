// Package profile owns the boot access profile: the files a container reads
// as it starts, in the order it first reads them, and the ranges it reads.
//
// bootinit records one (MKBOOTFS_PROFILE); the converter lays the profiled
// files first in the data stream, in that order, so that a start needs few
// chunks and they sit together; and bootinit prefetches the profiled
// ranges' chunks in parallel as the container boots.
//
// The format is text, one file per line, so that a person can read and
// edit it:
//
//	mkbootfs profile 1
//	"/usr/bin/apt-get" 0+20480 196608+4096
//
// A path is the file's absolute path in the image, quoted
// as Go quotes strings (names need not be UTF-8); each range is
// OFFSET+LENGTH in bytes, sorted and merged. A profile that the converter
// found in the image without running it says so on its first line,
// "mkbootfs profile 1 static".
package profile

import (
	"bufio"
	"cmp"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/mkbootfs/mkbootfs/index"
)

// header is the first line of a profile: the format and its version;
// staticMark follows it on a static profile's.
const (
	header     = "mkbootfs profile 1"
	staticMark = " static"
)

// Profile is the files a start reads, in first-read order.
type Profile struct {
	Files []File
	// Static is set on a profile found in the image without running it
	// (the files its command's start maps: the program, its interpreters,
	// loader and libraries, each whole): a start of the image reads more,
	// and a node may learn what.
	Static bool
}

// File is one file of a profile.
type File struct {
	Path   string  // absolute, in the image
	Ranges []Range // read, sorted and merged
}

// Range is a run of bytes of a file.
type Range struct {
	Off, Len int64
}

// Bytes is how many bytes of the files the profile covers.
func (p *Profile) Bytes() int64 {
	var t int64
	for _, f := range p.Files {
		for _, r := range f.Ranges {
			t += r.Len
		}
	}
	return t
}

// WriteTo writes p in the text format.
func (p *Profile) WriteTo(w io.Writer) (int64, error) {
	bw := bufio.NewWriter(w)
	first := header
	if p.Static {
		first += staticMark
	}
	n, _ := fmt.Fprintln(bw, first)
	total := int64(n)
	for _, f := range p.Files {
		var b strings.Builder
		b.WriteString(strconv.Quote(f.Path))
		for _, r := range f.Ranges {
			fmt.Fprintf(&b, " %d+%d", r.Off, r.Len)
		}
		n, _ := fmt.Fprintln(bw, b.String())
		total += int64(n)
	}
	return total, bw.Flush()
}

// Parse reads a profile in the text format. name names it in errors.
func Parse(r io.Reader, name string) (*Profile, error) {
	return Limits{}.Parse(r, name)
}

// maxLine bounds a line of a profile: a path with a few thousand ranges.
const maxLine = 16 << 20

// Parse reads a profile in the text format, and fails on one past l, having
// read at most l.Size+1 bytes of r. name names it in errors.
func (l Limits) Parse(r io.Reader, name string) (*Profile, error) {
	lineMax := maxLine
	if l.Size > 0 {
		r = io.LimitReader(r, l.Size+1)
		lineMax = int(min(l.Size+1, maxLine))
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, min(64<<10, lineMax)), lineMax)
	p := &Profile{}
	seen := map[string]bool{}
	line, ranges := 0, 0
	var size, bytes int64
	bad := func(format string, a ...any) error {
		return fmt.Errorf("profile %s, line %d: %s (record a profile with MKBOOTFS_PROFILE, or `mkbootfs convert --profile`)", name, line, fmt.Sprintf(format, a...))
	}
	for sc.Scan() {
		line++
		text := sc.Text()
		size += int64(len(text)) + 1
		// The newline a last line may lack is counted: a profile written
		// by WriteTo has it.
		if over := l.exceeded(len(p.Files), ranges, bytes, size); over != "" {
			return nil, bad("%s", over)
		}
		if line == 1 {
			if text != header && text != header+staticMark {
				return nil, bad("starts with %q, not %q", trim(text), header)
			}
			p.Static = text != header
			continue
		}
		if text == "" {
			continue
		}
		path, rest, err := unquotePrefix(text)
		if err != nil {
			return nil, bad("a path must be a quoted string: %v", err)
		}
		if !strings.HasPrefix(path, "/") || slices.Contains(strings.Split(path, "/"), "..") {
			return nil, bad("path %q is not a path in the image (absolute, without \"..\")", path)
		}
		if seen[path] {
			return nil, bad("%q appears twice", path)
		}
		seen[path] = true
		f := File{Path: path}
		for _, field := range strings.Fields(rest) {
			off, length, ok := strings.Cut(field, "+")
			o, err1 := strconv.ParseInt(off, 10, 64)
			n, err2 := strconv.ParseInt(length, 10, 64)
			if !ok || err1 != nil || err2 != nil || o < 0 || n <= 0 || o > (1<<62)-n {
				return nil, bad("range %q is not OFFSET+LENGTH", trim(field))
			}
			f.Ranges = append(f.Ranges, Range{o, n})
		}
		ranges += len(f.Ranges)
		f.Ranges = merge(f.Ranges)
		for _, r := range f.Ranges {
			bytes = min(bytes+r.Len, 1<<61) // a range is at most 2^62: saturates, never overflows
		}
		p.Files = append(p.Files, f)
		if over := l.exceeded(len(p.Files), ranges, bytes, size); over != "" {
			return nil, bad("%s", over)
		}
	}
	if err := sc.Err(); errors.Is(err, bufio.ErrTooLong) {
		line++
		return nil, bad("longer than %d bytes", lineMax-1)
	} else if err != nil {
		return nil, fmt.Errorf("profile %s: %w", name, err)
	}
	if line == 0 {
		return nil, fmt.Errorf("profile %s is empty, not a profile (its first line is %q)", name, header)
	}
	return p, nil
}

func unquotePrefix(s string) (string, string, error) {
	q, err := strconv.QuotedPrefix(s)
	if err != nil {
		return "", "", err
	}
	path, err := strconv.Unquote(q)
	return path, s[len(q):], err
}

func trim(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// merge sorts rs and joins overlapping and touching ranges.
func merge(rs []Range) []Range {
	slices.SortFunc(rs, func(a, b Range) int { return cmp.Compare(a.Off, b.Off) })
	out := rs[:0]
	for _, r := range rs {
		if k := len(out) - 1; k >= 0 && r.Off <= out[k].Off+out[k].Len {
			out[k].Len = max(out[k].Len, r.Off+r.Len-out[k].Off)
			continue
		}
		out = append(out, r)
	}
	return out
}

// Merge returns first's files and then those of then that first does not
// name, and how many of then's it took; either may be nil. A recorded
// profile comes first: it knows which ranges a start reads, where a
// static one names whole files. The result is static if first is.
func Merge(first, then *Profile) (*Profile, int) {
	if then == nil {
		return first, 0
	}
	if first == nil {
		return then, len(then.Files)
	}
	out := &Profile{Files: slices.Clone(first.Files), Static: first.Static}
	named := map[string]bool{}
	for _, f := range first.Files {
		named[f.Path] = true
	}
	for _, f := range then.Files {
		if !named[f.Path] {
			out.Files = append(out.Files, f)
		}
	}
	return out, len(out.Files) - len(first.Files)
}

// ReadAround is how much of a file around each profiled read is laid out
// and prefetched with it, and the kernel's readahead on the lazy image at
// boot (bootinit mounts it so): a start maps its binaries and libraries and
// page-faults them in, and each fault reads this much around it. A boot
// whose faults fall a little differently from the recorded one's then still
// reads only the profile's chunks. Measured with bench/coldstart.sh against
// 32 KiB of readahead and no widening: apt-get --version fetched 112
// chunks, all of the profile, and 2.3 MB, instead of 120 and 2.6 MB; a
// start on a node that has bootinit's layer took 1.6 s instead of 2.2; and
// warm starts fetched nothing more instead of 10 to 19 chunks. Widening by
// 32 KiB (with 32 KiB of readahead) fetched 3.8 MB.
const ReadAround = 8 << 10

// Around returns r widened by ReadAround on each side, within a file of
// size bytes.
func (r Range) Around(size int64) Range {
	end := min(r.Off+r.Len+ReadAround, size)
	off := min(max(r.Off-ReadAround, 0), end)
	return Range{Off: off, Len: end - off}
}

// Chunks returns the stream chunks of x that hold the profiled ranges,
// each widened by ReadAround, in the order the profile reads them, each
// once. Files x does not have as regular files are passed over: a profile
// recorded on an older build of an image still serves the files that
// stayed.
func (p *Profile) Chunks(x *index.Index) []int {
	var out []int
	seen := map[int]bool{}
	for _, f := range p.Files {
		e, err := x.Resolve(f.Path)
		if err != nil {
			continue
		}
		ino := x.Entries[e].Inode
		for _, r := range f.Ranges {
			r = r.Around(x.Inodes[ino].Size)
			x.FileChunks(ino, r.Off, r.Len, func(i int) {
				if !seen[i] {
					seen[i] = true
					out = append(out, i)
				}
			})
		}
	}
	return out
}

// Recorder builds a profile from the reads of a mount: lazyfs calls Read
// for each read it serves.
type Recorder struct {
	x      *index.Index
	limits Limits

	mu      sync.Mutex
	stopped bool
	order   []uint32           // inodes, in first-read order
	paths   map[uint32]string  // inode → the path it was first read through
	ranges  map[uint32][]Range // inode → its reads, unmerged
	// nranges, bytes and size count what the profile holds, and its text
	// at most (each range counted at its widest, rangeText).
	nranges     int
	bytes, size int64
}

// rangeText is the most text one range takes: " OFFSET+LENGTH".
const rangeText = len(" 9223372036854775807+9223372036854775807")

// NewRecorder returns a recorder of reads of x's files, within l.
func NewRecorder(x *index.Index, l Limits) *Recorder {
	return &Recorder{x: x, limits: l, paths: map[uint32]string{}, ranges: map[uint32][]Range{}, size: int64(len(header)) + 1}
}

// Read records a read of n bytes at off of inode ino, through entry. A read
// that would take the profile past the recorder's limits stops it: what it
// keeps is the start's first reads, whole.
func (r *Recorder) Read(ino, entry uint32, off int64, n int) {
	if n <= 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped {
		return
	}
	files, size := len(r.order), r.size
	path, known := r.paths[ino]
	if !known {
		path = r.x.Path(entry)
		files++
		size += int64(len(strconv.Quote(path))) + 1
	}
	rs := r.ranges[ino]
	// Sequential reads extend the last range rather than grow the list.
	k := len(rs) - 1
	extends := k >= 0 && rs[k].Off+rs[k].Len == off
	ranges := r.nranges
	if !extends {
		ranges++
		size += int64(rangeText)
	}
	if r.limits.exceeded(files, ranges, r.bytes+int64(n), size) != "" {
		r.stopped = true
		return
	}
	if !known {
		r.paths[ino] = path
		r.order = append(r.order, ino)
	}
	if extends {
		rs[k].Len += int64(n)
	} else {
		rs = append(rs, Range{off, int64(n)})
	}
	r.ranges[ino] = rs
	r.nranges, r.bytes, r.size = ranges, r.bytes+int64(n), size
}

// Stop ends the recording: later reads are not recorded.
func (r *Recorder) Stop() {
	r.mu.Lock()
	r.stopped = true
	r.mu.Unlock()
}

// Profile returns what has been recorded so far.
func (r *Recorder) Profile() *Profile {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := &Profile{}
	for _, ino := range r.order {
		p.Files = append(p.Files, File{
			Path:   r.paths[ino],
			Ranges: merge(slices.Clone(r.ranges[ino])),
		})
	}
	return p
}
