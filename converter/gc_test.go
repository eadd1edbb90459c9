package converter_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mkbootfs/mkbootfs/converter"
	"github.com/mkbootfs/mkbootfs/extract"
	"github.com/mkbootfs/mkbootfs/internal/testtree"
	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/local"
	"github.com/mkbootfs/mkbootfs/store/storetest"
)

// pausing is a local store that stops the conversion once Keep found at
// chunks present, until resume is closed.
type pausing struct {
	*local.Store
	at     int32
	n      atomic.Int32
	paused chan struct{}
	resume chan struct{}
}

func (p *pausing) Keep(ctx context.Context, id store.ID) (bool, error) {
	ok, err := p.Store.Keep(ctx, id)
	if ok && p.n.Add(1) == p.at {
		close(p.paused)
		<-p.resume
	}
	return ok, err
}

// A conversion that reuses chunks and a garbage collection that no index
// keeps them for, at once: the conversion stops after it found 20 chunks
// present, the store is collected, the conversion goes on. With a grace
// period longer than the pause, the conversion's index is whole; with
// none, the conversion fails saying why, and writes no index.
func TestConvertDuringGC(t *testing.T) {
	for _, tc := range []struct {
		name      string
		keepNewer time.Duration
		fails     bool
	}{
		{"grace period", time.Hour, false},
		{"no grace period", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			src := t.TempDir()
			for i := range 4 {
				os.WriteFile(filepath.Join(src, "old"+string(rune('a'+i))), storetest.Chunk(uint64(i), 1<<20), 0o644)
			}
			ls, err := local.Open(t.TempDir(), true)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := converter.Convert(ctx, converter.Options{Source: "dir:" + src, Store: ls}); err != nil {
				t.Fatal(err)
			}
			// The image is old and dropped: no index keeps its chunks.
			then := time.Now().Add(-2 * time.Hour)
			ls.Walk(func(id store.ID) error { return os.Chtimes(ls.Path(id), then, then) })
			os.WriteFile(filepath.Join(src, "new"), storetest.Chunk(99, 1<<20), 0o644)

			p := &pausing{Store: ls, at: 20, paused: make(chan struct{}), resume: make(chan struct{})}
			type result struct {
				res *converter.Result
				err error
			}
			done := make(chan result, 1)
			go func() {
				res, err := converter.Convert(ctx, converter.Options{Source: "dir:" + src, Store: p})
				done <- result{res, err}
			}()
			select {
			case <-p.paused:
			case r := <-done:
				t.Fatalf("the conversion ended before it found 20 chunks present (Keep): %v", r.err)
			case <-time.After(time.Minute):
				t.Fatal("the conversion did not find 20 chunks present (Keep) in a minute")
			}
			time.Sleep(20 * time.Millisecond) // past the file system's clock tick
			st, err := ls.GC(ctx, nil, local.GCOptions{KeepNewer: tc.keepNewer})
			close(p.resume)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("GC during the conversion: %+v", st)
			var r result
			select {
			case r = <-done:
			case <-time.After(time.Minute):
				t.Fatal("the conversion did not end a minute after the collection")
			}
			if tc.fails {
				if !errors.Is(r.err, store.ErrCollected) {
					t.Fatalf("the conversion under a collection with no grace period: %v; want an error saying %q", r.err, store.ErrCollected)
				}
				t.Log(r.err)
				return
			}
			if r.err != nil {
				t.Fatal(r.err)
			}
			if st.Recent < 20 || st.Removed == 0 {
				t.Errorf("the collection kept %d chunks for their time and removed %d; want the 20 the conversion found, and some removed", st.Recent, st.Removed)
			}
			out := filepath.Join(t.TempDir(), "out")
			if _, err := extract.Extract(ctx, r.res.Index, ls, out, extract.Options{}); err != nil {
				t.Fatalf("extracting the conversion made during the collection: %v", err)
			}
			if diff := testtree.Diff(t, src, out); diff != "" {
				t.Fatalf("the extracted tree differs from the source:\n%s", diff)
			}
		})
	}
}
