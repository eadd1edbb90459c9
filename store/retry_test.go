package store_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/local"
	"github.com/mkbootfs/mkbootfs/store/storetest"
)

// flaky is a local store that fails the way a remote one does: fail is
// called before every operation with the 1-based call number, and its
// error, if any, is returned instead of the operation's.
type flaky struct {
	store.Store
	fail func(ctx context.Context, call int) error

	mu    sync.Mutex
	calls int
}

func newFlaky(t *testing.T, fail func(ctx context.Context, call int) error) *flaky {
	t.Helper()
	l, err := local.Open(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	return &flaky{Store: l, fail: fail}
}

func (f *flaky) hit(ctx context.Context) error {
	f.mu.Lock()
	f.calls++
	n := f.calls
	f.mu.Unlock()
	if f.fail == nil {
		return nil
	}
	return f.fail(ctx, n)
}

func (f *flaky) Calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func (f *flaky) Get(ctx context.Context, id store.ID) ([]byte, error) {
	if err := f.hit(ctx); err != nil {
		return nil, err
	}
	return f.Store.Get(ctx, id)
}

func (f *flaky) Has(ctx context.Context, id store.ID) (bool, error) {
	if err := f.hit(ctx); err != nil {
		return false, err
	}
	return f.Store.Has(ctx, id)
}

func (f *flaky) Put(ctx context.Context, id store.ID, b []byte) error {
	if err := f.hit(ctx); err != nil {
		return err
	}
	return f.Store.Put(ctx, id, b)
}

// fast keeps the tests' backoff short.
var fast = store.RetryOptions{Attempts: 4, MinDelay: time.Millisecond, MaxDelay: 4 * time.Millisecond}

func TestRetryConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) *storetest.Backend {
		l, err := local.Open(t.TempDir(), false)
		if err != nil {
			t.Fatal(err)
		}
		return &storetest.Backend{Store: store.Retry(l, fast), Corrupt: storetest.CorruptLocal(l)}
	})
}

var errTransient = errors.New("connection reset by peer")

func TestRetry(t *testing.T) {
	data := storetest.Chunk(1, 5000)
	id := store.Sum(data)
	failFirst := func(n int, err error) func(context.Context, int) error {
		return func(_ context.Context, call int) error {
			if call <= n {
				return err
			}
			return nil
		}
	}
	for _, tc := range []struct {
		name    string
		opt     store.RetryOptions
		fail    func(ctx context.Context, call int) error
		op      string // get, load, has or put
		calls   int
		wantErr error // nil for success
	}{
		{name: "transient then success", fail: failFirst(3, errTransient), op: "load", calls: 4},
		{name: "transient Has", fail: failFirst(1, errTransient), op: "has", calls: 2},
		{name: "transient Put", fail: failFirst(2, errTransient), op: "put", calls: 3},
		{name: "gives up", fail: failFirst(100, errTransient), op: "get", calls: 4, wantErr: errTransient},
		{name: "one attempt", opt: store.RetryOptions{Attempts: 1}, fail: failFirst(100, errTransient), op: "get", calls: 1, wantErr: errTransient},
		{name: "not found is final", fail: failFirst(100, fmt.Errorf("x: %w", store.ErrNotFound)), op: "get", calls: 1, wantErr: store.ErrNotFound},
		{name: "corrupt is final", fail: failFirst(100, fmt.Errorf("x: %w", store.ErrCorrupt)), op: "load", calls: 1, wantErr: store.ErrCorrupt},
		{name: "read-only is final", fail: failFirst(100, fmt.Errorf("x: %w", store.ErrReadOnly)), op: "put", calls: 1, wantErr: store.ErrReadOnly},
		{name: "permanent is final", fail: failFirst(100, store.Permanent(errTransient)), op: "has", calls: 1, wantErr: errTransient},
		{
			name: "attempt times out",
			opt:  store.RetryOptions{Timeout: 50 * time.Millisecond},
			fail: func(ctx context.Context, call int) error {
				if call == 1 { // a stalled server: only the attempt's timeout ends it
					<-ctx.Done()
					return ctx.Err()
				}
				return nil
			},
			op: "load", calls: 2,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFlaky(t, nil)
			if err := f.Store.Put(context.Background(), id, store.Encode(data)); err != nil {
				t.Fatal(err)
			}
			f.fail = tc.fail
			opt := tc.opt
			opt.MinDelay, opt.MaxDelay = fast.MinDelay, fast.MaxDelay
			s := store.Retry(f, opt)
			ctx := context.Background()
			var err error
			switch tc.op {
			case "get":
				_, err = s.Get(ctx, id)
			case "load":
				var got []byte
				if got, err = store.Load(ctx, s, id); err == nil && string(got) != string(data) {
					t.Fatal("Load returned wrong bytes")
				}
			case "has":
				var ok bool
				if ok, err = s.Has(ctx, id); err == nil && !ok {
					t.Fatal("Has = false")
				}
			case "put":
				err = s.Put(ctx, id, store.Encode(data))
			}
			if tc.wantErr == nil && err != nil || tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("%s: %v; want %v", tc.op, err, tc.wantErr)
			}
			if got := f.Calls(); got != tc.calls {
				t.Errorf("%d calls, want %d", got, tc.calls)
			}
			if tc.wantErr != nil && tc.calls > 1 && !strings.Contains(err.Error(), fmt.Sprintf("after %d attempts", tc.calls)) {
				t.Errorf("error %q does not say how many attempts were made", err)
			}
		})
	}
}

