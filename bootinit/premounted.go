package bootinit

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/bootinit/bootconfig"
)

// premounted reports whether the container's root is already the image's
// tree, as `mkbootfs snapshotter` mounts it on the node.
func premounted() bool {
	_, err := os.Lstat(bootconfig.Premounted)
	return err == nil
}

// runPremounted runs the app in a root that is already the image's tree.
// bootinit mounts nothing there, so it keeps no privilege: started setuid
// (a user given, no no-new-privileges), it drops back to the real user
// first of all; then it execs the app in its place, with the identity,
// capabilities, working directory and environment the runtime gave it.
// It returns only when the app cannot be run.
func runPremounted(args []string) int {
	err := dropSetuid()
	var argv []string
	if err == nil {
		argv, err = command(args)
	}
	var exe string
	if err == nil {
		exe, err = lookPath(argv[0], envPath(os.Environ()))
	}
	if err == nil {
		err = syscall.Exec(exe, argv, os.Environ())
		code := exitNotExec
		if errors.Is(err, syscall.ENOENT) {
			code = exitNotFound
		}
		err = &exitError{code, fmt.Errorf("exec %s: %w", exe, err)}
	}
	fmt.Fprintln(os.Stderr, "bootinit:", err)
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return exitBoot
}

// dropSetuid gives up what bootinit's setuid bit gave: every user and
// group ID becomes the real one, and with a non-root user the kernel
// clears the capabilities root had.
func dropSetuid() error {
	uid, gid := unix.Getuid(), unix.Getgid()
	if unix.Geteuid() == uid && unix.Getegid() == gid {
		return nil
	}
	if err := syscall.Setresgid(gid, gid, gid); err != nil {
		return fmt.Errorf("setresgid %d: %w", gid, err)
	}
	if err := syscall.Setresuid(uid, uid, uid); err != nil {
		return fmt.Errorf("setresuid %d: %w", uid, err)
	}
	// The Go runtime sets it in a setuid start; the app must not inherit it.
	os.Unsetenv("GOTRACEBACK")
	return nil
}
