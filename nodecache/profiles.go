package nodecache

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/internal/atomicfile"
)

// sourceXattr, on a learned profile, names the image it was learned from.
const sourceXattr = "user.mkbootfs.source"

// SaveProfile writes learned profile name of the cache at cacheDir, learned
// from the image source, in place of any before: whole or not at all (a
// temporary file, synced, renamed). source is kept for du, where the
// volume's filesystem takes user xattrs.
func SaveProfile(cacheDir, name, source string, text []byte) error {
	if !validName(name) {
		return fmt.Errorf("profile %q: not a profile name", name)
	}
	path := ProfilePath(cacheDir, name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := atomicfile.Write(path, text, 0o644); err != nil {
		return err
	}
	if source != "" {
		unix.Lsetxattr(path, sourceXattr, []byte(source), 0)
	}
	return nil
}

// profileSource returns the image the profile at path was learned from,
// "" when not known.
func profileSource(path string) string {
	b := make([]byte, 1024)
	n, err := unix.Lgetxattr(path, sourceXattr, b)
	if err != nil {
		return ""
	}
	return string(b[:n])
}

// profileFile is a learned profile in the cache's profiles directory.
type profileFile struct {
	name  string
	bytes int64     // on disk
	mtime time.Time // its last use
	path  string
}

// listProfiles lists the learned profiles of the cache at dir, and counts
// apart the files being written: bootinit writes a profile to a temporary
// ".NAME.tmp*" (atomicfile), syncs and renames it. With removeStale it
// removes (and counts in stale) those older than staleTemp, which starts
// killed while writing left.
func listProfiles(dir string, removeStale bool, now time.Time) (ps []profileFile, temp Count, stale int, err error) {
	pdir := filepath.Join(dir, profilesDir)
	ents, err := os.ReadDir(pdir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, temp, 0, nil
	}
	if err != nil {
		return nil, temp, 0, err
	}
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		b := diskBytes(fi.Size())
		if strings.HasPrefix(e.Name(), ".") {
			if removeStale && now.Sub(fi.ModTime()) > staleTemp && os.Remove(filepath.Join(pdir, e.Name())) == nil {
				stale++
				continue
			}
			temp.Files++
			temp.Bytes += b
			continue
		}
		ps = append(ps, profileFile{name: e.Name(), bytes: b, mtime: fi.ModTime(), path: filepath.Join(pdir, e.Name())})
	}
	return ps, temp, stale, nil
}

// removeProfiles removes the profiles of ps unused for maxAge (none when
// 0), and returns those it removed and those left.
func removeProfiles(dir string, ps []profileFile, now time.Time, maxAge time.Duration) (removed, left []profileFile) {
	for _, p := range ps {
		if maxAge > 0 && now.Sub(p.mtime) > maxAge && validName(p.name) && os.Remove(p.path) == nil {
			removed = append(removed, p)
			continue
		}
		left = append(left, p)
	}
	return removed, left
}

// profileBytes sums the disk bytes of ps.
func profileBytes(ps []profileFile) int64 {
	var n int64
	for _, p := range ps {
		n += p.bytes
	}
	return n
}
