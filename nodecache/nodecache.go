// Package nodecache owns the node-shared cache directory: its chunks, boot
// trees and learned profiles, their bound and their eviction.
//
// The directory (normally a named volume that every container of a node
// mounts at /.bootfs/cache) holds:
//
//	XXXX/<sha256>.cacnk    chunks, in casync's layout (store/local), kept by store.Cache
//	.mkbootfs-cache.lock   the chunks' fetch locks (store.Cache)
//	trees/NAME/            boot trees: the profile's files, plain, and the directories above them
//	trees/NAME.lock        a tree's in-use lock; its mtime is the tree's last use,
//	                       its xattr the tree's seal (package boottree)
//	trees/NAME.info        what a tree holds and came from, for du
//	trees/NAME.failed      why tree NAME could not be made (bootinit)
//	trees/.tmp-*           trees being made; trees/.trash-* trees being removed
//	trees/.aside-*         trees that failed their check, kept a day to be looked at
//	profiles/NAME          learned profiles (plain text; package profile)
//	profiles/.NAME.tmp*    learned profiles being written, then renamed
//
// Many processes share it; none of them ever sees half a chunk or half a
// tree, and a tree a running container has stacked is never removed.
package nodecache

import (
	"path/filepath"
	"strings"
)

// Names in the cache directory.
const (
	treesDir    = "trees"
	profilesDir = "profiles"
	lockSuffix  = ".lock"
	infoSuffix  = ".info"
	// FailedSuffix names, beside a tree, the note of why it could not be
	// made.
	FailedSuffix = ".failed"
	// TempPrefix begins the names of trees being made, in the trees
	// directory: a tree is made under such a name, synced, then renamed.
	TempPrefix  = ".tmp-"
	trashPrefix = ".trash-"
	asidePrefix = ".aside-"
)

// TreeDir returns where boot tree name is, or goes, in the cache at
// cacheDir.
func TreeDir(cacheDir, name string) string {
	return filepath.Join(cacheDir, treesDir, name)
}

// TreeLock returns tree name's lock file in the cache at cacheDir (see
// UseTree), which carries the tree's seal: it lives as long as the name.
func TreeLock(cacheDir, name string) string {
	return TreeDir(cacheDir, name) + lockSuffix
}

// ProfilePath returns where learned profile name is, or goes, in the cache
// at cacheDir. A profile's mtime is its last use: a start that reads it
// touches it (os.Chtimes), or prune takes it for unused.
func ProfilePath(cacheDir, name string) string {
	return filepath.Join(cacheDir, profilesDir, name)
}

// validName reports whether name can name a tree or a profile: one plain
// path element that none of the cache's own files begins or ends with.
func validName(name string) bool {
	return name != "" && len(name) <= 200 && !strings.ContainsAny(name, "/\x00") &&
		!strings.HasPrefix(name, ".") && !strings.HasSuffix(name, lockSuffix) &&
		!strings.HasSuffix(name, infoSuffix) && !strings.HasSuffix(name, FailedSuffix)
}
