package bootinit

import (
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/bootinit/bootconfig"
)

// switcher boots the image in the launcher: everything that touches the
// lazy mount.
type switcher struct {
	log        *log.Logger
	trees      []string // the boot trees to stack, the top first
	privileges privileges
}

// switchRoot stacks the writable overlay on the lazy image, moves docker's
// mounts into it, moves it onto / (where docker exec finds it), and makes
// it the root of this process in a mount namespace of its own, which holds
// none of bootinit's mounts: its store, cache and lazy mount stay in
// bootinit's, under its own root (the boot layer) that the image now hides.
func (s *switcher) switchRoot() error {
	if err := s.mountOverlay(); err != nil {
		return err
	}
	// A mount under a shared parent cannot be moved.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making / private: %w", err)
	}
	mounts, err := readMountinfo("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	if err := s.copyUp(mounts); err != nil {
		return err
	}
	carried := toCarry(mounts, bootconfig.Dir)
	// /proc goes last: moving a mount targets /proc/self/fd.
	for i, p := range carried {
		if p == "/proc" {
			carried = append(append(carried[:i:i], carried[i+1:]...), p)
			break
		}
	}
	saved := saveDNSFiles(carried)
	root, err := os.OpenRoot(bootconfig.RootDir)
	if err != nil {
		return err
	}
	defer root.Close()
	for _, p := range carried {
		if err := carry(p, root); err != nil {
			return err
		}
		s.log.Printf("carried mount %s", p)
	}
	restoreDNSFiles(saved)
	s.keepDevices()
	if s.privileges.dropsSysAdmin() {
		if err := removeFUSEDevice(root); err != nil {
			return err
		}
	}

	if err := unix.Chdir(bootconfig.RootDir); err != nil {
		return err
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("moving the image onto /: %w", err)
	}
	return enterImage(mounts)
}

// enterImage makes the image, the working directory, this process's root
// in a new mount namespace, without the mounts of bootinit's own (those
// under bootconfig.Dir, still reachable from this process's root, the boot
// layer, until then).
func enterImage(mounts []mountEntry) error {
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("a mount namespace for the app: %w", err)
	}
	for i := len(mounts) - 1; i >= 0; i-- {
		p := mounts[i].point
		if !isUnder(p, bootconfig.Dir) || p == bootconfig.Dir || isUnder(p, bootconfig.RootDir) {
			continue
		}
		// EINVAL: gone with a mount above it, or not a mount point here.
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("removing %s from the app's mounts: %w", p, err)
		}
	}
	if err := unix.Chroot("."); err != nil {
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("entering the image: %w (it needs CAP_SYS_CHROOT: with --cap-drop ALL, run with %s; the app gets none of them)", err, dropAllFlags)
		}
		return fmt.Errorf("entering the image: %w", err)
	}
	return unix.Chdir("/")
}

// removeFUSEDevice removes /dev/fuse from the image's /dev (docker's, now
// moved there): bootinit needed it, the app is not given it.
func removeFUSEDevice(root *os.Root) error {
	fi, err := root.Lstat("dev/fuse")
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || fi.Mode()&os.ModeCharDevice == 0 || unix.Major(st.Rdev) != 10 || unix.Minor(st.Rdev) != 229 {
		return nil // not the FUSE device: the image's own file
	}
	if err := root.Remove("dev/fuse"); err != nil {
		return fmt.Errorf("removing /dev/fuse from the app's /dev: %w", err)
	}
	return nil
}

// mountOverlay mounts the image with a writable layer at RootDir. The
// writable layer is a tmpfs, cleaned up with the container and fast, but
// held in memory; the kernel refuses docker's own overlay layer as an upper
// directory (EINVAL), so to keep large writes on disk give the container a
// volume at UpperDir (-v /.bootfs/rw), which is used when it is a mount.
func (s *switcher) mountOverlay() error {
	if !isMountPoint(bootconfig.UpperDir) {
		if err := unix.Mount("tmpfs", bootconfig.UpperDir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
			return fmt.Errorf("mounting a tmpfs for the writable layer: %w", err)
		}
		s.log.Printf("writable layer on a tmpfs")
	} else {
		s.log.Printf("writable layer on the volume at %s", bootconfig.UpperDir)
	}
	upper, work := filepath.Join(bootconfig.UpperDir, "upper"), filepath.Join(bootconfig.UpperDir, "work")
	for _, d := range []string{upper, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("writable layer: %w", err)
		}
	}
	opts := ",upperdir=" + upper + ",workdir=" + work
	if len(s.trees) > 0 {
		// The boot trees, over the lazy mount: what they lack, lookups
		// find there.
		trees := strings.Join(s.trees, ":")
		err := unix.Mount("overlay", bootconfig.RootDir, "overlay", 0, "lowerdir="+trees+":"+bootconfig.LowerDir+opts)
		if err == nil {
			for _, t := range s.trees {
				s.log.Printf("the boot tree %s is stacked over the lazy mount", t)
			}
			return nil
		}
		// Not tried again for a day.
		s.log.Printf("stacking the boot trees %s: %v; booting without them", trees, err)
		for _, t := range s.trees {
			noteFailure(t, fmt.Errorf("mounting it: %w", err))
		}
	}
	opts = "lowerdir=" + bootconfig.LowerDir + opts
	if err := unix.Mount("overlay", bootconfig.RootDir, "overlay", 0, opts); err != nil {
		hint := ""
		if errors.Is(err, unix.EACCES) {
			hint = " (overlayfs needs CAP_DAC_OVERRIDE: with --cap-drop ALL, run with " + dropAllFlags + "; the app gets none of them)"
		}
		return fmt.Errorf("mounting the overlay (%s): %w%s", opts, err, hint)
	}
	return nil
}

// isMountPoint reports whether p is on another file system than its parent.
func isMountPoint(p string) bool {
	var st, parent unix.Stat_t
	return unix.Stat(p, &st) == nil && unix.Stat(filepath.Dir(p), &parent) == nil && st.Dev != parent.Dev
}

// keepDevices makes the device nodes a program may open by path in
// bootinit's own root, whose /dev moved away. Without CAP_MKNOD
// (--cap-drop ALL), bootinit goes without.
func (s *switcher) keepDevices() {
	for _, d := range []struct {
		path         string
		major, minor uint32
	}{{"/dev/null", 1, 3}, {"/dev/zero", 1, 5}, {"/dev/urandom", 1, 9}} {
		os.MkdirAll("/dev", 0o755)
		if err := unix.Mknod(d.path, unix.S_IFCHR|0o666, int(unix.Mkdev(d.major, d.minor))); err != nil && !errors.Is(err, os.ErrExist) {
			s.log.Printf("making %s for bootinit itself: %v", d.path, err)
		}
	}
}

// dnsFiles are the files bootinit's own resolver reads. docker bind-mounts
// them; once the mounts move into the image, bootinit still needs their
// content at the same paths in its own root.
var dnsFiles = []string{"/etc/resolv.conf", "/etc/hosts"}

func saveDNSFiles(carried []string) map[string][]byte {
	saved := map[string][]byte{}
	for _, f := range dnsFiles {
		for _, p := range carried {
			if p == f {
				if data, err := os.ReadFile(f); err == nil {
					saved[f] = data
				}
			}
		}
	}
	return saved
}

func restoreDNSFiles(saved map[string][]byte) {
	for f, data := range saved {
		if err := os.WriteFile(f, data, 0o644); err != nil && !errors.Is(err, os.ErrNotExist) {
			fmt.Fprintf(os.Stderr, "bootinit: keeping %s for bootinit's own lookups: %v\n", f, err)
		}
	}
}
