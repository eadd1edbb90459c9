package bootinit

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// runApp starts argv in the new root as the app's user and waits for it,
// forwarding signals and reaping orphans. It returns the app's exit code.
//
// The app is started through the launcher, bootinit itself in launch mode:
// Go starts processes with vfork, which stops the forking thread until the
// child has exec'd, and a garbage collection meanwhile waits for that
// thread. Were the child to exec the app, the exec would read the app from
// this process's FUSE mount, whose server the collection has stopped: a
// deadlock. The launcher's own binary is in the boot layer; launched, it
// enters the new root and execs the app while bootinit serves the reads.
func (b *boot) runApp(lc *launcher, root *os.File, argv []string, id identity, dir string) (int, error) {
	exe, err := lookPath(int(root.Fd()), argv[0], envPath(os.Environ()))
	if err != nil {
		return 0, err
	}
	sigs := make(chan os.Signal, 64)
	signal.Notify(sigs)
	defer signal.Stop(sigs)
	err = lc.launch(launch{Exe: exe, Argv: argv, Dir: dir, ID: id, Foreground: isTerminal(0)}, root)
	root.Close()
	if err != nil {
		return 0, err
	}
	b.log.Printf("started %q as pid %d (uid %d)", argv, lc.proc.Pid, id.UID)
	go forward(sigs, lc.proc.Pid)
	return reap(lc.proc.Pid), nil
}

// forward passes every signal bootinit gets on to the app, as docker stop's
// SIGTERM, but not the ones meant for bootinit: SIGCHLD (its children) and
// SIGURG (the Go runtime's preemption).
func forward(sigs <-chan os.Signal, pid int) {
	for s := range sigs {
		sig := s.(syscall.Signal)
		if sig == syscall.SIGCHLD || sig == syscall.SIGURG {
			continue
		}
		unix.Kill(pid, sig)
	}
}

// reap waits for every child (PID 1 inherits orphans) until the app exits,
// and returns its exit code: its status, or 128+N for signal N.
func reap(app int) int {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, 0, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return exitBoot
		}
		if pid != app {
			continue
		}
		if ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ws.ExitStatus()
	}
}

func envPath(env []string) string {
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			return v
		}
	}
	return "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
}

// lookPath finds the command in the new root as execve would there: a
// name with a slash as it is, else the first executable file on PATH. The
// image's symlinks are followed inside the image.
func lookPath(root int, name, pathEnv string) (string, error) {
	if strings.Contains(name, "/") {
		if err := executable(root, name); err != nil {
			return "", err
		}
		return name, nil
	}
	for _, dir := range strings.Split(pathEnv, ":") {
		if dir == "" || !path.IsAbs(dir) {
			continue
		}
		p := path.Join(dir, name)
		if executable(root, p) == nil {
			return p, nil
		}
	}
	return "", &exitError{exitNotFound, fmt.Errorf("%s: executable file not found in $PATH (%s) of the image", name, pathEnv)}
}

func executable(root int, p string) error {
	fd, err := openIn(root, p)
	if err != nil {
		return &exitError{exitNotFound, fmt.Errorf("%s: %w in the image", p, err)}
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Mode&0o111 == 0 {
		return &exitError{exitNotExec, fmt.Errorf("%s: not an executable file", p)}
	}
	return nil
}

// openIn opens p (O_PATH) resolving every component, symlinks included,
// inside the tree of the directory descriptor root, as if it were /.
func openIn(root int, p string) (int, error) {
	const maxLinks = 40
	links := 0
	fd, err := unix.Dup(root)
	if err != nil {
		return -1, err
	}
	parts := strings.Split(p, "/")
	for len(parts) > 0 {
		name := parts[0]
		parts = parts[1:]
		if name == "" || name == "." {
			continue
		}
		if name == ".." && sameFile(fd, root) {
			continue // the root is its own parent
		}
		next, err := unix.Openat(fd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			unix.Close(fd)
			return -1, err
		}
		var st unix.Stat_t
		if err := unix.Fstat(next, &st); err != nil {
			unix.Close(fd)
			unix.Close(next)
			return -1, err
		}
		if st.Mode&unix.S_IFMT != unix.S_IFLNK {
			unix.Close(fd)
			fd = next
			continue
		}
		links++
		buf := make([]byte, unix.PathMax)
		n, err := unix.Readlinkat(next, "", buf)
		unix.Close(next)
		if err != nil || links > maxLinks {
			unix.Close(fd)
			if err == nil {
				err = unix.ELOOP
			}
			return -1, err
		}
		target := string(buf[:n])
		if strings.HasPrefix(target, "/") {
			unix.Close(fd)
			if fd, err = unix.Dup(root); err != nil {
				return -1, err
			}
		}
		parts = append(strings.Split(target, "/"), parts...)
	}
	return fd, nil
}

func sameFile(a, b int) bool {
	var sa, sb unix.Stat_t
	return unix.Fstat(a, &sa) == nil && unix.Fstat(b, &sb) == nil && sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

func isTerminal(fd int) bool {
	_, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	return err == nil
}
