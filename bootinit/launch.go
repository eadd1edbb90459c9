package bootinit

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/bootinit/bootconfig"
)

// The launcher is bootinit's second process, and the only one that touches
// the lazy mount: it stacks the overlay on it, copies the image's files into
// docker's volumes, moves the result onto /, and becomes the app. bootinit
// itself (PID 1) only serves the mount. A process that serves a FUSE mount
// must never do I/O on it: killed in the middle of such I/O, one of its
// threads waits forever for an answer that its own dead threads would have
// given, holds /dev/fuse open, and the container can never exit. Killed
// while the launcher waits on the mount, bootinit closes /dev/fuse as it
// dies, which ends every request of the mount at once.
//
// The launcher is started as bootinit starts, so that its own start (a Go
// runtime's, a few ms on a busy node) overlaps the boot; it waits on a
// socket, at launchFD, for the launch.

// launcherName as argv[0] puts bootinit in launch mode; no shim or command
// line of an image starts it that way.
const launcherName = "mkbootfs-launcher"

// launchFD is the launcher's end of the socket: its first descriptor past
// the standard three.
const launchFD = 3

// errNoLaunch is the launcher's end when bootinit failed before the
// launch: bootinit says why.
var errNoLaunch = errors.New("no launch")

// launcher is the launcher, started and waiting.
type launcher struct {
	proc *os.Process
	conn int // bootinit's end of the socket
}

// startLauncher starts the launcher, with bootinit's environment and
// standard files.
func startLauncher() (*launcher, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("starting the launcher: %w", err)
	}
	theirs := os.NewFile(uintptr(fds[1]), "launch socket")
	defer theirs.Close()
	proc, err := os.StartProcess(bootconfig.Bootinit, []string{launcherName},
		&os.ProcAttr{Env: os.Environ(), Files: []*os.File{os.Stdin, os.Stdout, os.Stderr, theirs}})
	if err != nil {
		unix.Close(fds[0])
		return nil, fmt.Errorf("starting the launcher: %w", err)
	}
	return &launcher{proc: proc, conn: fds[0]}, nil
}

// launch sends l to the launcher, which boots the image and becomes the app.
func (lc *launcher) launch(l launch) error {
	b, err := json.Marshal(l)
	if err != nil {
		return err
	}
	for n := 0; err == nil && n < len(b); { // a long argv takes several writes
		var k int
		k, err = unix.SendmsgN(lc.conn, b[n:], nil, nil, unix.MSG_NOSIGNAL)
		n += k
	}
	lc.close()
	if err != nil {
		return fmt.Errorf("launching the app: %w", err)
	}
	return nil
}

// close closes bootinit's end: a launcher not yet launched then exits.
func (lc *launcher) close() {
	if lc.conn >= 0 {
		unix.Close(lc.conn)
		lc.conn = -1
	}
}

// receiveLaunch waits for the launch from bootinit.
func receiveLaunch() (launch, error) {
	var l launch
	// Closed, so that the app does not inherit it.
	sock := os.NewFile(launchFD, "launch socket")
	b, err := io.ReadAll(sock)
	sock.Close()
	if err != nil {
		return l, fmt.Errorf("waiting for the launch: %w", err)
	}
	if len(b) == 0 {
		return l, errNoLaunch
	}
	if err := json.Unmarshal(b, &l); err != nil {
		return l, fmt.Errorf("launch spec: %w", err)
	}
	return l, nil
}

// launch is what the launcher needs to boot the image and become the app.
type launch struct {
	Argv       []string `json:"argv"`
	Dir        string   `json:"dir"`
	ID         identity `json:"id"`
	Foreground bool     `json:"foreground"` // take the terminal as its foreground process group
	// Trees are the boot trees to stack over the lazy mount, the top
	// first; none: the lazy mount alone.
	Trees []string `json:"trees,omitempty"`
	// Privileges is what the app keeps of bootinit's own.
	Privileges privileges `json:"privileges"`
}

// enterDir makes dir the working directory, making it first, as root,
// when the image lacks it: runc does so for a WORKDIR or -w.
func enterDir(dir string) error {
	err := unix.Chdir(dir)
	if errors.Is(err, unix.ENOENT) {
		if err = os.MkdirAll(dir, 0o755); err == nil {
			err = unix.Chdir(dir)
		}
	}
	if err != nil {
		return fmt.Errorf("working directory %s: %w", dir, err)
	}
	return nil
}

// interruptingSignals end a boot that has not yet started the app, as
// they would have ended the original app: with 128+N and a line saying so.
var interruptingSignals = []os.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT}

// exitOnInterrupt ends this process when one of interruptingSignals comes
// before the returned stop is called.
func exitOnInterrupt() (stop func()) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, interruptingSignals...)
	done := make(chan struct{})
	go func() {
		select {
		case s := <-sigs:
			exitInterrupted(s)
		case <-done:
		}
	}()
	return func() {
		signal.Reset(interruptingSignals...)
		close(done)
	}
}

// exitInterrupted ends the boot on signal s.
func exitInterrupted(s os.Signal) {
	fmt.Fprintf(os.Stderr, "bootinit: the boot was interrupted by %s before the app started\n", unix.SignalName(s.(syscall.Signal)))
	os.Exit(128 + int(s.(syscall.Signal)))
}

// runLaunch runs in the launcher: once launched, it boots the image (the
// overlay, docker's mounts and volumes, the move onto /), enters it in a
// mount namespace of its own that holds nothing of bootinit's, takes the
// app's identity, privileges and terminal, and execs the app.
func runLaunch() error {
	// For good, on one thread: the mount namespace and root it enters are
	// a thread's (unshare), and so are the capabilities it drops before
	// the exec.
	runtime.LockOSThread()
	// Nothing of the launcher may be read by a process of the container
	// while it holds bootinit's privileges; exec makes the app dumpable.
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("prctl: %w", err)
	}
	stop := exitOnInterrupt()
	l, err := receiveLaunch()
	if err != nil {
		return err
	}
	logw := io.Discard
	if os.Getenv(bootconfig.EnvDebug) == "1" {
		logw = os.Stderr
	}
	s := &switcher{log: log.New(logw, "bootinit: ", log.Lmicroseconds), trees: l.Trees, privileges: l.Privileges}
	if err := s.switchRoot(); err != nil {
		return err
	}
	exe, err := lookPath(l.Argv[0], envPath(os.Environ()))
	if err != nil {
		return err
	}
	if err := enterDir(l.Dir); err != nil {
		return err
	}
	if l.Foreground {
		// As a shell's job control does: own process group, in the
		// foreground of the terminal; SIGTTOU would stop us meanwhile.
		signal.Ignore(syscall.SIGTTOU)
		if err := unix.Setpgid(0, 0); err != nil {
			return fmt.Errorf("setpgid: %w", err)
		}
		if err := unix.IoctlSetPointerInt(0, unix.TIOCSPGRP, unix.Getpid()); err != nil {
			return fmt.Errorf("taking the terminal: %w", err)
		}
		signal.Reset(syscall.SIGTTOU)
	}
	// The setuid start of the launcher put GOTRACEBACK=none in its
	// environment (a Go runtime's secure mode): not the app's.
	os.Unsetenv("GOTRACEBACK")
	if err := dropPrivileges(l.ID, l.Privileges, s.log); err != nil {
		return err
	}
	stop()
	err = syscall.Exec(exe, l.Argv, os.Environ())
	code := exitNotExec
	if err == syscall.ENOENT {
		code = exitNotFound
	}
	return &exitError{code, fmt.Errorf("exec %s: %w", exe, err)}
}
