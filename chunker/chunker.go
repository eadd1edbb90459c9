// Package chunker cuts a byte stream into content-defined chunks: the same
// content yields the same boundaries wherever it sits in the stream, so
// identical data in different files or images becomes identical chunks.
//
// It is FastCDC (Xia et al., USENIX ATC'16): a gear rolling hash, cut-point
// skipping below the minimum size, and normalized chunking (a harder
// condition before the average size, an easier one after), rolled two bytes
// per step as in the 2020 follow-up paper. Boundaries depend only on the
// bytes, never on how the reads that feed the chunker are sized.
package chunker

import (
	"errors"
	"fmt"
	"io"
	"math/bits"
)

// Params are the chunk size bounds. Every chunk but the last of a stream is
// at least Min and at most Max bytes; sizes cluster around Avg.
type Params struct {
	Min, Avg, Max int
}

// DefaultParams are casync's defaults: 16/64/256 KiB.
var DefaultParams = Params{Min: 16 << 10, Avg: 64 << 10, Max: 256 << 10}

// Validate reports whether the bounds are usable.
func (p Params) Validate() error {
	switch {
	case p.Min < 64:
		return fmt.Errorf("chunker: min size %d is below 64 bytes", p.Min)
	case p.Avg <= p.Min || p.Max <= p.Avg:
		return fmt.Errorf("chunker: sizes must grow: min %d < avg %d < max %d", p.Min, p.Avg, p.Max)
	case p.Max > 64<<20:
		return fmt.Errorf("chunker: max size %d is above 64 MiB", p.Max)
	}
	return nil
}

// masks returns the cut conditions before and after the average size:
// a cut happens where the hash's top bits are all zero.
func (p Params) masks() (small, large uint64) {
	b := bits.Len(uint(p.Avg)) - 1 // log2 of the average
	top := func(n int) uint64 { return ^uint64(0) << (64 - n) }
	return top(b + 2), top(b - 2)
}

// Cut returns the length of the first chunk of data. When data is shorter
// than Max and more data may follow, the result is only final if it is
// below len(data); see Chunker for the streaming form.
func (p Params) Cut(data []byte) int {
	small, large := p.masks()
	return cut(data, p.Min, p.Avg, p.Max, small, large)
}

func cut(data []byte, minSize, avgSize, maxSize int, maskS, maskL uint64) int {
	n := len(data)
	if n <= minSize {
		return n
	}
	if n > maxSize {
		n = maxSize
	}
	normal := avgSize
	if normal > n {
		normal = n
	}
	var fp uint64
	i := minSize
	for ; i+1 < normal; i += 2 {
		fp = fp<<2 + gearShifted[data[i]] + gear[data[i+1]]
		if fp&maskS == 0 {
			return i + 2
		}
	}
	for ; i+1 < n; i += 2 {
		fp = fp<<2 + gearShifted[data[i]] + gear[data[i+1]]
		if fp&maskL == 0 {
			return i + 2
		}
	}
	return n
}

// Chunker splits a stream read from an io.Reader.
type Chunker struct {
	r            io.Reader
	p            Params
	maskS, maskL uint64
	buf          []byte
	start, end   int
	err          error
}

// bufSize is how much the chunker reads ahead: several maximum chunks, so
// that refills, which copy the unchunked tail, stay rare.
func (p Params) bufSize() int { return max(4*p.Max, 4<<20) }

// New returns a Chunker that reads r.
func New(r io.Reader, p Params) (*Chunker, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	c := &Chunker{r: r, p: p}
	c.maskS, c.maskL = p.masks()
	return c, nil
}

// Next returns the next chunk, or io.EOF after the last one. The returned
// slice is never reused by the Chunker: callers may keep it.
func (c *Chunker) Next() ([]byte, error) {
	if c.end-c.start < c.p.Max && c.err == nil {
		c.fill()
	}
	if c.start == c.end {
		if c.err == io.EOF {
			return nil, io.EOF
		}
		return nil, c.err
	}
	if c.end-c.start < c.p.Max && c.err != io.EOF {
		return nil, c.err // a read failed: the boundary would depend on it
	}
	data := c.buf[c.start:c.end]
	n := cut(data, c.p.Min, c.p.Avg, c.p.Max, c.maskS, c.maskL)
	c.start += n
	return data[:n:n], nil
}

// fill moves the unchunked tail into a fresh buffer, so that chunks already
// handed out stay valid, and reads until the buffer is full or the stream ends.
func (c *Chunker) fill() {
	buf := make([]byte, c.p.bufSize())
	n := copy(buf, c.buf[c.start:c.end])
	c.buf, c.start, c.end = buf, 0, n
	for c.end < len(c.buf) && c.err == nil {
		var m int
		m, c.err = c.r.Read(c.buf[c.end:])
		c.end += m
		if c.err == nil && m == 0 {
			c.err = io.ErrNoProgress
		}
	}
	if c.err != nil && !errors.Is(c.err, io.EOF) {
		c.err = fmt.Errorf("chunker: read: %w", c.err)
	} else if c.err != nil {
		c.err = io.EOF
	}
}
