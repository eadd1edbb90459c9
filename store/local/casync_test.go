package local_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/mkbootfs/mkbootfs/internal/testenv"
	"github.com/mkbootfs/mkbootfs/store"
)

// casync writes a store; we read and verify every chunk of it, write each
// through our own encoder into a second store, and casync extracts the file
// from that one byte for byte.
func TestCasyncInterop(t *testing.T) {
	casync := testenv.Command(t, "casync")
	ctx := context.Background()
	dir := t.TempDir()
	// 3 MiB random, then its first MiB again: repeated chunks, and text
	// that compresses.
	data := chunk(42, 3<<20)
	data = append(data, data[:1<<20]...)
	data = append(data, bytes.Repeat([]byte("casync interop "), 100000)...)
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, data, 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(casync, args...).CombinedOutput(); err != nil {
			t.Fatalf("casync %v: %v\n%s", args, err, out)
		}
	}
	a, b, caibx := filepath.Join(dir, "A"), filepath.Join(dir, "B"), filepath.Join(dir, "x.caibx")
	run("make", "--digest=sha256", "--compression=zstd", "--store="+a, caibx, file)

	sa, sb := open(t, a), open(t, b)
	ids := walk(t, sa)
	if len(ids) < 10 {
		t.Fatalf("casync made %d chunks of %d bytes; want a real chunked store", len(ids), len(data))
	}
	var total int
	for _, id := range ids {
		chunk, err := store.Load(ctx, sa, id)
		if err != nil {
			t.Fatalf("reading casync's chunk: %v", err)
		}
		total += len(chunk)
		if _, _, err := store.Save(ctx, sb, chunk); err != nil {
			t.Fatal(err)
		}
	}
	if total > len(data) {
		t.Fatalf("casync's %d distinct chunks hold %d bytes, more than the file's %d", len(ids), total, len(data))
	}
	if got := walk(t, sb); len(got) != len(ids) {
		t.Fatalf("B holds %d chunks, want %d", len(got), len(ids))
	}
	checkClean(t, sb)

	out := filepath.Join(dir, "out")
	run("extract", "--store="+b, caibx, out)
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("casync extracted %d bytes from our store, differing from the %d bytes it chunked", len(got), len(data))
	}
}
