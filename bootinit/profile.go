package bootinit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/bootinit/bootconfig"
	"github.com/mkbootfs/mkbootfs/imagemount"
	"github.com/mkbootfs/mkbootfs/index"
	"github.com/mkbootfs/mkbootfs/profile"
	"github.com/mkbootfs/mkbootfs/store"
)

// imageProfile returns the profile the image holds, nil if none. One that
// does not parse costs its prefetch, with a line on stderr, not the boot.
func imageProfile() *profile.Profile {
	raw, err := os.ReadFile(bootconfig.Profile)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			fmt.Fprintf(os.Stderr, "bootinit: reading the profile: %v; booting without prefetch\n", err)
		}
		return nil
	}
	p, err := profile.Parse(bytes.NewReader(raw), bootconfig.Profile)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bootinit: %v; booting without prefetch\n", err)
		return nil
	}
	return p
}

// startPrefetch starts the background fetches MKBOOTFS_PREFETCH asks for,
// of p's chunks (p: the profile the start boots with, nil if none); the
// channel closes when they are done.
func (b *boot) startPrefetch(ctx context.Context, x *index.Index, st store.Store, p *profile.Profile) (<-chan struct{}, error) {
	done := make(chan struct{})
	mode := os.Getenv(bootconfig.EnvPrefetch)
	switch mode {
	case "", "profile", "all":
	case "none":
		close(done)
		return done, nil
	default:
		return nil, &exitError{exitBoot, fmt.Errorf("%s=%q: want profile (the default), all or none", bootconfig.EnvPrefetch, mode)}
	}
	all := mode == "all"
	var chunks []int
	// Over a tree, which holds the profile's files, nothing of it to fetch.
	if p != nil && !b.treeInUse {
		b.profile = imagemount.RegularFiles(p, x)
		chunks = b.profile.Chunks(x)
	}
	// A store on this node (no cache over it) is as fast to read later.
	cache, ok := st.(*store.Cache)
	if !ok || len(chunks) == 0 && !all {
		close(done)
		return done, nil
	}
	start := time.Now()
	// Once the profile's chunks are in the cache, the boot tree can be
	// made of them. One that an earlier start began is gone on with at
	// once: a short command leaves the maker little time.
	var treeFiles *profile.Profile
	if b.profile != nil {
		treeFiles = without(x, b.profile, b.treeLacks)
	}
	makeTree := b.tree != "" && treeFiles != nil && len(treeFiles.Files) > 0 && !heldOff(b.tree)
	if makeTree && (isDir(b.tree) || isDir(treeTemp(b.tree))) {
		b.stopTree = b.startTreeMaker(treeFiles)
	}
	profiledIn := func() {
		if makeTree && b.stopTree == nil {
			b.stopTree = b.startTreeMaker(treeFiles)
		}
	}
	var rest []int
	if makeTree {
		rest = wholeFileChunks(treeFiles, x)
	}
	go prefetch(ctx, x, cache, chunks, rest, all, profiledIn, func(n, failed int, restIn bool) {
		b.treeCanFinish = makeTree && restIn
		b.log.Printf("prefetched %d chunks (%d of the profile; %d failed) in %v", n, len(chunks), failed, time.Since(start).Round(time.Millisecond))
		close(done)
	})
	return done, nil
}

// without returns p without the files of lacks (nil: none), which another
// tree holds: the files of p that a tree made for it holds.
func without(x *index.Index, p, lacks *profile.Profile) *profile.Profile {
	if lacks == nil {
		return p
	}
	held := map[uint32]bool{}
	for _, f := range lacks.Files {
		if e, err := x.Resolve(f.Path); err == nil {
			held[e] = true
		}
	}
	out := &profile.Profile{}
	for _, f := range p.Files {
		if e, err := x.Resolve(f.Path); err != nil || !held[e] {
			out.Files = append(out.Files, f)
		}
	}
	return out
}

// wholeFileChunks returns the chunks of p's files, whole.
func wholeFileChunks(p *profile.Profile, x *index.Index) []int {
	var out []int
	for _, f := range p.Files {
		e, err := x.Resolve(f.Path)
		if err != nil {
			continue
		}
		if first, last, ok := x.ChunkSpan(x.Entries[e].Inode); ok {
			for c := first; c <= last; c++ {
				out = append(out, c)
			}
		}
	}
	return out
}

// recording is a boot access profile being recorded for MKBOOTFS_PROFILE.
// Its directory is opened before the root is switched, and the file is
// written when the app exits: to a temp file, synced, then renamed, so
// that a reader never sees half a profile.
type recording struct {
	*profile.Recorder
	path string
	dir  *os.File
}

// newRecording returns the recording MKBOOTFS_PROFILE asks for, or nil.
func newRecording(x *index.Index) (*recording, error) {
	path := os.Getenv(bootconfig.EnvProfile)
	if path == "" {
		return nil, nil
	}
	dir, err := os.Open(filepath.Dir(path))
	if err != nil {
		return nil, &exitError{exitBoot, fmt.Errorf("%s=%s: %w (mount a directory there: -v DIR:%s)", bootconfig.EnvProfile, path, err, filepath.Dir(path))}
	}
	return &recording{Recorder: profile.NewRecorder(x, profile.Limits{}), path: path, dir: dir}, nil
}

func (r *recording) save() error {
	defer r.dir.Close()
	var b bytes.Buffer
	r.Profile().WriteTo(&b)
	dirfd := int(r.dir.Fd())
	name := filepath.Base(r.path)
	tmp := name + "." + strconv.Itoa(os.Getpid()) + ".tmp"
	fd, err := unix.Openat(dirfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o644)
	if err != nil {
		return fmt.Errorf("writing the profile %s: %w", r.path, err)
	}
	f := os.NewFile(uintptr(fd), tmp)
	_, err = f.Write(b.Bytes())
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = unix.Renameat(dirfd, tmp, dirfd, name)
	}
	if err != nil {
		unix.Unlinkat(dirfd, tmp, 0)
		return fmt.Errorf("writing the profile %s: %w", r.path, err)
	}
	return nil
}
