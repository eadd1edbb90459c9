package chunker_test

import (
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"

	"github.com/mkbootfs/mkbootfs/chunker"
	"github.com/mkbootfs/mkbootfs/internal/testenv"
	"github.com/mkbootfs/mkbootfs/store"
)

// TestMeasureParams prints, for candidate chunk sizes, what they cost on a
// Debian rootfs streamed as the converter streams it: chunks, mean size,
// the zstd store size; what a short workload fetches (chunks and zstd
// bytes holding the files it opens, as lazyfs would fetch them); and how
// much of a related tree (20 files removed, 20 files of 1 MiB added)
// dedups against the store. It backs DefaultParams:
//
//	MKBOOTFS_MEASURE_PARAMS=1 go test -run TestMeasureParams -v ./chunker
func TestMeasureParams(t *testing.T) {
	if os.Getenv("MKBOOTFS_MEASURE_PARAMS") == "" {
		t.Skip("set MKBOOTFS_MEASURE_PARAMS=1 to measure chunk size candidates on the Debian rootfs")
	}
	root := testenv.DebianRootfs(t)
	files := rootfsFiles(t, root)
	boot := bootFiles(t, root)
	// Three related trees, so that no one lucky edit decides.
	const edits = 20
	base, inserted := concat(files), edits<<20
	var related [][]byte
	for seed := range uint64(3) {
		related = append(related, concat(edit(files, edits, seed)))
	}
	var bootBytes int
	for _, f := range files {
		if boot[f.inode] {
			bootBytes += len(f.data)
		}
	}
	t.Logf("stream %d bytes in %d files; the workload opens %d of them, %d bytes", len(base), len(files), len(boot), bootBytes)
	// reused: bytes of a related stream, less the new files, in chunks the
	// store has; added: zstd bytes it adds to the store beyond the new files
	// themselves (random, so zstd keeps them whole). Both are means over
	// the related trees.
	t.Logf("%-14s %7s %7s %11s | %9s %10s | %7s %9s", "min/avg/max", "chunks", "mean", "zstd", "workload", "zstd", "reused", "added")

	for _, p := range []chunker.Params{
		{Min: 4 << 10, Avg: 16 << 10, Max: 64 << 10},
		{Min: 8 << 10, Avg: 32 << 10, Max: 128 << 10},
		{Min: 16 << 10, Avg: 64 << 10, Max: 256 << 10},
		{Min: 32 << 10, Avg: 128 << 10, Max: 512 << 10},
		{Min: 64 << 10, Avg: 256 << 10, Max: 1024 << 10},
	} {
		// The store of the base stream, and what the workload fetches.
		have := map[store.ID]int{} // compressed size
		fetched := map[store.ID]bool{}
		var chunks, zstd, fetchedZstd int
		fi, fiStart := 0, 0 // files[fi], at fiStart, is the first file to end after off
		for off := 0; off < len(base); chunks++ {
			n := p.Cut(base[off:])
			chunk := base[off : off+n]
			id := store.Sum(chunk)
			if _, ok := have[id]; !ok {
				have[id] = len(store.Encode(chunk))
				zstd += have[id]
			}
			for ; fi < len(files) && fiStart+len(files[fi].data) <= off; fi++ {
				fiStart += len(files[fi].data)
			}
			for i, start := fi, fiStart; i < len(files) && start < off+n; i++ {
				if boot[files[i].inode] && !fetched[id] {
					fetched[id] = true
					fetchedZstd += have[id]
				}
				start += len(files[i].data)
			}
			off += n
		}
		// The related streams: what they reuse, what they add to the store.
		var reused, added float64
		for _, next := range related {
			seen := map[store.ID]bool{}
			var r, a int
			for d := next; len(d) > 0; {
				n := p.Cut(d)
				id := store.Sum(d[:n])
				if _, ok := have[id]; ok {
					r += n
				} else if !seen[id] {
					seen[id] = true
					a += len(store.Encode(d[:n]))
				}
				d = d[n:]
			}
			reused += float64(r) / float64(len(next)-inserted) / float64(len(related))
			added += float64(a-inserted) / float64(len(related))
		}
		t.Logf("%-14s %7d %7d %11d | %9d %10d | %6.2f%% %9.0f",
			fmt.Sprintf("%d/%d/%d KiB", p.Min>>10, p.Avg>>10, p.Max>>10),
			chunks, len(base)/chunks, zstd, len(fetched), fetchedZstd, 100*reused, added)
	}
}

type inode struct{ dev, ino uint64 }

type file struct {
	inode inode
	data  []byte
}

// rootfsFiles returns dir's regular files in the order the converter
// streams them: depth first, names sorted, each inode once, empty ones left
// out.
func rootfsFiles(t *testing.T, dir string) []file {
	t.Helper()
	seen := map[inode]bool{}
	var files []file
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		st := info.Sys().(*syscall.Stat_t)
		key := inode{st.Dev, st.Ino}
		if seen[key] || info.Size() == 0 {
			return nil
		}
		seen[key] = true
		data, err := os.ReadFile(path)
		files = append(files, file{key, data})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// bootFiles runs a short workload in a chroot of root under strace and
// returns the files it opens: what a container start would fetch.
func bootFiles(t *testing.T, root string) map[inode]bool {
	t.Helper()
	testenv.Root(t)
	strace := testenv.Command(t, "strace")
	out := filepath.Join(t.TempDir(), "trace")
	cmd := exec.Command(strace, "-f", "-qq", "-e", "trace=openat,execve,chroot", "-e", "status=successful", "-o", out,
		"chroot", root, "/bin/sh", "-c", "ls -la /etc >/dev/null; cat /etc/os-release >/dev/null; apt-get --version >/dev/null; dpkg -l >/dev/null; perl -e 1")
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("strace chroot %s: %v\n%s", root, err, msg)
	}
	trace, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	// The lines before the chroot call are the host's chroot binary.
	if i := regexp.MustCompile(`chroot\(`).FindIndex(trace); i != nil {
		trace = trace[i[1]:]
	}
	boot := map[inode]bool{}
	for _, m := range regexp.MustCompile(`(?:openat|execve)\([^"]*"(/[^"]*)"`).FindAllSubmatch(trace, -1) {
		if info, err := os.Stat(filepath.Join(root, string(m[1]))); err == nil && info.Mode().IsRegular() {
			st := info.Sys().(*syscall.Stat_t)
			boot[inode{st.Dev, st.Ino}] = true
		}
	}
	return boot
}

// edit removes n files and inserts n files of 1 MiB random data, at random
// places: a related image, as a package upgrade makes one.
func edit(files []file, n int, seed uint64) []file {
	rnd := rand.New(rand.NewPCG(seed, 2))
	edited := append([]file(nil), files...)
	for range n {
		i := rnd.IntN(len(edited))
		edited = append(edited[:i], edited[i+1:]...)
	}
	for range n {
		data := make([]byte, 1<<20)
		for j := range data {
			data[j] = byte(rnd.Uint32())
		}
		i := rnd.IntN(len(edited) + 1)
		edited = append(edited[:i], append([]file{{data: data}}, edited[i:]...)...)
	}
	return edited
}

func concat(files []file) []byte {
	var stream []byte
	for _, f := range files {
		stream = append(stream, f.data...)
	}
	return stream
}
