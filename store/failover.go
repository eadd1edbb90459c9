package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
)

// failoverCooldown is how long a store that failed is tried after the
// others, so that a dead mirror costs one timeout, not one per chunk.
const failoverCooldown = 30 * time.Second

// hedgeAfter is how long a read waits on a store that does not answer
// before it asks the next store too: a hung or unreachable mirror (a
// SIGSTOPped server, a dial into a black hole) must not take a read's whole
// deadline while another store could serve it. It is well above a chunk's
// fetch time on a slow link (256 KiB at 25 Mbit/s with 8 in flight: 0.7 s).
const hedgeAfter = 2 * time.Second

// Failover returns a store that reads a chunk from the first of stores
// that has it and verifies, and writes to the first store. A store that
// fails (other than by missing the chunk), or that another store answered
// before while it said nothing for hedgeAfter, moves behind the others for
// a while; a chunk missing everywhere is ErrNotFound.
func Failover(stores ...Store) Store {
	if len(stores) == 1 {
		return stores[0]
	}
	return &failover{stores: stores, downUntil: make([]time.Time, len(stores))}
}

type failover struct {
	stores []Store

	mu        sync.Mutex
	downUntil []time.Time
}

func (f *failover) String() string {
	names := make([]string, len(f.stores))
	for i, s := range f.stores {
		names[i] = s.String()
	}
	return strings.Join(names, ",")
}

func (f *failover) Close() error {
	var errs []error
	for _, s := range f.stores {
		errs = append(errs, s.Close())
	}
	return errors.Join(errs...)
}

func (f *failover) Put(ctx context.Context, id ID, compressed []byte) error {
	if len(f.stores) == 0 {
		return &ChunkError{ID: id, Store: "an empty store list", Err: ErrReadOnly}
	}
	return f.stores[0].Put(ctx, id, compressed)
}

func (f *failover) Get(ctx context.Context, id ID) ([]byte, error) {
	return each(f, ctx, id, func(ctx context.Context, s Store) ([]byte, error) { return s.Get(ctx, id) })
}

// Load verifies each store's copy before it takes it, so a corrupt chunk in
// one store is read from the next.
func (f *failover) Load(ctx context.Context, id ID) ([]byte, error) {
	return each(f, ctx, id, func(ctx context.Context, s Store) ([]byte, error) { return Load(ctx, s, id) })
}

func (f *failover) Has(ctx context.Context, id ID) (bool, error) {
	ok, err := each(f, ctx, id, func(ctx context.Context, s Store) (bool, error) {
		ok, err := s.Has(ctx, id)
		if err == nil && !ok {
			return false, ErrNotFound
		}
		return ok, err
	})
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return ok, err
}

// each calls fn on the stores, healthy ones first, until one succeeds: the
// next store is asked as soon as one fails, or when the stores asked have
// not answered for hedgeAfter; then the first success wins.
func each[T any](f *failover, ctx context.Context, id ID, fn func(context.Context, Store) (T, error)) (T, error) {
	var zero T
	order := f.order()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		i   int
		v   T
		err error
	}
	results := make(chan result, len(order))
	pending := map[int]bool{}
	asked := 0
	hedge := time.NewTimer(hedgeAfter)
	defer hedge.Stop()
	ask := func() {
		i := order[asked]
		asked++
		pending[i] = true
		go func() {
			v, err := fn(ctx, f.stores[i])
			results <- result{i, v, err}
		}()
		hedge.Reset(hedgeAfter)
	}
	ask()
	var errs []error
	for len(pending) > 0 {
		var next <-chan time.Time
		if asked < len(order) {
			next = hedge.C
		}
		select {
		case <-next:
			ask()
		case <-ctx.Done():
			// The caller gave up: say so, and blame no store.
			return zero, &ChunkError{ID: id, Store: f.String(), Err: ctx.Err()}
		case r := <-results:
			delete(pending, r.i)
			switch err := r.err; {
			case err == nil:
				f.mark(r.i, time.Time{})
				for i := range pending { // asked first, and silent since
					f.mark(i, time.Now().Add(failoverCooldown))
				}
				return r.v, nil
			case ctx.Err() != nil:
				if errors.Is(err, ctx.Err()) {
					return zero, err
				}
				return zero, &ChunkError{ID: id, Store: f.String(), Err: fmt.Errorf("%w (%v)", ctx.Err(), err)}
			case errors.Is(err, ErrNotFound):
			case errors.Is(err, ErrCorrupt): // the chunk's fault, not the store's
				errs = append(errs, err)
			default:
				f.mark(r.i, time.Now().Add(failoverCooldown))
				errs = append(errs, err)
			}
			if asked < len(order) {
				ask()
			}
		}
	}
	if len(errs) == 0 {
		return zero, &ChunkError{ID: id, Store: f.String(), Err: ErrNotFound}
	}
	if len(errs) == 1 {
		return zero, errs[0]
	}
	return zero, fmt.Errorf("every store failed: %w", errors.Join(errs...))
}

// order returns the store indexes, stores that failed lately last.
func (f *failover) order() []int {
	now := time.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	up := make([]int, 0, len(f.stores))
	var down []int
	for i, t := range f.downUntil {
		if now.Before(t) {
			down = append(down, i)
		} else {
			up = append(up, i)
		}
	}
	return append(up, down...)
}

func (f *failover) mark(i int, until time.Time) {
	f.mu.Lock()
	f.downUntil[i] = until
	f.mu.Unlock()
}
