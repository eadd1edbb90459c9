// Package snapshotter is a containerd remote snapshotter for boot images,
// served over containerd's snapshots API (a proxy plugin).
//
// When containerd unpacks a boot image's own layer (CRI labels each
// layer's snapshot with the image and the layer it is of), the snapshotter
// fetches that small layer itself, commits the layer's snapshot at once,
// so that containerd downloads nothing more of the image, and mounts the
// image's tree lazily on the node (lazyfs, through the node cache), served
// by a process of its own that outlives the daemon. A container's root,
// an overlay over its layers, then shows the image's tree in place of the
// boot image's own layer, above bootinit's layer, and a marker
// (bootconfig.Premounted) that tells bootinit to only run the app.
//
// Every other layer is containerd's own overlayfs snapshotter's business,
// in the same directory layout, so ordinary images work on a node where it
// is the default snapshotter.
package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay"
	"github.com/containerd/errdefs"

	"github.com/mkbootfs/mkbootfs/bootinit/bootconfig"
	"github.com/mkbootfs/mkbootfs/internal/atomicfile"
	"github.com/mkbootfs/mkbootfs/nodecache"
)

// labelBoot marks a boot snapshot; its value is the boot image's own layer.
const labelBoot = "containerd.io/snapshot/mkbootfs.layer"

// Options configure a Snapshotter.
type Options struct {
	// Root holds the snapshots (metadata.db, snapshots/ID as containerd's
	// overlayfs snapshotter lays them out).
	Root string
	// Cache is the node cache of chunks, shared by every image and
	// container of the node; default Root/cache.
	Cache string
	// CacheSize bounds the node cache, as nodecache.ParseSize reads it
	// ("20G", "10%"); empty: nodecache's default for its filesystem.
	CacheSize string
	// CacheMaxAge is how long the node cache keeps trees and profiles
	// unused, as nodecache.ParseMaxAge reads it ("72h"); empty: a week.
	CacheMaxAge string
	// HostsDir is containerd's registry hosts configuration (its
	// config_path: HOST/hosts.toml), for mirrors, plain HTTP, TLS and
	// headers, of the boot images and of their chunk stores in a
	// registry; empty: none.
	HostsDir string
	// MountCommand runs a mount process (ServeMount) when the snapshot's
	// directory is appended: `mkbootfs snapshotter mount`.
	MountCommand []string
	// Log receives one line per event worth an operator's attention;
	// default log.Default().
	Log *log.Logger
}

// Snapshotter is containerd's overlayfs snapshotter, whose metadata it
// shares, with boot images' own layers mounted lazily.
type Snapshotter struct {
	snapshots.Snapshotter
	ms       *storage.MetaStore
	root     string
	registry *registry
	mounts   *mounts
	log      *log.Logger
}

