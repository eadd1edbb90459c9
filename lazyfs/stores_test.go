package lazyfs_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/mkbootfs/mkbootfs/converter"
	"github.com/mkbootfs/mkbootfs/internal/testserver"
	"github.com/mkbootfs/mkbootfs/internal/testtree"
	"github.com/mkbootfs/mkbootfs/lazyfs"
	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/local"
	"github.com/mkbootfs/mkbootfs/store/location"
)

// Convert into each kind of remote store and mount from it, through the
// cache, as a container would: the tree must come back exactly.
func TestConvertAndMountFromEveryStore(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	os.Mkdir(src, 0o755)
	testtree.Build(t, src)

	for _, tc := range []struct {
		name  string
		start func(t *testing.T) (string, location.Options)
	}{
		{"http, mkbootfs serve", func(t *testing.T) (string, location.Options) {
			l, err := local.Open(t.TempDir(), true)
			if err != nil {
				t.Fatal(err)
			}
			return testserver.HTTP(t, l, true), location.Options{}
		}},
		{"http, nginx", func(t *testing.T) (string, location.Options) {
			return testserver.Nginx(t, t.TempDir(), true), location.Options{}
		}},
		{"ssh, OpenSSH", func(t *testing.T) (string, location.Options) {
			d := testserver.StartSSHD(t)
			return "ssh://" + d.User + "@" + d.Addr + t.TempDir(), location.Options{SSHKey: d.ClientKey.File, KnownHosts: d.KnownHosts}
		}},
		{"ssh, mkbootfs serve", func(t *testing.T) (string, location.Options) {
			d := testserver.SSH(t, t.TempDir(), true)
			return "ssh://" + d.User + "@" + d.Addr + "/", location.Options{SSHKey: d.ClientKey.File, KnownHosts: d.KnownHosts}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url, opts := tc.start(t)
			ctx := context.Background()
			w, err := location.Open(ctx, url, opts)
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			res, err := converter.Convert(ctx, converter.Options{Source: "dir:" + src, Store: w, StoreURLs: []string{url}})
			if err != nil {
				t.Fatal(err)
			}
			r, err := location.OpenList(ctx, []string{url}, opts)
			if err != nil {
				t.Fatal(err)
			}
			cacheDir, err := local.Open(t.TempDir(), true)
			if err != nil {
				t.Fatal(err)
			}
			c, err := store.NewCache(cacheDir, r)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() }) // before its directory goes
			srv, mnt := mountFS(t, res.Index, c, lazyfs.Options{})
			if diff := testtree.Diff(t, src, mnt); diff != "" {
				t.Fatalf("mounted from %s, the tree differs:\n%s", url, diff)
			}
			if st := srv.Stats(); st.Cache == nil || st.Cache.Misses == 0 {
				t.Fatalf("nothing was fetched from %s: %+v", url, st)
			}
		})
	}
}
