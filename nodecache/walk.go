package nodecache

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/store"
)

// staleTemp is the age past which a temporary file or tree is one a
// killed process left behind.
const staleTemp = time.Hour

// chunkFile is a chunk file a walk found.
type chunkFile struct {
	prefix string // its directory, XXXX
	name   string
	mtime  int64 // unix nanoseconds
	bytes  int64 // on disk
}

// walked is what a walk of chunk directories found.
type walked struct {
	chunks       []chunkFile
	bytes        int64 // the chunks' and their directories' disk bytes
	foreign      int64 // files that are no chunk of this layout: left alone
	foreignBytes int64
	temps        int64 // temporary chunk files: writes under way, or of dead writers
	tempBytes    int64
	staleTemps   int              // temporary files of dead writers, removed
	dirs         map[string]int64 // chunk directory -> its own disk bytes
}

// chunkPrefixes lists the chunk directories (four hex digits) of the cache
// at dir: one read of the top directory, unsorted.
func chunkPrefixes(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	prefixes := names[:0]
	for _, n := range names {
		if len(n) == 4 && isHex(n) {
			prefixes = append(prefixes, n)
		}
	}
	return prefixes, nil
}

func isHex(s string) bool {
	for i := range len(s) {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// shardOf is the shard of a chunk directory or ID, its first hex digit.
func shardOf(prefix string) int {
	c := prefix[0]
	if c <= '9' {
		return int(c - '0')
	}
	return int(c-'a') + 10
}

func idShard(id store.ID) int { return int(id[0] >> 4) }

// walkChunks stats every file in the chunk directories of dir among
// prefixes for which keep(prefix) holds. With clean, it removes temporary
// chunk files older than staleTemp; it touches nothing else. What is no
// chunk of casync's layout is counted as foreign.
func walkChunks(ctx context.Context, dir string, prefixes []string, keep func(string) bool, clean bool) (walked, error) {
	w := walked{dirs: map[string]int64{}}
	now := time.Now()
	buf := make([]byte, 32<<10)
	var names []string
	for _, p := range prefixes {
		if !keep(p) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return w, err
		}
		fd, err := unix.Open(filepath.Join(dir, p), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
		if err != nil {
			continue // gone meanwhile, or no directory: nothing of ours
		}
		names = readNames(fd, buf, names[:0])
		var st unix.Stat_t
		if unix.Fstat(fd, &st) == nil {
			w.bytes += st.Blocks * 512
			w.dirs[p] = st.Blocks * 512
		}
		for _, n := range names {
			if unix.Fstatat(fd, n, &st, unix.AT_SYMLINK_NOFOLLOW) != nil {
				continue
			}
			size := st.Blocks * 512
			switch kind(p, n) {
			case kindChunk:
				if st.Mode&unix.S_IFMT == unix.S_IFREG {
					w.chunks = append(w.chunks, chunkFile{p, n, st.Mtim.Nano(), size})
					w.bytes += size
					continue
				}
			case kindTemp:
				if clean && now.Sub(time.Unix(st.Mtim.Unix())) > staleTemp && unix.Unlinkat(fd, n, 0) == nil {
					w.staleTemps++
					continue
				}
				w.bytes += size // a write under way
				w.temps++
				w.tempBytes += size
				continue
			}
			w.foreign++
			w.foreignBytes += size
		}
		unix.Close(fd)
	}
	return w, nil
}

// readNames appends the names in the directory open at fd to names:
// getdents into buf, which the walk reuses (os.File's Readdirnames
// allocates a file, a buffer and the names for each directory).
func readNames(fd int, buf []byte, names []string) []string {
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil || n <= 0 {
			return names
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
}

const (
	kindForeign = iota
	kindChunk
	kindTemp
)

// kind tells what file name is in chunk directory prefix: a chunk where
// Get looks for it (<id>.cacnk), a temporary chunk of store/local
// (<id>.cacnk.<random>.tmp), or something foreign.
func kind(prefix, name string) int {
	if len(name) < 64 || name[:4] != prefix || !isHex(name[:64]) {
		return kindForeign
	}
	switch rest := name[64:]; {
	case rest == ".cacnk":
		return kindChunk
	case strings.HasPrefix(rest, ".cacnk.") && strings.HasSuffix(rest, ".tmp"):
		return kindTemp
	}
	return kindForeign
}
