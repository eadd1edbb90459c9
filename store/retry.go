package store

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"syscall"
	"time"
)

// RetryOptions bound the retries of Retry. Zero fields take the defaults.
type RetryOptions struct {
	// Attempts caps how many times an operation is tried, the first
	// included. By default an operation whose context has a deadline is
	// tried until the deadline, so that a store restarting for less than
	// the fetch timeout costs a read a delay, not an error; one without a
	// deadline is tried 4 times.
	Attempts int
	// Timeout bounds one attempt (default 1 minute; negative for none).
	Timeout time.Duration
	// MinDelay is the wait before the first retry (default 100ms); each
	// retry doubles it up to MaxDelay (default 2s: a store that comes back
	// is found within 2 s), and jitter takes up to half of it off so that
	// many readers do not retry in step.
	MinDelay, MaxDelay time.Duration
}

// noDeadlineAttempts bounds the tries of an operation with no deadline.
const noDeadlineAttempts = 4

func (o RetryOptions) withDefaults() RetryOptions {
	if o.Timeout == 0 {
		o.Timeout = time.Minute
	}
	if o.MinDelay <= 0 {
		o.MinDelay = 100 * time.Millisecond
	}
	if o.MaxDelay < o.MinDelay {
		o.MaxDelay = max(2*time.Second, o.MinDelay)
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

// Retry wraps s so that transient errors (a refused or dropped connection,
// a 503, an attempt that timed out) are retried with capped exponential
// backoff and jitter, until the context's deadline. A refused connection
// is retried only once the store has answered: a store that refuses from
// the first request is a wrong address (a container's own loopback, a
// typo), to be told at once, not after the deadline.
//
// Over Failover, Retry goes outside: one attempt asks each store once, a
// store that failed moving behind the others, so a dead mirror costs one
// refused connection, not the whole deadline; when every store fails, the
// attempts go on, with backoff, until one answers or the deadline comes.
func Retry(s Store, opt RetryOptions) Store {
	return &retry{s: s, opt: opt.withDefaults()}
}

type retry struct {
	s        Store
	opt      RetryOptions
	answered atomic.Bool // the store answered once: it is there
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
	deadline, bounded := ctx.Deadline()
	attempts := r.opt.Attempts
	if attempts <= 0 && !bounded {
		attempts = noDeadlineAttempts
	}
	start := time.Now()
	for attempt := 1; ; attempt++ {
		err := r.attempt(ctx, fn)
		if err == nil || errors.Is(err, ErrNotFound) || errors.Is(err, ErrCorrupt) {
			r.answered.Store(true)
		}
		if err == nil || !retryable(ctx, err) || !r.answered.Load() && onlyRefused(err) {
			return err
		}
		wait := backoff(attempt, r.opt.MinDelay, r.opt.MaxDelay)
		if bounded {
			// One more try just before the deadline rather than none.
			wait = min(wait, time.Until(deadline)/2)
		}
		if attempt == attempts || wait < r.opt.MinDelay/2 {
			return fmt.Errorf("%w (gave up after %d attempts in %v)", err, attempt, time.Since(start).Round(time.Millisecond))
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}

// onlyRefused reports whether err is a refused connection, or every
// error it joins is (a Failover's stores all refused).
func onlyRefused(err error) bool {
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return false
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			if !onlyRefused(e) {
				return false
			}
		}
		return true
	}
	if u := errors.Unwrap(err); u != nil {
		return onlyRefused(u)
	}
	return true
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
