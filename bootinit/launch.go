package bootinit

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/sys/unix"
)

// launcherName as argv[0] puts bootinit in launch mode, argv[1] holding the
// launch as JSON; no shim or command line of an image starts it that way.
const launcherName = "mkbootfs-launcher"

// launch is what the launcher needs to become the app.
type launch struct {
	Exe        string   `json:"exe"`
	Argv       []string `json:"argv"`
	Dir        string   `json:"dir"`
	ID         identity `json:"id"`
	Foreground bool     `json:"foreground"` // take the terminal as its foreground process group
}

func (l launch) args() ([]string, error) {
	b, err := json.Marshal(l)
	if err != nil {
		return nil, err
	}
	return []string{launcherName, string(b)}, nil
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

// runLaunch runs in the launcher, whose cwd is the new root: it enters the
// root, takes the app's identity and terminal, and execs the app.
func runLaunch(spec string) error {
	var l launch
	if err := json.Unmarshal([]byte(spec), &l); err != nil {
		return fmt.Errorf("launch spec: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
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
	err := syscall.Exec(l.Exe, l.Argv, os.Environ())
	code := exitNotExec
	if err == syscall.ENOENT {
		code = exitNotFound
	}
	return &exitError{code, fmt.Errorf("exec %s: %w", l.Exe, err)}
}
