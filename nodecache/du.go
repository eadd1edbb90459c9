package nodecache

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Usage is what a cache directory holds, walked.
type Usage struct {
	Dir      string    `json:"dir"`
	Chunks   Count     `json:"chunks"`
	Trees    []Tree    `json:"trees"`
	Profiles []Profile `json:"profiles"`
	// Temp counts chunks and trees being written, or left by processes
	// that died; Foreign what is no part of the cache (left alone).
	Temp    Count `json:"temp"`
	Foreign Count `json:"foreign"`
	// Total is every byte above; Account what the cache's size account
	// counts, for comparison (-1 without an account).
	Total   int64 `json:"total_bytes"`
	Account int64 `json:"account_bytes"`
}

// Count is a number of files and their disk bytes.
type Count struct {
	Files int64 `json:"files"`
	Bytes int64 `json:"bytes"`
}

// Tree is a boot tree in the cache.
type Tree struct {
	Name    string    `json:"name"`
	Source  string    `json:"source,omitempty"` // the image it was made from, when known
	Bytes   int64     `json:"bytes"`
	Files   int64     `json:"files"`
	LastUse time.Time `json:"last_use"`
	InUse   bool      `json:"in_use"` // a running container stacks it or makes it
}

// Profile is a learned profile in the cache.
type Profile struct {
	Name    string    `json:"name"`
	Source  string    `json:"source,omitempty"` // the image it was learned from, when known
	Bytes   int64     `json:"bytes"`
	LastUse time.Time `json:"last_use"` // learned, or read by a start
}

// ErrNotCache is wrapped by the error for a directory that holds files
// but nothing of a cache.
var ErrNotCache = errors.New("not a mkbootfs cache")

// checkCache fails unless dir is a cache directory, or an empty one.
func checkCache(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("cache %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("cache %s: not a directory; give the cache volume's directory", dir)
	}
	names, err := readDirNames(dir)
	if err != nil {
		return fmt.Errorf("cache %s: %w", dir, err)
	}
	if len(names) == 0 {
		return nil
	}
	for _, n := range names {
		switch {
		case n == ".mkbootfs-cache.lock", n == accountName, n == treesDir, n == profilesDir:
			return nil
		case len(n) == 4 && isHex(n):
			if sub, _ := readDirNames(filepath.Join(dir, n)); slices.ContainsFunc(sub, func(s string) bool { return kind(n, s) != kindForeign }) {
				return nil
			}
		}
	}
	return fmt.Errorf("cache %s: %w: it holds none of .mkbootfs-cache.lock, trees/, XXXX/<id>.cacnk; give the cache volume's directory (docker volume inspect -f '{{.Mountpoint}}' VOLUME)", dir, ErrNotCache)
}

func readDirNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

// Du walks the cache at dir and says what it holds. It changes nothing:
// a tree made by an older bootinit, whose size is not recorded, is
// measured.
func Du(ctx context.Context, dir string) (*Usage, error) {
	if err := checkCache(dir); err != nil {
		return nil, err
	}
	u := &Usage{Dir: dir, Account: -1, Trees: []Tree{}, Profiles: []Profile{}} // [] in JSON, not null
	prefixes, err := chunkPrefixes(dir)
	if err != nil {
		return nil, fmt.Errorf("cache %s: %w", dir, err)
	}
	w, err := walkChunks(ctx, dir, prefixes, func(string) bool { return true }, false)
	if err != nil {
		return nil, err
	}
	u.chunks(w)
	if err := u.treesAndProfiles(dir); err != nil {
		return nil, err
	}
	if a, err := openAccountRO(dir); err == nil {
		if r, err := a.read(); err == nil {
			u.Account = r.total()
		}
		a.Close()
	}
	return u, nil
}

// chunks takes the counts of a walk of every chunk directory.
func (u *Usage) chunks(w walked) {
	u.Chunks = Count{Files: int64(len(w.chunks)), Bytes: w.bytes - w.tempBytes}
	u.Temp = Count{Files: w.temps, Bytes: w.tempBytes}
	u.Foreign = Count{Files: w.foreign, Bytes: w.foreignBytes}
	u.Total = w.bytes + w.foreignBytes
}

// treesAndProfiles lists the trees and profiles.
func (u *Usage) treesAndProfiles(dir string) error {
	trees, err := listTrees(dir, false)
	if err != nil {
		return fmt.Errorf("cache %s: trees: %w", dir, err)
	}
	inUse := locked()
	for _, t := range trees {
		if t.Bytes == 0 {
			if info, err := measure(filepath.Join(dir, treesDir, t.Name)); err == nil {
				t.Bytes, t.Files = info.Bytes, info.Files
			}
		}
		u.Total += t.Bytes
		if t.Temp {
			u.Temp.Files++
			u.Temp.Bytes += t.Bytes
			continue
		}
		var st unix.Stat_t
		use := unix.Stat(TreeDir(dir, t.Name)+lockSuffix, &st) == nil && inUse[fileID{uint64(st.Dev), st.Ino}]
		u.Trees = append(u.Trees, Tree{Name: t.Name, Source: t.Source, Bytes: t.Bytes, Files: t.Files, LastUse: t.LastUse, InUse: use})
	}
	slices.SortFunc(u.Trees, func(a, b Tree) int { return b.LastUse.Compare(a.LastUse) })
	ps, temp, _, err := listProfiles(dir, false, time.Time{})
	if err != nil {
		return fmt.Errorf("cache %s: profiles: %w", dir, err)
	}
	for _, p := range ps {
		u.Profiles = append(u.Profiles, Profile{Name: p.name, Source: profileSource(p.path), Bytes: p.bytes, LastUse: p.mtime})
		u.Total += p.bytes
	}
	u.Temp.Files += temp.Files
	u.Temp.Bytes += temp.Bytes
	u.Total += temp.Bytes
	return nil
}

type fileID struct{ dev, ino uint64 }

// locked returns the files that hold a flock now, from /proc/locks: the
// trees in use, seen without taking their locks (which would make a
// starting container boot without its tree).
func locked() map[fileID]bool {
	m := map[fileID]bool{}
	f, err := os.Open("/proc/locks")
	if err != nil {
		return m
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// 1: FLOCK  ADVISORY  READ  1234 fd:01:123456 0 EOF
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[1] != "FLOCK" {
			continue
		}
		var major, minor uint32
		var ino uint64
		if _, err := fmt.Sscanf(fields[5], "%x:%x:%d", &major, &minor, &ino); err == nil {
			m[fileID{unix.Mkdev(major, minor), ino}] = true
		}
	}
	return m
}
