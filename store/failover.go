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

// Failover returns a store that reads a chunk from the first of stores
// that has it and verifies, and writes to the first store. A store that
// fails (other than by missing the chunk) moves behind the others for a
// while; a chunk missing everywhere is ErrNotFound.
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

func (f *failover) Get(ctx context.Context, id ID) (b []byte, err error) {
	err = f.each(ctx, id, func(s Store) (err error) { b, err = s.Get(ctx, id); return err })
	return b, err
}

// Load verifies each store's copy before it takes it, so a corrupt chunk in
// one store is read from the next.
func (f *failover) Load(ctx context.Context, id ID) (b []byte, err error) {
	err = f.each(ctx, id, func(s Store) (err error) { b, err = Load(ctx, s, id); return err })
	return b, err
}

func (f *failover) Has(ctx context.Context, id ID) (bool, error) {
	err := f.each(ctx, id, func(s Store) error {
		ok, err := s.Has(ctx, id)
		if err == nil && !ok {
			return ErrNotFound
		}
		return err
	})
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// each calls fn on the stores, healthy ones first, until one succeeds.
func (f *failover) each(ctx context.Context, id ID, fn func(Store) error) error {
	var errs []error
	for _, i := range f.order() {
		if ctx.Err() != nil {
			return &ChunkError{ID: id, Store: f.String(), Err: ctx.Err()}
		}
		err := fn(f.stores[i])
		switch {
		case err == nil:
			f.mark(i, time.Time{})
			return nil
		case ctx.Err() != nil: // the caller gave up: say so, and blame no store
			if errors.Is(err, ctx.Err()) {
				return err
			}
			return &ChunkError{ID: id, Store: f.String(), Err: fmt.Errorf("%w (%v)", ctx.Err(), err)}
		case errors.Is(err, ErrNotFound):
			continue
		case !errors.Is(err, ErrCorrupt): // a corrupt chunk is the chunk's fault, not the store's
			f.mark(i, time.Now().Add(failoverCooldown))
		}
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return &ChunkError{ID: id, Store: f.String(), Err: ErrNotFound}
	}
	if len(errs) == 1 {
		return errs[0]
	}
	return fmt.Errorf("every store failed: %w", errors.Join(errs...))
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
