package converter_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/converter"
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

func TestDebianRootfsFromDir(t *testing.T) {
	rootfs := testenv.DebianRootfs(t)
	out := extracted(t, "dir:"+rootfs)
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
