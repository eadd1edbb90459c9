package profile

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// RecordOptions configure Record.
type RecordOptions struct {
	// Image is a boot image in the docker daemon.
	Image string
	// Args replace the image's cmd; empty: the image's own.
	Args []string
	// StoreDir, when set, is the local chunk store directory the boot
	// image reads (bind-mounted read-only at /.bootfs/store).
	StoreDir string
	// AuthFile, when set, is a docker config the container reads a
	// registry store with.
	AuthFile string
	// Timeout ends the run (docker stop: the app gets SIGTERM) if the app
	// has not exited by then: a server's start is what is profiled.
	Timeout time.Duration
	// Output receives the container's output; nil: discarded.
	Output io.Writer
}

// Record runs a boot image once with docker, on the host's network, and
// returns the profile bootinit recorded of its reads. The app's exit code
// does not matter: a server stopped at Timeout has still started.
func Record(ctx context.Context, o RecordOptions) (*Profile, error) {
	dir, err := os.MkdirTemp("", "mkbootfs-profile-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	const inside = "/.bootfs/profile-out"
	nonce := make([]byte, 6)
	rand.Read(nonce)
	name := "mkbootfs-profile-" + hex.EncodeToString(nonce)
	args := []string{"run", "--rm", "--name", name, "--network", "host",
		"--device", "/dev/fuse", "--cap-add", "SYS_ADMIN", "--security-opt", "apparmor=unconfined",
		"-v", dir + ":" + inside, "-e", "MKBOOTFS_PROFILE=" + inside + "/profile", "-e", "MKBOOTFS_PREFETCH=none"}
	if o.StoreDir != "" {
		args = append(args, "-v", o.StoreDir+":/.bootfs/store:ro")
	}
	if o.AuthFile != "" {
		args = append(args, "-v", o.AuthFile+":/.bootfs/auth.json:ro")
	}
	args = append(append(args, o.Image), o.Args...)
	out := o.Output
	if out == nil {
		out = io.Discard
	}
	var stderr bytes.Buffer
	cmd := exec.Command("docker", args...)
	cmd.Stdout, cmd.Stderr = out, io.MultiWriter(out, &stderr)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("recording a profile: docker run: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	// Ended from outside, the container goes too: killing the docker
	// client would leave it running.
	var runErr error
	select {
	case runErr = <-exited:
	case <-time.After(o.Timeout):
		exec.Command("docker", "stop", "-t", "10", name).Run()
		runErr = <-exited
	case <-ctx.Done():
		exec.Command("docker", "rm", "-f", name).Run()
		<-exited
		return nil, fmt.Errorf("recording a profile: %w", ctx.Err())
	}
	path := filepath.Join(dir, "profile")
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("recording a profile: the run of %s left none (%v): %s", o.Image, runErr, lastLine(stderr.String()))
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return Parse(f, "recorded by "+o.Image)
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	return s[strings.LastIndexByte(s, '\n')+1:]
}
