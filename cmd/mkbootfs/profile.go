package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/docker/cli/cli/config"
	"github.com/spf13/cobra"

	"github.com/mkbootfs/mkbootfs/converter"
	"github.com/mkbootfs/mkbootfs/profile"
	"github.com/mkbootfs/mkbootfs/store"
)

// readProfile reads a recorded profile.
func readProfile(path string) (*profile.Profile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--profile-from: %w", err)
	}
	defer f.Close()
	return profile.Parse(f, path)
}

// recordProfile runs the boot image of res once, from a temporary tag in
// the docker daemon, and returns the profile of its start.
func recordProfile(cmd *cobra.Command, res *converter.Result, bootBinary []byte, s store.Store, urls, args []string, timeout time.Duration) (*profile.Profile, error) {
	ctx := cmd.Context()
	nonce := make([]byte, 6)
	rand.Read(nonce)
	tag := "mkbootfs-profile:" + hex.EncodeToString(nonce)
	if _, _, err := converter.WriteBootImage(ctx, res, bootBinary, s, urls, "docker-daemon:"+tag); err != nil {
		return nil, fmt.Errorf("--profile: %w", err)
	}
	defer removeImage(tag)
	o := profile.RecordOptions{Image: tag, Args: args, Timeout: timeout, Output: cmd.ErrOrStderr()}
	for _, u := range urls {
		if !strings.Contains(u, "://") {
			o.StoreDir = u
			break
		}
	}
	// docker's own config, as docker login wrote it ($DOCKER_CONFIG too).
	auth := filepath.Join(config.Dir(), config.ConfigFileName)
	if fi, err := os.Stat(auth); err == nil && fi.Mode().IsRegular() {
		o.AuthFile = auth
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "profiling: running %s once, as %s (at most %v)\n", res.Index.Meta[converter.MetaSource], tag, timeout)
	return profile.Record(ctx, o)
}

// removeImage untags the temporary boot image, and so deletes it.
func removeImage(tag string) {
	exec.Command("docker", "rmi", "-f", tag).Run()
}
