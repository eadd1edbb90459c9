package snapshotter

import (
	"strings"
	"testing"

	"github.com/mkbootfs/mkbootfs/internal/testenv"
	"github.com/mkbootfs/mkbootfs/nodecache"
)

// The snapshotter's node cache takes the bound bootinit and mkbootfs
// mount take, in the same syntax, and hands it to every mount process;
// a bad one stops New with one error.
func TestCacheSize(t *testing.T) {
	testenv.Root(t)
	for _, tc := range []struct {
		size string
		want func(cache string) int64
		err  string
	}{
		{"", func(string) int64 { return 0 }, ""}, // nodecache's default, chosen by each mount process
		{"30M", func(string) int64 { return 30 << 20 }, ""},
		{"10%", func(cache string) int64 { n, _ := nodecache.ParseSize("10%", cache); return n }, ""},
		{"lots", nil, "node cache size"},
	} {
		t.Run(tc.size, func(t *testing.T) {
			root := t.TempDir()
			s, err := New(Options{Root: root, CacheSize: tc.size})
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("New with --cache-size %q: %v; want an error saying %q", tc.size, err, tc.err)
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
		})
	}
}
