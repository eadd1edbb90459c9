package store

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// RetryOptions bound the retries of Retry. Zero fields take the defaults.
type RetryOptions struct {
	// Attempts is how many times an operation is tried, the first included
	// (default 4).
	Attempts int
	// Timeout bounds one attempt (default 1 minute; negative for none).
	Timeout time.Duration
	// MinDelay is the wait before the first retry (default 100ms); each
	// retry doubles it up to MaxDelay (default 5s), and jitter takes up to
	// half of it off so that many readers do not retry in step.
	MinDelay, MaxDelay time.Duration
}

func (o RetryOptions) withDefaults() RetryOptions {
	if o.Attempts <= 0 {
		o.Attempts = 4
	}
	if o.Timeout == 0 {
		o.Timeout = time.Minute
	}
	if o.MinDelay <= 0 {
		o.MinDelay = 100 * time.Millisecond
	}
	if o.MaxDelay < o.MinDelay {
		o.MaxDelay = max(5*time.Second, o.MinDelay)
	}
	return o
}

// Permanent marks err as one that retrying cannot fix: a refused key or
// host key, a request the server will never accept.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err}
}

type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// retryable reports whether err, from an attempt under the parent context
// ctx, may go away on another try. A missing or corrupt chunk does not: the
// next attempt reads the same bytes.
func retryable(ctx context.Context, err error) bool {
	var perm *permanentError
	switch {
	case ctx.Err() != nil,
		errors.Is(err, ErrNotFound), errors.Is(err, ErrCorrupt), errors.Is(err, ErrReadOnly),
		errors.As(err, &perm):
		return false
	}
	return true
}

// Retry wraps s so that transient errors (a dropped connection, a 503, an
// attempt that timed out) are retried with exponential backoff and jitter.
func Retry(s Store, opt RetryOptions) Store {
	return &retry{s: s, opt: opt.withDefaults()}
}

type retry struct {
	s   Store
	opt RetryOptions
}

func (r *retry) String() string { return r.s.String() }
func (r *retry) Close() error   { return r.s.Close() }

func (r *retry) Get(ctx context.Context, id ID) (b []byte, err error) {
	err = r.do(ctx, func(ctx context.Context) (err error) { b, err = r.s.Get(ctx, id); return err })
	return b, err
}

func (r *retry) Load(ctx context.Context, id ID) (b []byte, err error) {
	err = r.do(ctx, func(ctx context.Context) (err error) { b, err = Load(ctx, r.s, id); return err })
	return b, err
}

func (r *retry) Has(ctx context.Context, id ID) (ok bool, err error) {
	err = r.do(ctx, func(ctx context.Context) (err error) { ok, err = r.s.Has(ctx, id); return err })
	return ok, err
}

// Put is retried like a read: putting a chunk twice is harmless.
func (r *retry) Put(ctx context.Context, id ID, compressed []byte) error {
	return r.do(ctx, func(ctx context.Context) error { return r.s.Put(ctx, id, compressed) })
}

func (r *retry) do(ctx context.Context, fn func(context.Context) error) error {
	for attempt := 1; ; attempt++ {
		err := r.attempt(ctx, fn)
		if err == nil || !retryable(ctx, err) {
			return err
		}
		if attempt == r.opt.Attempts {
			return fmt.Errorf("%w (gave up after %d attempts)", err, attempt)
		}
		t := time.NewTimer(backoff(attempt, r.opt.MinDelay, r.opt.MaxDelay))
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}

func (r *retry) attempt(ctx context.Context, fn func(context.Context) error) error {
	if r.opt.Timeout < 0 {
		return fn(ctx)
	}
	ctx, cancel := context.WithTimeout(ctx, r.opt.Timeout)
	defer cancel()
	return fn(ctx)
}

// backoff returns the wait after the given failed attempt (1-based): the
// delay doubles from lo up to hi, less a random part of up to half.
func backoff(attempt int, lo, hi time.Duration) time.Duration {
	d := lo
	for i := 1; i < attempt && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	return d - rand.N(d/2+1)
}
