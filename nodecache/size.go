package nodecache

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Default bound: a tenth of the cache's filesystem, at least 1 GiB (or
// half a filesystem smaller than 2 GiB), at most 20 GiB. A node's disk also
// holds docker's images and containers, and kubelet's image collector
// starts at 85% full: a tenth leaves them room. 20 GiB holds the working
// sets of a few hundred images and the trees of dozens; past that, what a
// node has not started in days is better fetched again.
const (
	defaultFraction = 10
	defaultMin      = 1 << 30
	defaultMax      = 20 << 30
)

// DefaultMaxSize is the bound of a cache at dir when none is given.
func DefaultMaxSize(dir string) int64 {
	fsSize := filesystemSize(dir)
	if fsSize <= 0 {
		return defaultMin
	}
	return min(max(fsSize/defaultFraction, min(defaultMin, fsSize/2)), defaultMax)
}

func filesystemSize(dir string) int64 {
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) != nil {
		return 0
	}
	return int64(st.Blocks) * st.Bsize
}

// ParseSize parses a size: bytes, or a number with a unit K, M, G or T
// (powers of 1024, as docker's --memory; KB, KiB, k... alike), or a
// percentage of the filesystem that holds dir ("10%").
func ParseSize(s, dir string) (int64, error) {
	t := strings.TrimSpace(s)
	bad := fmt.Errorf("size %q: want bytes, a number with K, M, G or T (e.g. 30M, 2G), or a percentage of the cache's filesystem (e.g. 10%%)", s)
	if p, ok := strings.CutSuffix(t, "%"); ok {
		f, err := strconv.ParseFloat(p, 64)
		if err != nil || f <= 0 || f > 100 {
			return 0, bad
		}
		fsSize := filesystemSize(dir)
		if fsSize <= 0 {
			return 0, fmt.Errorf("size %q: cannot tell the size of the filesystem of %s; give bytes", s, dir)
		}
		return int64(f / 100 * float64(fsSize)), nil
	}
	u := strings.ToUpper(t)
	u = strings.TrimSuffix(strings.TrimSuffix(u, "B"), "I")
	mult := 1.0
	if n := len(u); n > 0 {
		if i := strings.IndexByte("KMGT", u[n-1]); i >= 0 {
			mult = math.Pow(1024, float64(i+1))
			u = u[:n-1]
		}
	}
	f, err := strconv.ParseFloat(strings.TrimSpace(u), 64)
	if err != nil || f < 0 || math.IsInf(f, 0) || math.IsNaN(f) || f*mult > math.MaxInt64/2 {
		return 0, bad
	}
	return int64(f * mult), nil
}

// ParseMaxAge parses how long trees and profiles are kept unused
// (Options.MaxAge): a Go duration above 0, such as 72h or 90m.
func ParseMaxAge(s string) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("max age %q: want a duration above 0 in hours, minutes or seconds, such as 72h, 90m or 1h30m (a week is 168h)", s)
	}
	return d, nil
}

// FormatSize writes n bytes for people: 1.5G, 30M, 512K, 100B.
func FormatSize(n int64) string {
	const units = "KMGT"
	f := float64(n)
	if f < 1024 {
		return fmt.Sprintf("%dB", n)
	}
	i := -1
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if f < 10 {
		return strings.TrimSuffix(fmt.Sprintf("%.1f", f), ".0") + units[i:i+1]
	}
	return fmt.Sprintf("%.0f%c", f, units[i])
}
