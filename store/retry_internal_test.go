package store

import (
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	const lo, hi = 100 * time.Millisecond, 5 * time.Second
	for _, tc := range []struct {
		attempt int
		max     time.Duration
	}{
		{1, lo}, {2, 2 * lo}, {3, 4 * lo}, {6, 3200 * time.Millisecond}, {7, hi}, {100, hi},
	} {
		for range 100 {
			if d := backoff(tc.attempt, lo, hi); d < tc.max/2 || d > tc.max {
				t.Fatalf("backoff(%d) = %v, want within [%v, %v]", tc.attempt, d, tc.max/2, tc.max)
			}
		}
	}
}