// New opens the snapshotter at opts.Root, making it if need be, and takes
// back the mounts of its boot snapshots: those still served are kept,
// the others mounted again in the background.
func New(opts Options) (*Snapshotter, error) {
	if opts.Root == "" {
		return nil, errors.New("snapshotter: no root directory")
	}
	if opts.Log == nil {
		opts.Log = log.Default()
	}
	root, err := filepath.Abs(opts.Root)
	if err != nil {
		return nil, err
	}
	if opts.Cache == "" {
		opts.Cache = filepath.Join(root, "cache")
	}
	// Only root reaches the snapshots: an image's files keep their modes.
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("snapshotter root: %w", err)
	}
	var cacheSize int64
	if opts.CacheSize != "" {
		if err := os.MkdirAll(opts.Cache, 0o700); err != nil {
			return nil, fmt.Errorf("node cache: %w", err)
		}
		if cacheSize, err = nodecache.ParseSize(opts.CacheSize, opts.Cache); err != nil {
			return nil, fmt.Errorf("node cache size: %w", err)
		}
	}
	var cacheMaxAge time.Duration
	if opts.CacheMaxAge != "" {
		if cacheMaxAge, err = nodecache.ParseMaxAge(opts.CacheMaxAge); err != nil {
			return nil, fmt.Errorf("node cache: %w", err)
		}
	}
	ms, err := storage.NewMetaStore(filepath.Join(root, "metadata.db"))
	if err != nil {
		return nil, fmt.Errorf("snapshotter metadata in %s: %w", root, err)
	}
	// Removals as containerd's overlayfs plugin makes them by default:
	// the directories go at Cleanup.
	ov, err := overlay.NewSnapshotter(root, overlay.WithMetaStore(ms), overlay.AsynchronousRemove)
	if err != nil {
		ms.Close()
		return nil, fmt.Errorf("snapshotter in %s: %w", root, err)
	}
	s := &Snapshotter{
		Snapshotter: ov, ms: ms, root: root, log: opts.Log,
		registry: newRegistry(opts.HostsDir),
		mounts:   &mounts{cmd: opts.MountCommand, cache: opts.Cache, cacheSize: cacheSize, cacheMaxAge: cacheMaxAge, hostsDir: opts.HostsDir, log: opts.Log, m: map[string]*lazyMount{}},
	}
	if err := s.takeBack(); err != nil {
		ov.Close()
		return nil, err
	}
	return s, nil
}

// takeBack finds the boot snapshots and mounts again, in the background,
// those whose mount process is gone.
func (s *Snapshotter) takeBack() error {
	ctx := context.Background()
	ids, err := s.ids(ctx)
	if err != nil {
		return fmt.Errorf("snapshotter metadata: %w", err)
	}
	for id := range ids {
		dir := s.dir(id)
		image, err := os.ReadFile(filepath.Join(dir, stateDir, "image"))
		if err != nil {
			continue // not a boot snapshot
		}
		lm := s.mounts.add(id, dir, string(image))
		if lm.alive() {
			s.log.Printf("took back the mount of %s at %s (mount process %d)", lm.image, lm.point(), lm.pid())
			continue
		}
		go func() {
			if err := s.mounts.ensure(ctx, lm); err != nil {
				s.log.Printf("mounting %s again: %v", lm.image, err)
			}
		}()
	}
	return nil
}

// ids returns the IDs of the snapshots, none in a new root.
func (s *Snapshotter) ids(ctx context.Context) (map[string]string, error) {
	var ids map[string]string
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) (err error) {
		ids, err = storage.IDMap(ctx)
		return err
	})
	if errdefs.IsNotFound(err) {
		return nil, nil
	}
	return ids, err
}

// dir is the directory of snapshot id.
func (s *Snapshotter) dir(id string) string { return filepath.Join(s.root, "snapshots", id) }

// Prepare makes an active snapshot of parent; see snapshots.Snapshotter.
// For the unpacking of a boot image's own layer it makes the layer's
// snapshot itself, and says it exists (errdefs.ErrAlreadyExists).
func (s *Snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	var info snapshots.Info
	for _, o := range opts {
		if err := o(&info); err != nil {
			return nil, err
		}
	}
	if target := info.Labels[snapshots.LabelSnapshotRef]; target != "" {
		image, own, ok, err := s.registry.bootLayer(ctx, info.Labels)
		if err != nil {
			// containerd pulls the layer itself, and says why not if it cannot.
			s.log.Printf("%s: is it a boot image? %v", info.Labels[snapshotters.TargetRefLabel], err)
		}
		if ok {
			return nil, s.prepareBoot(ctx, key, parent, target, image, own, opts)
		}
	}
	return s.made(ctx, key)(s.Snapshotter.Prepare(ctx, key, parent, opts...))
}

