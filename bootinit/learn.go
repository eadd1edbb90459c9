package bootinit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"os"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/bootinit/bootconfig"
	"github.com/mkbootfs/mkbootfs/index"
	"github.com/mkbootfs/mkbootfs/nodecache"
	"github.com/mkbootfs/mkbootfs/profile"
	"github.com/mkbootfs/mkbootfs/store"
)

// Learned profiles. An image converted without a recorded profile (with
// none, or with only the static one the converter finds without running
// it) gets one on each node: its first start there records what the app
// reads, as MKBOOTFS_PROFILE does, and keeps it in the node cache
// (nodecache.ProfilePath, named by the digest of the image's index, so
// that no other image, nor another conversion of this one, reads it).
// Later starts prefetch from it at once, and take it for the image's
// profile in all else: their boot tree is named by the index's digest and
// the learned profile's text, as the converter names a recorded profile's.
//
// The profile lives in the cache volume, where every container of the node
// can write: it is read within learnLimits and checked against the index,
// and one that fails is ignored with a line on stderr and learned again.

// learnFor is how long a start records by default: a command's start, or a
// server's until it serves, on a slow link too; what it reads later is its
// work, not its start.
const learnFor = 20 * time.Second

// maxLearnFor bounds MKBOOTFS_LEARN=DURATION.
const maxLearnFor = 10 * time.Minute

// learnLimits bound a learned profile, as recorded and as read back. A
// start of python3 or apt-get reads 30-300 files in fewer than 1000 ranges,
// 5-20 MB: a start past these is not one a profile speeds up.
var learnLimits = profile.Limits{Files: 4096, Ranges: 1 << 16, Bytes: 256 << 20, Size: 4 << 20}

// learnTime returns how long a start records, from MKBOOTFS_LEARN; 0: it
// does not learn.
func learnTime() (time.Duration, error) {
	switch v := os.Getenv(bootconfig.EnvLearn); v {
	case "", "on":
		return learnFor, nil
	case "off":
		return 0, nil
	default:
		if d, err := time.ParseDuration(v); err == nil && d > 0 && d <= maxLearnFor {
			return d, nil
		}
		return 0, &exitError{exitBoot, fmt.Errorf("%s=%q: want on (the default: record the first %v of a start), off, or how long to record, up to %v, such as 60s", bootconfig.EnvLearn, v, learnFor, maxLearnFor)}
	}
}

// learner records a start's reads into the node's learned profile.
type learner struct {
	rec    *profile.Recorder
	cache  string // the node cache's directory
	name   string // of the profile in it
	source string // the image converted
	log    *log.Logger
	timer  *time.Timer
	once   sync.Once
}

// learn returns the profile this start boots with: the image's own
// (image, nil if none) when it is a recorded one; else the node's learned
// profile, with cfg.Tree naming its boot tree; else the image's, and a
// learner of this start. recording is a hand recording (MKBOOTFS_PROFILE),
// which sees the image as it was converted.
func (b *boot) learn(cfg *bootconfig.Config, x *index.Index, st store.Store, image *profile.Profile, recording bool) (*profile.Profile, *learner, error) {
	d, err := learnTime()
	if err != nil {
		return nil, nil, err
	}
	// What a node learns is kept in its cache volume: a bare store, or a
	// cache directory that goes with the container, would keep it for no
	// later start.
	_, cached := st.(*store.Cache)
	if d == 0 || recording || image != nil && !image.Static || !cached || !isMountPoint(bootconfig.CacheDir) {
		return image, nil, nil
	}
	id := x.Digest()
	name := hex.EncodeToString(id[:])
	treeOf := func(text []byte) string {
		t := sha256.New()
		t.Write(id[:])
		t.Write(text)
		return hex.EncodeToString(t.Sum(nil))
	}
	// The tree of the image's static profile (its program, loader and
	// libraries: most of what a short start reads) is made by the start
	// that learns, from the chunks it prefetches; the next start stacks it
	// while it makes the learned profile's.
	var static string
	if image != nil && cfg.Tree == "" {
		var text bytes.Buffer
		image.WriteTo(&text)
		static = treeOf(text.Bytes())
	}
	path := nodecache.ProfilePath(bootconfig.CacheDir, name)
	p, text, err := readLearned(path, x)
	if err == nil {
		cfg.Tree = treeOf(text)
		if static != "" {
			b.otherTree, b.otherProfile = static, image
			b.deltaTree = treeOf(slices.Concat(text, []byte("\nover "+static)))
		}
		b.log.Printf("booting with the profile learned on this node, %s (%d files)", path, len(p.Files))
		return p, nil, nil
	}
	if cfg.Tree == "" {
		cfg.Tree = static
	}
	if !errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintf(os.Stderr, "bootinit: ignoring %v; this start learns it again\n", err)
	}
	l := &learner{rec: profile.NewRecorder(x, learnLimits), cache: bootconfig.CacheDir, name: name, source: cfg.Source, log: b.log}
	l.timer = time.AfterFunc(d, l.finish)
	b.log.Printf("learning the boot access profile for %v into %s", d, path)
	return image, l, nil
}

// readLearned reads the learned profile at path and checks it against x;
// text is the file's bytes. It touches the file: its mtime is its last use.
func readLearned(path string, x *index.Index) (p *profile.Profile, text []byte, err error) {
	// Not a FIFO's open, which would wait, nor a symlink's.
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil, nil, fs.ErrNotExist
	}
	if err != nil {
		return nil, nil, fmt.Errorf("profile %s: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("profile %s: not a regular file", path)
	}
	text, err = io.ReadAll(io.LimitReader(f, learnLimits.Size+1))
	if err != nil {
		return nil, nil, fmt.Errorf("profile %s: %w", path, err)
	}
	p, err = learnLimits.Parse(bytes.NewReader(text), path)
	if err != nil {
		return nil, nil, err
	}
	switch {
	case p.Static:
		err = errors.New("a static profile, not a learned one")
	case len(p.Files) == 0:
		err = errors.New("names no file")
	default:
		err = p.Check(x)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("profile %s: %w", path, err)
	}
	now := time.Now()
	os.Chtimes(path, now, now)
	return p, text, nil
}

// finish stops the recording and keeps the profile, once: learnFor after
// the start began, or when the app exits, whichever comes first. It is
// written whole or not at all (nodecache.SaveProfile): a start killed
// meanwhile leaves the profile as it was, or none, and the next start
// learns.
func (l *learner) finish() {
	l.once.Do(func() {
		l.rec.Stop()
		p := l.rec.Profile()
		if len(p.Files) == 0 {
			return // the app never started: nothing learned
		}
		start := time.Now()
		var text bytes.Buffer
		p.WriteTo(&text)
		if err := nodecache.SaveProfile(l.cache, l.name, l.source, text.Bytes()); err != nil {
			fmt.Fprintf(os.Stderr, "bootinit: keeping the learned profile: %v\n", err)
			return
		}
		l.log.Printf("learned the boot access profile (%d files, %d bytes read) into %s in %v", len(p.Files), p.Bytes(), nodecache.ProfilePath(l.cache, l.name), time.Since(start).Round(time.Microsecond))
	})
}

// stop ends the learning when the app exits: at once if learnFor has
// passed, else once the profile is kept.
func (l *learner) stop() {
	l.timer.Stop()
	l.finish()
}
