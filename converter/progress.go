package converter

import (
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// progress prints one self-updating line on a terminal; with no writer it
// only counts.
type progress struct {
	w       io.Writer
	start   time.Time
	layers  atomic.Value // string
	bytes   atomic.Int64
	chunks  atomic.Int64
	written atomic.Int64
	stop    chan struct{}
	done    sync.WaitGroup
}

func newProgress(w io.Writer) *progress {
	p := &progress{w: w, start: time.Now(), stop: make(chan struct{})}
	p.layers.Store("")
	if w != nil {
		p.done.Add(1)
		go p.loop()
	}
	return p
}

func (p *progress) layerDone(i, n int) { p.layers.Store(fmt.Sprintf("layers %d/%d, ", i, n)) }

func (p *progress) loop() {
	defer p.done.Done()
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			p.print()
			fmt.Fprintln(p.w)
			return
		case <-t.C:
			p.print()
		}
	}
}

func (p *progress) print() {
	mb := float64(p.bytes.Load()) / 1e6
	rate := mb / max(time.Since(p.start).Seconds(), 1e-3)
	fmt.Fprintf(p.w, "\r%s%.1f MB chunked, %d chunks, %d written, %.0f MB/s ",
		p.layers.Load(), mb, p.chunks.Load(), p.written.Load(), rate)
}

func (p *progress) close() {
	if p.w != nil {
		close(p.stop)
		p.done.Wait()
	}
}