// made finishes the making of snapshot key (Prepare, View): its mounts
// with the lazy mounts in, or, when these cannot be had, no snapshot.
func (s *Snapshotter) made(ctx context.Context, key string) func([]mount.Mount, error) ([]mount.Mount, error) {
	return func(m []mount.Mount, err error) ([]mount.Mount, error) {
		if err != nil {
			return nil, err
		}
		if m, err = s.lazy(ctx, key, m); err != nil {
			s.Snapshotter.Remove(ctx, key)
			return nil, err
		}
		return m, nil
	}
}

// prepareBoot makes target, the snapshot of a boot image's own layer: the
// layer is fetched and kept for the mount process, the snapshot's own
// tree is only the marker, and the mount starts in the background. A
// layer whose index is corrupt is committed all the same: the creation of
// a container over it fails, saying why.
func (s *Snapshotter) prepareBoot(ctx context.Context, key, parent, target, image string, own ownLayer, opts []snapshots.Opt) error {
	exists := fmt.Errorf("target snapshot %q: %w", target, errdefs.ErrAlreadyExists)
	if _, err := s.Stat(ctx, target); err == nil {
		return exists
	}
	// The chunks a start reads first come over the link while the own
	// layer does, and the mount process starts: it finds them in the
	// node cache, or on their way there.
	layerIn := make(chan struct{})
	go s.mounts.prefetchEarly(image, own.stores, own.prefetch, layerIn)
	layer := own.desc
	tmp, err := os.MkdirTemp(s.root, "incoming-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	err = s.registry.fetchLayer(ctx, image, layer, filepath.Join(tmp, layerFile))
	close(layerIn)
	if err != nil {
		return fmt.Errorf("mkbootfs: fetching the boot image's own layer: %w", err)
	}
	if _, err := s.Snapshotter.Prepare(ctx, key, parent, opts...); err != nil {
		return err
	}
	id, err := s.id(ctx, key)
	if err == nil {
		err = s.fillBoot(s.dir(id), tmp, image)
	}
	if err == nil {
		err = s.Snapshotter.Commit(ctx, target, key, append(opts, snapshots.WithLabels(map[string]string{labelBoot: layer.Digest.String()}))...)
	}
	if err != nil {
		s.Snapshotter.Remove(ctx, key)
		if errdefs.IsAlreadyExists(err) {
			return exists // made meanwhile by another pull of the image
		}
		return err
	}
	lm := s.mounts.add(id, s.dir(id), image)
	s.log.Printf("%s: boot image, its own layer %s is snapshot %s", image, layer.Digest, id)
	go func() {
		// The mount comes up while the pull ends; creation waits for it.
		if err := s.mounts.ensure(context.Background(), lm); err != nil {
			s.log.Printf("%v", err)
		}
	}()
	return exists
}

// fillBoot lays out the boot snapshot at dir: the marker in its tree, the
// own layer from tmp beside it, and the mount point.
func (s *Snapshotter) fillBoot(dir, tmp, image string) error {
	marker := filepath.Join(dir, "fs", bootconfig.Premounted)
	if err := os.MkdirAll(filepath.Dir(marker), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(marker, []byte(image+"\n"), 0o644); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(dir, stateDir), 0o700); err != nil {
		return err
	}
	if err := os.Mkdir(filepath.Join(dir, lazyDir), 0o755); err != nil {
		return err
	}
	if err := os.Rename(filepath.Join(tmp, layerFile), filepath.Join(dir, stateDir, layerFile)); err != nil {
		return err
	}
	// Last: it makes the snapshot a boot snapshot to a restarted daemon.
	return atomicfile.Write(filepath.Join(dir, stateDir, "image"), []byte(image), 0o644)
}

// id returns the ID of the snapshot key, the name of its directory.
func (s *Snapshotter) id(ctx context.Context, key string) (string, error) {
	var id string
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) (err error) {
		id, _, _, err = storage.GetInfo(ctx, key)
		return err
	})
	return id, err
}

// View makes a read-only snapshot of parent; see snapshots.Snapshotter.
func (s *Snapshotter) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return s.made(ctx, key)(s.Snapshotter.View(ctx, key, parent, opts...))
}

