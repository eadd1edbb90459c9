package imagemount_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mkbootfs/mkbootfs/imagemount"
	"github.com/mkbootfs/mkbootfs/internal/testtree"
	"github.com/mkbootfs/mkbootfs/profile"
	"github.com/mkbootfs/mkbootfs/store"
)

// TestMountPath opens a converted tree's store under a node cache, checks
// it, and prefetches a profile's chunks into the cache, each once; a
// store that does not hold the image fails the check.
func TestMountPath(t *testing.T) {
	ctx := context.Background()
	tree := t.TempDir()
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	for name, data := range map[string][]byte{"a": big, "b": append(big, 'x'), "dir/c": []byte("small")} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(tree, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(tree, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("a", filepath.Join(tree, "link")); err != nil {
		t.Fatal(err)
	}
	x, src := testtree.Convert(t, "dir:"+tree)

	st, err := imagemount.Open(ctx, []string{src.Dir()}, imagemount.Options{Cache: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	cache, ok := st.(*store.Cache)
	if !ok {
		t.Fatalf("Open with a cache directory returned a %T", st)
	}
	if err := imagemount.Check(ctx, x, cache, time.Minute); err != nil {
		t.Fatal(err)
	}

	// Only regular files of the image are kept of a profile.
	full := []profile.Range{{Off: 0, Len: int64(len(big))}}
	p := imagemount.RegularFiles(&profile.Profile{Files: []profile.File{
		{Path: "/a", Ranges: full}, {Path: "/b", Ranges: full}, {Path: "/dir", Ranges: full},
		{Path: "/link", Ranges: full}, {Path: "/missing", Ranges: full},
	}}, x)
	if len(p.Files) != 2 || p.Files[0].Path != "/a" || p.Files[1].Path != "/b" {
		t.Fatalf("profile files %v; want /a and /b", p.Files)
	}
	seen := map[store.ID]bool{}
	ids := imagemount.IDs(x, p.Chunks(x), seen)
	if again := imagemount.IDs(x, p.Chunks(x), seen); len(again) != 0 {
		t.Errorf("IDs gave %d chunks it had given already", len(again))
	}
	if fetched, failed := imagemount.Fetch(ctx, cache, ids, imagemount.ProfileWorkers); fetched != len(ids) || failed != 0 {
		t.Errorf("Fetch: %d fetched, %d failed; want %d, 0", fetched, failed, len(ids))
	}
	for _, id := range ids {
		if ok, err := src.Has(ctx, id); !ok || err != nil {
			t.Errorf("chunk %s of the profile is not the image's: %v", id.Short(), err)
		}
	}
	if misses := cache.Stats().Misses; misses != int64(len(ids)) {
		t.Errorf("%d chunks fetched from the store, want %d (the first, checked, is one of them)", misses, len(ids))
	}

	empty, err := imagemount.Open(ctx, []string{t.TempDir()}, imagemount.Options{Cache: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer empty.Close()
	if err := imagemount.Check(ctx, x, empty, time.Minute); err == nil {
		t.Error("Check passed on a store without the image's chunks")
	}
}
