package snapshotter

import (
	"strings"
	"testing"
	"time"

	"github.com/mkbootfs/mkbootfs/internal/testenv"
	"github.com/mkbootfs/mkbootfs/nodecache"
)

// The snapshotter's node cache takes the bound and the age bootinit and
// mkbootfs mount take, in the same syntax, and hands them to every mount
// process; a bad one stops New with one error.
func TestCacheSize(t *testing.T) {
	testenv.Root(t)
	for _, tc := range []struct {
		size, maxAge string
		want         func(cache string) int64
		wantAge      time.Duration
		err          string
	}{
		{"", "", func(string) int64 { return 0 }, 0, ""}, // nodecache's defaults, chosen by each mount process
		{"30M", "72h", func(string) int64 { return 30 << 20 }, 72 * time.Hour, ""},
		{"10%", "", func(cache string) int64 { n, _ := nodecache.ParseSize("10%", cache); return n }, 0, ""},
		{"lots", "", nil, 0, "node cache size"},
		{"", "7d", nil, 0, `node cache: max age "7d"`},
	} {
		t.Run(tc.size+"/"+tc.maxAge, func(t *testing.T) {
			root := t.TempDir()
			s, err := New(Options{Root: root, CacheSize: tc.size, CacheMaxAge: tc.maxAge})
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("New with --cache-size %q --cache-max-age %q: %v; want an error saying %q", tc.size, tc.maxAge, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if want := tc.want(s.mounts.cache); s.mounts.cacheSize != want || (tc.size != "" && want <= 0) {
				t.Errorf("--cache-size %q: the mounts get %d, want %d", tc.size, s.mounts.cacheSize, want)
			}
			if s.mounts.cacheMaxAge != tc.wantAge {
				t.Errorf("--cache-max-age %q: the mounts get %v, want %v", tc.maxAge, s.mounts.cacheMaxAge, tc.wantAge)
			}
		})
	}
}