// Mounts returns the mounts of the snapshot key; see snapshots.Snapshotter.
func (s *Snapshotter) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	m, err := s.Snapshotter.Mounts(ctx, key)
	if err != nil {
		return nil, err
	}
	return s.lazy(ctx, key, m)
}

// lazy puts, in the mounts of snapshot key, each boot snapshot's lazy
// mount below its tree (the marker), mounting it first if need be. A
// mount that cannot be had fails the call, saying why in one line.
func (s *Snapshotter) lazy(ctx context.Context, key string, m []mount.Mount) ([]mount.Mount, error) {
	var sn storage.Snapshot
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) (err error) {
		sn, err = storage.GetSnapshot(ctx, key)
		return err
	})
	if err != nil {
		return nil, err
	}
	lazy := map[string]string{} // a boot snapshot's fs directory: its lazy mount
	for _, id := range sn.ParentIDs {
		lm := s.mounts.get(id)
		if lm == nil {
			continue
		}
		if err := s.mounts.ensure(ctx, lm); err != nil {
			err = fmt.Errorf("mkbootfs: %w", err)
			s.log.Print(err)
			return nil, err
		}
		lazy[filepath.Join(lm.dir, "fs")] = lm.point()
	}
	if len(lazy) == 0 {
		return m, nil
	}
	out := make([]mount.Mount, len(m))
	for i, mt := range m {
		out[i] = mt
		switch {
		case mt.Type == "overlay":
			out[i].Options = make([]string, len(mt.Options))
			for j, o := range mt.Options {
				if dirs, ok := strings.CutPrefix(o, "lowerdir="); ok {
					var with []string
					for _, d := range strings.Split(dirs, ":") {
						with = append(with, d)
						if l, ok := lazy[d]; ok {
							with = append(with, l)
						}
					}
					o = "lowerdir=" + strings.Join(with, ":")
				}
				out[i].Options[j] = o
			}
		case mt.Type == "bind" && lazy[mt.Source] != "":
			// A view of the boot snapshot alone: two lower layers, no upper.
			out[i] = mount.Mount{Type: "overlay", Source: "overlay", Options: []string{"lowerdir=" + mt.Source + ":" + lazy[mt.Source]}}
		}
	}
	return out, nil
}

// Remove removes the snapshot key; see snapshots.Snapshotter. A boot
// snapshot's mount goes with it.
func (s *Snapshotter) Remove(ctx context.Context, key string) error {
	id, err := s.id(ctx, key)
	if err != nil {
		return err
	}
	if err := s.Snapshotter.Remove(ctx, key); err != nil {
		return err
	}
	if lm := s.mounts.get(id); lm != nil {
		s.mounts.stop(lm)
		s.mounts.forget(id)
		s.log.Printf("unmounted %s: its snapshot is removed", lm.image)
	}
	return nil
}

// Cleanup removes the directories of removed snapshots; see
// snapshots.Cleaner.
func (s *Snapshotter) Cleanup(ctx context.Context) error {
	ids, err := s.ids(ctx)
	if err != nil {
		return err
	}
	// No directory goes while a mount is in it: those of this daemon's
	// removed snapshots, nor those a killed daemon left.
	for id, lm := range s.mounts.all() {
		if _, ok := ids[id]; !ok {
			s.mounts.stop(lm)
			s.mounts.forget(id)
		}
	}
	dirs, _ := os.ReadDir(filepath.Join(s.root, "snapshots"))
	for _, d := range dirs {
		if _, ok := ids[d.Name()]; ok {
			continue
		}
		dir := filepath.Join(s.root, "snapshots", d.Name())
		if image, err := os.ReadFile(filepath.Join(dir, stateDir, "image")); err == nil {
			s.mounts.stop(&lazyMount{dir: dir, image: string(image), turn: make(chan struct{}, 1)})
		}
	}
	return s.Snapshotter.(snapshots.Cleaner).Cleanup(ctx)
}
