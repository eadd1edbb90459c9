package converter_test

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/converter"
	"github.com/mkbootfs/mkbootfs/extract"
	"github.com/mkbootfs/mkbootfs/internal/testenv"
	"github.com/mkbootfs/mkbootfs/internal/testtree"
	"github.com/mkbootfs/mkbootfs/store/local"
)

func TestEdgeCaseTreeRoundTrip(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	os.Mkdir(src, 0o755)
	testtree.Build(t, src)
	out := extracted(t, "dir:"+src)
	if diff := testtree.Diff(t, src, out); diff != "" {
		t.Fatalf("extracted tree differs from the source:\n%s", diff)
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(out, "sparse"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 > 1<<20 {
		t.Errorf("sparse file extracted with %d bytes allocated: holes were filled", st.Blocks*512)
	}
}

func TestSparseHolesCostNothing(t *testing.T) {
	src := t.TempDir()
	f, _ := os.Create(filepath.Join(src, "huge-hole"))
	f.WriteAt([]byte("end"), 1<<30)
	f.Close()
	x, _ := testtree.Convert(t, "dir:"+src)
	if x.StreamSize() > 4096 {
		t.Errorf("a 1 GiB hole took %d bytes of the data stream", x.StreamSize())
	}
}

// debianStore is the store of every conversion of the Debian rootfs (from
// a directory, from each image source, with a static profile): after the
// first, a conversion finds its chunks present and compresses none, which
// is most of its time under the race detector. Chunks are named by their
// SHA-256: what a later conversion's index names, extracted, is that
// conversion's data.
var debianStore struct {
	once sync.Once
	dir  string
	s    *local.Store
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if debianStore.dir != "" {
		os.RemoveAll(debianStore.dir)
	}
	os.Exit(code)
}

// sharedDebianStore returns debianStore, made at its first use.
func sharedDebianStore(t *testing.T) *local.Store {
	t.Helper()
	debianStore.once.Do(func() {
		if debianStore.dir, debianStore.err = os.MkdirTemp("", "mkbootfs-debian-store-"); debianStore.err == nil {
			debianStore.s, debianStore.err = local.Open(debianStore.dir, true)
		}
	})
	if debianStore.err != nil {
		t.Fatal(debianStore.err)
	}
	return debianStore.s
}

// extractedDebian converts source, an image of the Debian rootfs, into
// debianStore, extracts it and returns the directory.
func extractedDebian(t *testing.T, source string) string {
	t.Helper()
	s := sharedDebianStore(t)
	ctx := context.Background()
	res, err := converter.Convert(ctx, converter.Options{Source: source, Store: s, TmpDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "out")
	if _, err := extract.Extract(ctx, res.Index, s, out, extract.Options{Devices: true, SamePermissions: true}); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestDebianRootfsFromDir(t *testing.T) {
	rootfs := testenv.DebianRootfs(t)
	out := extractedDebian(t, "dir:"+rootfs)
	if diff := testtree.Diff(t, rootfs, out); diff != "" {
		t.Fatalf("extracted Debian rootfs differs:\n%.3000s", diff)
	}
}

func TestSecondConvertWritesOnlyNewChunks(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	os.Mkdir(src, 0o755)
	testtree.Build(t, src)
	s, err := local.Open(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	conv := func() converter.Stats {
		res, err := converter.Convert(context.Background(), converter.Options{Source: "dir:" + src, Store: s})
		if err != nil {
			t.Fatal(err)
		}
		return res.Stats
	}
	first := conv()
	if first.NewChunks == 0 || first.NewChunks != first.UniqueChunks {
		t.Fatalf("first convert: %+v", first)
	}
	if again := conv(); again.NewChunks != 0 || again.NewBytes != 0 {
		t.Fatalf("second convert of the same tree wrote %d chunks", again.NewChunks)
	}
	// One changed file: only the chunks around it are new.
	if err := os.WriteFile(filepath.Join(src, "text"), []byte("changed\n"), 0o444); err != nil {
		t.Fatal(err)
	}
	if changed := conv(); changed.NewChunks == 0 || changed.NewChunks > 3 {
		t.Fatalf("after changing one file, %d new chunks of %d", changed.NewChunks, changed.Chunks)
	}
}
