package lazyfs

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// MountOptions configure Mount.
type MountOptions struct {
	// AllowOther lets users other than the mounter use the mount (the
	// processes of a container run as any user).
	AllowOther bool
	// FsName is the source shown in /proc/mounts; default "mkbootfs".
	FsName string
	// MaxReadAhead bounds the kernel's readahead of a file, and so the
	// bytes around each page fault it reads; default and most MaxRead.
	// Scattered readers (a debug session's page faults) fetch less with
	// less.
	MaxReadAhead int
	// SUID and Dev honour the tree's setuid/setgid bits and device nodes,
	// as a container's root filesystem needs. Without them the mount is
	// nosuid,nodev: with AllowOther, an untrusted image's setuid-root
	// program would give every local user root. A /dev/fd/N mount carries
	// the flags of the process that mounted it.
	SUID, Dev bool
	// DirectOnly mounts with mount(2) alone, never through fusermount3:
	// in a container there is none, and its absence would hide why the
	// mount itself was refused (no CAP_SYS_ADMIN, AppArmor).
	DirectOnly bool
	// Debug logs every FUSE request.
	Debug bool
}

// MemoryLimit is the soft memory limit (runtime/debug.SetMemoryLimit) a
// process serving a mount should set unless GOMEMLIMIT is given: the live
// heap of a mount serving a 200 MB tree is about 10 MiB, and without a limit
// the garbage collector lets the heap grow to twice that and more before it
// collects, past the 40 MiB RSS a bootinit may use.
const MemoryLimit = 24 << 20

// Kernel caching: the tree never changes, so the kernel may keep entries,
// attributes and negative lookups as long as it likes. Against go-fuse's
// default of 1 s, on the Debian minbase tree: a warm `find` takes 2.5-5x
// and a warm `ls -lR` 8-10x as long.
const cacheTimeout = 24 * time.Hour

// Server is a mounted filesystem.
type Server struct {
	*FS
	dir string
	srv *fuse.Server
}

// MaxRead is the largest read the server takes: a process that mounts a
// /dev/fuse descriptor for Mount to serve passes max_read=MaxRead.
const MaxRead = 128 << 10

// Mount mounts f at dir and serves it in the background until Unmount. A
// dead mount left at dir by a killed server is detached first.
//
// A dir of the form /dev/fd/N names a /dev/fuse descriptor that another
// process has already mounted (mkbootfs attach mounts in a container's
// mount namespace): Mount only serves it, and the mount goes away with
// that namespace rather than with Unmount.
func Mount(dir string, f *FS, o MountOptions) (*Server, error) {
	premounted := strings.HasPrefix(dir, "/dev/fd/")
	if !premounted {
		if stale, err := RecoverStale(dir); err != nil {
			return nil, err
		} else if stale {
			f.log.Printf("lazyfs: detached the dead mount a killed server left at %s", dir)
		}
	}
	name := o.FsName
	if name == "" {
		name = "mkbootfs"
	}
	timeout := cacheTimeout
	readAhead := MaxRead
	if o.MaxReadAhead > 0 {
		readAhead = min(o.MaxReadAhead, MaxRead)
	}
	// nosuid,nodev are go-fuse's and fusermount3's defaults too; suid and
	// dev undo them.
	flags := []string{"ro", "nosuid", "nodev", "default_permissions"}
	if o.SUID {
		flags[1] = "suid"
	}
	if o.Dev {
		flags[2] = "dev"
	}
	opts := &fs.Options{
		MountOptions: fuse.MountOptions{
			AllowOther: o.AllowOther,
			Options:    flags,
			FsName:     name,
			Name:       "mkbootfs",
			// No fusermount3 in a container; it falls back to it. A direct
			// mount at /dev/fd/N would mount over the device node.
			DirectMount:       !premounted,
			DirectMountStrict: !premounted && o.DirectOnly,
			// Reads come from the kernel's readahead, 128 KiB at most on
			// Linux: bigger requests buy nothing, and go-fuse keeps a
			// buffer of this size per request in flight.
			MaxWrite: MaxRead,
			// Reads are answered from memory: splicing such a reply only
			// copies it through a pipe, which go-fuse then drains into
			// /dev/null, four system calls more per READ.
			DisableSplice: true,
			MaxReadAhead:  readAhead,
			MaxBackground: 64,   // readahead requests in flight; the kernel's 12 made a cold tar of Debian ~15% slower
			EnableAcl:     true, // the kernel enforces the image's POSIX ACLs

			EnableSymlinkCaching:     true,
			ExplicitDataCacheControl: true,
			Debug:                    o.Debug,
		},
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
		NullPermissions: true, // mode 000 stays 000
		RootStableAttr:  &fs.StableAttr{Ino: 1},
		ExternalNodeID:  true, // rawFS lists directories by node ID
	}
	srv, err := fuse.NewServer(&rawFS{RawFileSystem: fs.NewNodeFS(f.Root(), opts), f: f}, dir, &opts.MountOptions)
	if err != nil {
		return nil, fmt.Errorf("mounting %s: %w", dir, err)
	}
	go srv.Serve()
	if err := srv.WaitMount(); err != nil {
		return nil, fmt.Errorf("mounting %s: %w", dir, err)
	}
	return &Server{FS: f, dir: dir, srv: srv}, nil
}

