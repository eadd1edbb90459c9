package bootinit

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path"
	"slices"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// runApp launches the app and waits for it, forwarding signals and reaping
// orphans. It returns the app's exit code.
//
// The app is started through the launcher, bootinit itself in launch mode,
// started before the image was mounted: Go starts processes with vfork,
// which stops the forking thread until the child has exec'd, and a garbage
// collection meanwhile waits for that thread; were the child to exec a
// program of this process's FUSE mount, whose server the collection has
// stopped, it would deadlock.
func (b *boot) runApp(lc *launcher, l launch, fw *forwarder) (int, error) {
	if err := fw.launched(lc.proc.Pid, func() error { return lc.launch(l) }); err != nil {
		return 0, err
	}
	b.log.Printf("launched %q as pid %d (uid %d)", l.Argv, lc.proc.Pid, l.ID.UID)
	return reap(lc.proc.Pid), nil
}

// forwarder passes the signals bootinit gets on to the app once it is
// launched; before that, a signal that would end the app ends the boot.
type forwarder struct {
	sigs      chan os.Signal
	listening chan struct{} // closed once every signal comes to sigs
	mu        sync.Mutex
	pid       int // the app's, once launched
}

// newForwarder starts taking every signal. The runtime enables each of
// the ~65 signals with a round trip to its signal thread, 1.6-2 ms in all
// at a container's start: that goes on beside the boot's work, and the
// app is launched once it is done.
func newForwarder() *forwarder {
	fw := &forwarder{sigs: make(chan os.Signal, 64), listening: make(chan struct{})}
	go func() {
		signal.Notify(fw.sigs)
		close(fw.listening)
	}()
	go fw.handle()
	return fw
}

// stop stops taking signals.
func (fw *forwarder) stop() {
	<-fw.listening
	signal.Stop(fw.sigs)
}

// handle takes the signals from fw.sigs.
func (fw *forwarder) handle() {
	for s := range fw.sigs {
		sig := s.(syscall.Signal)
		// SIGCHLD is for bootinit's children, SIGURG the Go runtime's
		// preemption.
		if sig == syscall.SIGCHLD || sig == syscall.SIGURG {
			continue
		}
		fw.mu.Lock()
		pid := fw.pid
		fw.mu.Unlock()
		if pid != 0 {
			unix.Kill(pid, sig)
		} else if slices.Contains(interruptingSignals, s) {
			exitInterrupted(s)
		}
	}
}

// launched runs launch, after which signals go to pid.
func (fw *forwarder) launched(pid int, launch func() error) error {
	<-fw.listening
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if err := launch(); err != nil {
		return err
	}
	fw.pid = pid
	return nil
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

// lookPath finds the command in the image, this process's root, as execve
// would: a name with a slash as it is, else the first executable file on
// PATH.
func lookPath(name, pathEnv string) (string, error) {
	if strings.Contains(name, "/") {
		if err := executable(name); err != nil {
			return "", err
		}
		return name, nil
	}
	for _, dir := range strings.Split(pathEnv, ":") {
		if dir == "" || !path.IsAbs(dir) {
			continue
		}
		p := path.Join(dir, name)
		if executable(p) == nil {
			return p, nil
		}
	}
	return "", &exitError{exitNotFound, fmt.Errorf("%s: executable file not found in $PATH (%s) of the image", name, pathEnv)}
}

func executable(p string) error {
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		return &exitError{exitNotFound, fmt.Errorf("%s: %w in the image", p, err)}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Mode&0o111 == 0 {
		return &exitError{exitNotExec, fmt.Errorf("%s: not an executable file", p)}
	}
	return nil
}

func isTerminal(fd int) bool {
	_, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	return err == nil
}
