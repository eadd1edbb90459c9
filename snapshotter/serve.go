package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"google.golang.org/grpc"
)

// stopWait bounds how long a stop waits for the calls under way.
const stopWait = 10 * time.Second

// Serve serves sn over containerd's snapshots API on the unix socket at
// address until ctx ends, then stops accepting and waits for the calls
// under way.
func Serve(ctx context.Context, sn *Snapshotter, address string) error {
	if err := os.MkdirAll(filepath.Dir(address), 0o700); err != nil {
		return fmt.Errorf("socket directory: %w", err)
	}
	// A socket left by a daemon that was killed; a live one answers.
	if conn, err := net.Dial("unix", address); err == nil {
		conn.Close()
		return fmt.Errorf("%s: another snapshotter serves this socket", address)
	}
	if err := os.Remove(address); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing the stale socket %s: %w", address, err)
	}
	l, err := net.Listen("unix", address)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", address, err)
	}
	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	select {
	case <-ctx.Done():
		// Calls under way finish, but a stuck one holds no stop for long.
		stopped := make(chan struct{})
		go func() { srv.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(stopWait):
			srv.Stop()
		}
		<-done
		return nil
	case err := <-done:
		return fmt.Errorf("serving %s: %w", address, err)
	}
}
