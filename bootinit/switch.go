package bootinit

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/bootinit/bootconfig"
)

// switchRoot stacks the writable overlay on the lazy image, moves docker's
// mounts into it and moves it onto /. It returns the new root, opened
// before the move: bootinit's own root stays the boot layer.
func (b *boot) switchRoot() (*os.File, error) {
	if err := b.mountOverlay(); err != nil {
		return nil, err
	}
	// A mount under a shared parent cannot be moved.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return nil, fmt.Errorf("making / private: %w", err)
	}
	mounts, err := readMountinfo("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	if err := b.copyUp(mounts); err != nil {
		return nil, err
	}
	carried := toCarry(mounts, bootconfig.Dir)
	// /proc goes last: moving a mount targets /proc/self/fd.
	for i, p := range carried {
		if p == "/proc" {
			carried = append(append(carried[:i:i], carried[i+1:]...), p)
			break
		}
	}
	dnsFiles := b.saveDNSFiles(carried)
	root, err := os.OpenRoot(bootconfig.RootDir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	for _, p := range carried {
		if err := carry(p, root); err != nil {
			return nil, err
		}
		b.log.Printf("carried mount %s", p)
	}
	restoreDNSFiles(dnsFiles)
	keepDevices()

	newRoot, err := os.Open(bootconfig.RootDir)
	if err != nil {
		return nil, err
	}
	if err := unix.Fchdir(int(newRoot.Fd())); err != nil {
		return nil, err
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return nil, fmt.Errorf("moving the image onto /: %w", err)
	}
	return newRoot, nil
}

// mountOverlay mounts the image with a writable layer at RootDir. The
// writable layer is a tmpfs, cleaned up with the container and fast, but
// held in memory; the kernel refuses docker's own overlay layer as an upper
// directory (EINVAL), so to keep large writes on disk give the container a
// volume at UpperDir (-v /.bootfs/rw), which is used when it is a mount.
func (b *boot) mountOverlay() error {
	if !isMountPoint(bootconfig.UpperDir) {
		if err := unix.Mount("tmpfs", bootconfig.UpperDir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
			return fmt.Errorf("mounting a tmpfs for the writable layer: %w", err)
		}
		b.log.Printf("writable layer on a tmpfs")
	} else {
		b.log.Printf("writable layer on the volume at %s", bootconfig.UpperDir)
	}
	upper, work := filepath.Join(bootconfig.UpperDir, "upper"), filepath.Join(bootconfig.UpperDir, "work")
	for _, d := range []string{upper, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("writable layer: %w", err)
		}
	}
	opts := ",upperdir=" + upper + ",workdir=" + work
	if b.treeInUse {
		// The boot tree, with the lazy mount below it as a data-only layer.
		err := unix.Mount("overlay", bootconfig.RootDir, "overlay", 0, "lowerdir="+b.tree+"::"+bootconfig.LowerDir+opts+",metacopy=on")
		if err == nil {
			b.log.Printf("the boot tree %s is stacked over the lazy mount", b.tree)
			return nil
		}
		// Linux before 6.5 has no data-only layers: not tried again for a day.
		b.log.Printf("stacking the boot tree %s: %v; booting without it", b.tree, err)
		noteFailure(b.tree, fmt.Errorf("mounting it: %w", err))
		b.treeInUse = false
	}
	opts = "lowerdir=" + bootconfig.LowerDir + opts
	if err := unix.Mount("overlay", bootconfig.RootDir, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mounting the overlay (%s): %w", opts, err)
	}
	return nil
}

// isMountPoint reports whether p is on another file system than its parent.
func isMountPoint(p string) bool {
	var st, parent unix.Stat_t
	return unix.Stat(p, &st) == nil && unix.Stat(filepath.Dir(p), &parent) == nil && st.Dev != parent.Dev
}

// keepDevices makes the device nodes a program may open by path in
// bootinit's own root, whose /dev moved away.
func keepDevices() {
	for _, d := range []struct {
		path         string
		major, minor uint32
	}{{"/dev/null", 1, 3}, {"/dev/zero", 1, 5}, {"/dev/urandom", 1, 9}} {
		os.MkdirAll("/dev", 0o755)
		if err := unix.Mknod(d.path, unix.S_IFCHR|0o666, int(unix.Mkdev(d.major, d.minor))); err != nil && !errors.Is(err, os.ErrExist) {
			fmt.Fprintf(os.Stderr, "bootinit: making %s for bootinit itself: %v\n", d.path, err)
		}
	}
}

// dnsFiles are the files bootinit's own resolver reads. docker bind-mounts
// them; once the mounts move into the image, bootinit still needs their
// content at the same paths in its own root.
var dnsFiles = []string{"/etc/resolv.conf", "/etc/hosts"}

func (b *boot) saveDNSFiles(carried []string) map[string][]byte {
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