// TestRetryCancelDuringBackoff cancels the caller's context while Retry
// waits an hour to retry: it returns at once with the last error.
func TestRetryCancelDuringBackoff(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := newFlaky(t, func(_ context.Context, call int) error {
		if call == 1 {
			time.AfterFunc(10*time.Millisecond, cancel)
		}
		return errTransient
	})
	s := store.Retry(f, store.RetryOptions{MinDelay: time.Hour})
	if _, err := s.Get(ctx, store.ID{}); !errors.Is(err, errTransient) {
		t.Fatalf("Get: %v; want the transient error", err)
	}
	if n := f.Calls(); n != 1 {
		t.Fatalf("%d calls, want 1", n)
	}
}

// Under a deadline, a transient error is retried until the deadline, not
// a number of times: a store restarting for less than the fetch timeout
// costs a delay. With no time left, it gives up, saying how often it tried.
func TestRetryUntilDeadline(t *testing.T) {
	data := storetest.Chunk(2, 5000)
	id := store.Sum(data)
	f := newFlaky(t, func(_ context.Context, call int) error {
		if call <= 50 {
			return errTransient
		}
		return nil
	})
	if err := f.Store.Put(context.Background(), id, store.Encode(data)); err != nil {
		t.Fatal(err)
	}
	s := store.Retry(f, store.RetryOptions{MinDelay: fast.MinDelay, MaxDelay: fast.MaxDelay})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if got, err := store.Load(ctx, s, id); err != nil || string(got) != string(data) {
		t.Fatalf("Load = %d bytes, %v; want the chunk after 50 failures", len(got), err)
	}
	if n := f.Calls(); n != 51 {
		t.Errorf("%d calls, want 51", n)
	}

	down := newFlaky(t, func(context.Context, int) error { return errTransient })
	ctx, cancel = context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := store.Retry(down, store.RetryOptions{MinDelay: fast.MinDelay, MaxDelay: fast.MaxDelay}).Get(ctx, id)
	if !errors.Is(err, errTransient) && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Get from a store down past the deadline: %v", err)
	}
	if n := down.Calls(); n <= 4 {
		t.Errorf("%d calls before the deadline; want more than the 4 of an operation with none", n)
	}
	// Not found and corrupt are final under a deadline too.
	gone := newFlaky(t, func(context.Context, int) error { return fmt.Errorf("x: %w", store.ErrNotFound) })
	if _, err := store.Retry(gone, store.RetryOptions{}).Get(ctx, id); !errors.Is(err, store.ErrNotFound) || gone.Calls() != 1 {
		t.Errorf("Get of a missing chunk: %v after %d calls, want not found after 1", err, gone.Calls())
	}
}
