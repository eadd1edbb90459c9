// Package bootconfig is the contract between the converter, which writes a
// boot image, and bootinit, which boots it: where things sit in the boot
// layer and what the boot config holds. It knows nothing of FUSE.
package bootconfig

import (
	"encoding/json"
	"fmt"
	"os"
	"time"
)

// Paths in a boot image. Everything of mkbootfs lives under Dir, which the
// converted image's root never shows.
const (
	Dir        = "/.bootfs"
	Bootinit   = Dir + "/bootinit" // PID 1
	Index      = Dir + "/index"    // the rootfs index
	ConfigFile = Dir + "/boot.json"
	// Profile is the boot access profile the image was laid out by, if
	// any: bootinit prefetches the chunks it reads (see package profile).
	Profile = Dir + "/profile"
	// CacheDir is the node-shared chunk cache: mount a named volume here.
	CacheDir = Dir + "/cache"
	// TreesDir, in the cache, holds the boot trees: for each image a node
	// has started more than once, its profile's files as plain files and
	// the directories above them (see Config.Tree).
	TreesDir = CacheDir + "/trees"
	// StoreDir is where a local store recorded at convert time is looked
	// for: bind-mount the host's store directory here.
	StoreDir = Dir + "/store"
	// AuthFile is where a docker config with registry credentials is
	// looked for, for an oci:// store: -v ~/.docker/config.json:AuthFile:ro.
	AuthFile = Dir + "/auth.json"
	// Premounted, in a container's root, says that the root is already
	// the image's tree, mounted on the node by `mkbootfs snapshotter`:
	// bootinit then mounts nothing and only runs the app.
	Premounted = Dir + "/premounted"
	// LowerDir, UpperDir and RootDir are bootinit's mount points: the lazy
	// image, the writable layer, and the overlay of both that becomes /.
	LowerDir = Dir + "/lower"
	UpperDir = Dir + "/rw"
	RootDir  = Dir + "/root"
)

// LayerTime dates every entry of a boot image's layers: a fixed time keeps
// their digests reproducible, and it tells bootinit what docker copied into
// a volume from the skeleton (see bootinit's copy-up).
var LayerTime = time.Unix(0, 0)

// Env variables that change a boot at run time.
const (
	// EnvStore overrides the stores recorded at convert time: URLs,
	// comma-separated, tried in order.
	EnvStore = "MKBOOTFS_STORE"
	// EnvPrefetch picks what is fetched in the background as the app
	// starts: "profile" (the default) the chunks of the image's profile,
	// "all" those and then the whole image, "none" nothing.
	EnvPrefetch = "MKBOOTFS_PREFETCH"
	// EnvProfile set to a path records the boot access profile there when
	// the app exits: mount a directory to take it out, e.g.
	// -v $PWD/prof:/prof -e MKBOOTFS_PROFILE=/prof/profile.
	EnvProfile = "MKBOOTFS_PROFILE"
	// EnvTree set to "off" makes bootinit neither use nor make the image's
	// boot tree: every read of the image then goes through the lazy mount,
	// verified.
	EnvTree = "MKBOOTFS_TREE"
	// EnvLearn set to "off" makes bootinit neither learn nor use a
	// profile learned on the node, for an image converted without a
	// recorded one; a duration (60s, up to 10m) is how long a start
	// records, 20s by default (see bootinit's learn.go).
	EnvLearn = "MKBOOTFS_LEARN"
	// EnvCacheSize bounds the node cache at CacheDir (chunks, boot trees
	// and profiles): 30M, 2G, 10% of its filesystem; past it the least
	// recently used are removed. Default: nodecache.DefaultMaxSize.
	EnvCacheSize = "MKBOOTFS_CACHE_SIZE"
	// EnvCacheMaxAge is how long the node cache keeps boot trees and
	// learned profiles no start used: 72h, 90m. Default:
	// nodecache.DefaultMaxAge, a week.
	EnvCacheMaxAge = "MKBOOTFS_CACHE_MAX_AGE"
	// EnvKeepSysAdmin set to 1 leaves to the app the CAP_SYS_ADMIN and
	// /dev/fuse that bootinit needs; by default the app gets neither, as
	// the original image run without them.
	EnvKeepSysAdmin = "MKBOOTFS_KEEP_SYS_ADMIN"
	// EnvAppArmor names the AppArmor profile the app runs under where
	// bootinit runs unconfined on a host with AppArmor; default
	// docker-default, the profile docker gives the original.
	EnvAppArmor = "MKBOOTFS_APPARMOR_PROFILE"
	// EnvDebug set to 1 makes bootinit say what it does.
	EnvDebug = "MKBOOTFS_DEBUG"
)

// Config is the boot config at ConfigFile.
type Config struct {
	// Source is the image the boot image was converted from.
	Source string `json:"source"`
	// Stores are the chunk store URLs recorded at convert time, tried in
	// order. A local directory store is looked for at StoreDir.
	Stores []string `json:"stores"`
	// Tree names the image's boot tree in TreesDir: a digest of the index
	// and the profile, so that no two images, nor two conversions of one,
	// share one. Empty when the image has no profile.
	Tree string `json:"tree,omitempty"`
}

// Load reads the boot config.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("boot config: %w (is this a converted image?)", err)
	}
	var c Config
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("boot config %s: %w", path, err)
	}
	return &c, nil
}
