// Package snapshotter is a containerd snapshotter for boot images, served
// over containerd's snapshots API (a proxy plugin). Every layer that is not
// a boot image's is containerd's own overlayfs snapshotter's business, in
// the same directory layout, so ordinary images work on a node where it is
// the default snapshotter.
package snapshotter

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay"
)

// Options configure a Snapshotter.
type Options struct {
	// Root holds the snapshots (metadata.db, snapshots/ID/fs as
	// containerd's overlayfs snapshotter lays them out).
	Root string
	// Log receives one line per event worth an operator's attention;
	// default log.Default().
	Log *log.Logger
}

// Snapshotter is containerd's overlayfs snapshotter, whose metadata it
// shares.
type Snapshotter struct {
	snapshots.Snapshotter
	ms   *storage.MetaStore
	root string
	log  *log.Logger
}

// New opens the snapshotter at opts.Root, making it if need be.
func New(opts Options) (*Snapshotter, error) {
	if opts.Root == "" {
		return nil, fmt.Errorf("snapshotter: no root directory")
	}
	if opts.Log == nil {
		opts.Log = log.Default()
	}
	root, err := filepath.Abs(opts.Root)
	if err != nil {
		return nil, err
	}
	// Only root reaches the snapshots: an image's files keep their modes,
	// setuid bits included.
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("snapshotter root: %w", err)
	}
	ms, err := storage.NewMetaStore(filepath.Join(root, "metadata.db"))
	if err != nil {
		return nil, fmt.Errorf("snapshotter metadata in %s: %w", root, err)
	}
	ov, err := overlay.NewSnapshotter(root, overlay.WithMetaStore(ms))
	if err != nil {
		ms.Close()
		return nil, fmt.Errorf("snapshotter in %s: %w", root, err)
	}
	return &Snapshotter{Snapshotter: ov, ms: ms, root: root, log: opts.Log}, nil
}

// Prepare makes an active snapshot of parent; see snapshots.Snapshotter.
func (s *Snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return s.Snapshotter.Prepare(ctx, key, parent, opts...)
}