// DeviceOptions are the mount(2) options of a mount of /dev/fuse
// descriptor fd that Mount serves as /dev/fd/N: read-only, files as the
// index has them (the kernel checks permissions), for every user.
func DeviceOptions(fd int) string {
	return fmt.Sprintf("fd=%d,rootmode=40000,user_id=0,group_id=0,max_read=%d,default_permissions,allow_other", fd, MaxRead)
}

// MountDevice mounts f at dir with mount(2) on a /dev/fuse descriptor of
// its own, then serves it as Mount does a /dev/fd/N mount: so mounted, the
// server never touches its own mount, which Mount's go-fuse does once
// (it opens a file in it to learn that poll is unsupported). A process
// killed in the middle of I/O on the mount it serves waits forever for an
// answer its own dead threads would have given.
func MountDevice(dir string, f *FS, o MountOptions) (*Server, error) {
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("mounting %s: %w", dir, err)
	}
	name := o.FsName
	if name == "" {
		name = "mkbootfs"
	}
	flags := uintptr(unix.MS_RDONLY)
	if !o.SUID {
		flags |= unix.MS_NOSUID
	}
	if !o.Dev {
		flags |= unix.MS_NODEV
	}
	if err := unix.Mount(name, dir, "fuse.mkbootfs", flags, DeviceOptions(fd)); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("mounting %s: %w", dir, err)
	}
	s, err := Mount("/dev/fd/"+strconv.Itoa(fd), f, o)
	if err != nil {
		unix.Unmount(dir, unix.MNT_DETACH)
		unix.Close(fd)
		return nil, err
	}
	s.dir = dir
	return s, nil
}

// Dir returns the mount point.
func (s *Server) Dir() string { return s.dir }

// Wait returns when the filesystem is unmounted.
func (s *Server) Wait() { s.srv.Wait() }

// Unmount unmounts the filesystem. If files are still open in it, it is
// detached lazily instead: gone from the tree at once, served until the
// last file is closed (Wait returns then).
func (s *Server) Unmount() error {
	err := s.srv.Unmount()
	if err == nil {
		return nil
	}
	if lerr := unix.Unmount(s.dir, unix.MNT_DETACH); lerr != nil {
		return fmt.Errorf("unmounting %s: %v; detaching it: %w", s.dir, err, lerr)
	}
	return nil
}

// RecoverStale detaches a dead FUSE mount at dir (its server was killed,
// so every access fails with ENOTCONN), as `umount -l` would, and reports
// whether there was one; a live mount or an ordinary directory is left alone.
func RecoverStale(dir string) (bool, error) {
	// statfs, unlike stat, always asks the server: the kernel may answer
	// a stat of a dead mount from its attribute cache.
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); !errors.Is(err, syscall.ENOTCONN) {
		return false, nil
	}
	if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
		// Not root: fusermount3 may detach the user's own mounts.
		if out, ferr := exec.Command("fusermount3", "-uz", dir).CombinedOutput(); ferr != nil {
			return false, fmt.Errorf("%s holds a dead FUSE mount (its server was killed) that could not be detached: %v; %v %s; run `umount -l %s` as root",
				dir, err, ferr, bytes.TrimSpace(out), dir)
		}
	}
	return true, nil
}
