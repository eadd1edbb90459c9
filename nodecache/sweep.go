package nodecache

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/internal/atomicfile"
)

// treeInfo is what the cache knows of one boot tree.
type treeInfo struct {
	Name    string
	Bytes   int64     // on disk; 0 when not measured yet
	Files   int64     // entries
	LastUse time.Time // its lock file's mtime, else when it was made
	Source  string    // the image it was made from, when known
	Temp    bool      // a tree being made (.tmp-*) or removed (.trash-*)
}

// infoFile is trees/NAME.info.
type infoFile struct {
	Source string `json:"source,omitempty"`
	Bytes  int64  `json:"bytes"`
	Files  int64  `json:"files"`
}

// TreeMade records that tree name of the cache at cacheDir was just made
// (renamed into place) from the image source: its size, measured now
// while its files are in the page cache, and its source, for du; and adds
// it to the size account, so that the cache's evictors keep the bound.
func TreeMade(cacheDir, name, source string) error {
	if !validName(name) {
		return errors.New("tree " + name + ": not a tree name")
	}
	dir := TreeDir(cacheDir, name)
	info, err := measure(dir)
	if err != nil {
		return err
	}
	info.Source = source
	// Two starts that made the tree at once both call TreeMade: the first
	// info written counts it, the second finds it there.
	if _, err := os.Stat(dir + infoSuffix); err == nil {
		return nil
	}
	b, _ := json.Marshal(info)
	tmp, err := os.CreateTemp(filepath.Dir(dir), TempPrefix+"info-*")
	if err != nil {
		return err
	}
	_, err = tmp.Write(append(b, '\n'))
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = unix.Renameat2(unix.AT_FDCWD, tmp.Name(), unix.AT_FDCWD, dir+infoSuffix, unix.RENAME_NOREPLACE)
	}
	if err != nil {
		os.Remove(tmp.Name())
		if errors.Is(err, unix.EEXIST) {
			return nil
		}
		return err
	}
	a, err := openAccount(cacheDir)
	if err != nil {
		return err
	}
	defer a.Close()
	_, err = a.update(func(r *record) {
		r.Trees += info.Bytes
		r.TreeCount++
	})
	return err
}

// measure walks the tree at dir.
func measure(dir string) (infoFile, error) {
	var info infoFile
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if unix.Lstat(p, &st) == nil {
			info.Bytes += st.Blocks * 512
			info.Files++
		}
		return nil
	})
	return info, err
}

func writeInfo(dir string, info infoFile) error {
	b, _ := json.Marshal(info)
	return atomicfile.Write(dir+infoSuffix, append(b, '\n'), 0o644)
}

// listTrees lists the trees of the cache at dir, with their temporary
// ones. With measure, a tree whose size is not recorded (made by an
// older bootinit) is measured and its info written.
func listTrees(dir string, measureNew bool) ([]treeInfo, error) {
	tdir := filepath.Join(dir, treesDir)
	ents, err := os.ReadDir(tdir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var trees []treeInfo
	for _, e := range ents {
		n := e.Name()
		if !e.IsDir() {
			continue
		}
		p := filepath.Join(tdir, n)
		t := treeInfo{Name: n, Temp: strings.HasPrefix(n, ".")}
		var st unix.Stat_t
		if unix.Lstat(p, &st) == nil {
			t.LastUse = time.Unix(st.Ctim.Unix()) // renamed into place (its mtime is the image root's)
		}
		if t.Temp || !validName(n) {
			t.Temp = true
			trees = append(trees, t)
			continue
		}
		if unix.Lstat(p+lockSuffix, &st) == nil {
			t.LastUse = time.Unix(st.Mtim.Unix())
		}
		var info infoFile
		if b, err := os.ReadFile(p + infoSuffix); err == nil && json.Unmarshal(b, &info) == nil && info.Bytes > 0 {
			t.Bytes, t.Files, t.Source = info.Bytes, info.Files, info.Source
		} else if measureNew {
			if info, err := measure(p); err == nil {
				t.Bytes, t.Files = info.Bytes, info.Files
				writeInfo(p, info)
			}
		}
		trees = append(trees, t)
	}
	return trees, nil
}

// failedWait is how long bootinit holds off a tree that failed (its
// trees/NAME.failed note); older notes are removed.
const failedWait = 24 * time.Hour

// sweep keeps the trees directory and the profiles: it removes trees and
// profiles unused for maxAge, trees whose removal a killed process left
// (.trash-*), temporary trees older than staleTemp, trees set aside a day
// ago, stale failure notes
// and lock files of trees long gone; and it counts what is left into the
// account. One process of the node sweeps at a time.
func sweep(ctx context.Context, dir string, acct *account, maxAge time.Duration) error {
	unlock, ok := acct.tryLock(sweepLock)
	if !ok {
		return nil
	}
	defer unlock()
	trees, err := listTrees(dir, true)
	if err != nil {
		return err
	}
	now := time.Now()
	var bytes, count int64
	have := map[string]bool{}
	for _, t := range trees {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		p := filepath.Join(dir, treesDir, t.Name)
		switch {
		case strings.HasPrefix(t.Name, trashPrefix),
			strings.HasPrefix(t.Name, TempPrefix) && now.Sub(t.LastUse) > staleTemp,
			strings.HasPrefix(t.Name, asidePrefix) && now.Sub(t.LastUse) > failedWait:
			os.RemoveAll(p)
			continue
		case t.Temp:
			continue
		case now.Sub(t.LastUse) > maxAge:
			if ok, _ := removeTree(dir, t.Name); ok {
				continue
			}
		}
		have[t.Name] = true
		bytes += t.Bytes
		count++
	}
	// What is left of trees long gone: their locks, infos and notes.
	tdir := filepath.Join(dir, treesDir)
	if ents, err := os.ReadDir(tdir); err == nil {
		for _, e := range ents {
			n := e.Name()
			if fi, err := e.Info(); err == nil && !e.IsDir() && strings.HasPrefix(n, TempPrefix) && now.Sub(fi.ModTime()) > staleTemp {
				os.Remove(filepath.Join(tdir, n)) // an info file a killed TreeMade left
				continue
			}
			base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, lockSuffix), infoSuffix), FailedSuffix)
			if e.IsDir() || base == n || have[base] {
				continue
			}
			fi, err := e.Info()
			if err != nil || now.Sub(fi.ModTime()) < max(staleTemp, failedWait*boolInt(strings.HasSuffix(n, FailedSuffix))) {
				continue
			}
			if strings.HasSuffix(n, FailedSuffix) {
				os.Remove(filepath.Join(tdir, n))
			} else {
				removeTree(dir, base) // takes the lock: not while a start makes it
			}
		}
	}
	pbytes, pcount := sweepProfiles(dir, now, maxAge)
	_, err = acct.update(func(r *record) {
		r.Trees, r.TreeCount = bytes, count
		r.Profiles, r.ProfileCount = pbytes, pcount
		r.SweptAt = now.Unix()
	})
	return err
}

func boolInt(b bool) time.Duration {
	if b {
		return 1
	}
	return 0
}

// sweepProfiles removes the profiles unused for maxAge and the temporary
// ones killed starts left, and counts the others.
func sweepProfiles(dir string, now time.Time, maxAge time.Duration) (bytes, count int64) {
	ps, _, _, _ := listProfiles(dir, true, now)
	_, left := removeProfiles(dir, ps, now, maxAge)
	return profileBytes(left), int64(len(left))
}
