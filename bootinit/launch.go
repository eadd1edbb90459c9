package bootinit

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/bootinit/bootconfig"
)

// launcherName as argv[0] puts bootinit in launch mode; no shim or command
// line of an image starts it that way. The launcher is started as bootinit
// starts, so that its own start (a Go runtime's, a few ms on a busy node)
// overlaps the boot rather than delay the app; it then waits on a socket,
// at launchFD, for the launch and the new root.
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

// launch sends l and the new root to the launcher, which becomes the app.
func (lc *launcher) launch(l launch, root *os.File) error {
	b, err := json.Marshal(l)
	if err != nil {
		return err
	}
	n, err := unix.SendmsgN(lc.conn, b, unix.UnixRights(int(root.Fd())), nil, unix.MSG_NOSIGNAL)
	for err == nil && n < len(b) { // a long argv
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

// receiveLaunch waits for the launch and the new root from bootinit.
func receiveLaunch() (launch, int, error) {
	var l launch
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := unix.Recvmsg(launchFD, buf, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		return l, -1, fmt.Errorf("waiting for the launch: %w", err)
	}
	if n == 0 {
		return l, -1, errNoLaunch
	}
	root := -1
	if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil && len(msgs) == 1 {
		if fds, err := unix.ParseUnixRights(&msgs[0]); err == nil && len(fds) == 1 {
			root = fds[0]
		}
	}
	if root < 0 {
		return l, -1, errors.New("the launch came without the new root")
	}
	// Closed, so that the app does not inherit it.
	sock := os.NewFile(launchFD, "launch socket")
	rest, err := io.ReadAll(sock)
	sock.Close()
	if err == nil {
		err = json.Unmarshal(append(buf[:n], rest...), &l)
	}
	if err != nil {
		unix.Close(root)
		return l, -1, fmt.Errorf("launch spec: %w", err)
	}
	return l, root, nil
}

// launch is what the launcher needs to become the app.
type launch struct {
	Exe        string   `json:"exe"`
	Argv       []string `json:"argv"`
	Dir        string   `json:"dir"`
	ID         identity `json:"id"`
	Foreground bool     `json:"foreground"` // take the terminal as its foreground process group
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

// runLaunch runs in the launcher: once launched, it enters the new root,
// takes the app's identity and terminal, and execs the app.
func runLaunch() error {
	l, root, err := receiveLaunch()
	if err != nil {
		return err
	}
	err = unix.Fchdir(root)
	unix.Close(root)
	if err == nil {
		err = unix.Chroot(".")
	}
	if err != nil {
		return fmt.Errorf("entering the image: %w", err)
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
	if l.ID.UID != 0 || l.ID.GID != 0 {
		groups := make([]int, len(l.ID.Groups))
		for i, g := range l.ID.Groups {
			groups[i] = int(g)
		}
		// Go applies these to every thread of the process.
		if err := syscall.Setgroups(groups); err != nil {
			return fmt.Errorf("setgroups: %w", err)
		}
		if err := syscall.Setgid(int(l.ID.GID)); err != nil {
			return fmt.Errorf("setgid %d: %w", l.ID.GID, err)
		}
		if err := syscall.Setuid(int(l.ID.UID)); err != nil {
			return fmt.Errorf("setuid %d: %w", l.ID.UID, err)
		}
	}
	err = syscall.Exec(l.Exe, l.Argv, os.Environ())
	code := exitNotExec
	if err == syscall.ENOENT {
		code = exitNotFound
	}
	return &exitError{code, fmt.Errorf("exec %s: %w", l.Exe, err)}
}
