package nodecache

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// profileFile is a learned profile in the cache's profiles directory.
type profileFile struct {
	name  string
	bytes int64     // on disk
	mtime time.Time // its last use
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
		ps = append(ps, profileFile{name: e.Name(), bytes: b, mtime: fi.ModTime()})
	}
	return ps, temp, stale, nil
}

// removeProfiles removes the profiles of ps unused for maxAge (none when
// 0), and returns those it removed and those left.
func removeProfiles(dir string, ps []profileFile, now time.Time, maxAge time.Duration) (removed, left []profileFile) {
	for _, p := range ps {
		if maxAge > 0 && now.Sub(p.mtime) > maxAge && validName(p.name) && os.Remove(ProfilePath(dir, p.name)) == nil {
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
