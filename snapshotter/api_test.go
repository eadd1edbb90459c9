package snapshotter_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/mkbootfs/mkbootfs/internal/testcri"
	"github.com/mkbootfs/mkbootfs/internal/testenv"
	"github.com/mkbootfs/mkbootfs/snapshotter"
)

// TestSnapshotsAPI runs containerd's own snapshotter conformance suite,
// as containerd runs it on its overlayfs snapshotter, against ours through
// the snapshots API, as containerd's proxy plugin calls it.
func TestSnapshotsAPI(t *testing.T) {
	testenv.Root(t)
	testsuite.SnapshotterSuite(t, "overlayfs", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		sn, err := snapshotter.New(snapshotter.Options{Root: root})
		if err != nil {
			return nil, nil, err
		}
		sockDir, err := os.MkdirTemp("", "mkbootfs-sn-")
		if err != nil {
			return nil, nil, err
		}
		sock := filepath.Join(sockDir, "sn.sock")
		sctx, cancel := context.WithCancel(context.Background())
		served := make(chan error, 1)
		go func() { served <- snapshotter.Serve(sctx, sn, sock) }()
		if err := testcri.WaitSocket(sock, 10*time.Second); err != nil {
			cancel()
			return nil, nil, err
		}
		conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			cancel()
			return nil, nil, err
		}
		client := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "mkbootfs")
		return client, func() error {
			conn.Close()
			cancel()
			err := <-served
			os.RemoveAll(sockDir)
			if cerr := sn.Close(); err == nil {
				err = cerr
			}
			return err
		}, nil
	})
}
