package main

import (
	"fmt"
	"log"
	"net"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/snapshotter"
)

func newSnapshotterCmd() *cobra.Command {
	var opts snapshotter.Options
	var address, metrics string
	cmd := &cobra.Command{
		Use:   "snapshotter --root DIR --address SOCKET",
		Short: "Serve containerd's snapshots API for boot images (a remote snapshotter)",
		Long: `Snapshotter is a daemon for each node of a containerd (Kubernetes) cluster:
containerd's proxy plugin reaches it at SOCKET. A boot image's tree is
mounted lazily on the node, through the node cache, each mount served by a
process of its own that outlives the daemon; layers of ordinary images are
kept as containerd's own overlayfs snapshotter keeps them, under DIR.
Run it until SIGINT or SIGTERM.`,
		Example: `  mkbootfs snapshotter --root /var/lib/mkbootfs-snapshotter --address /run/mkbootfs/snapshotter.sock \
      --hosts-dir /etc/containerd/certs.d`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts.Log = log.New(os.Stderr, "mkbootfs snapshotter: ", log.LstdFlags)
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			opts.MountCommand = []string{exe, "snapshotter", "mount"}
			sn, err := snapshotter.New(opts)
			if err != nil {
				return err
			}
			defer sn.Close()
			if metrics != "" {
				l, err := net.Listen("tcp", metrics)
				if err != nil {
					return fmt.Errorf("--metrics-address: %w", err)
				}
				go func() {
					if err := snapshotter.ServeMetrics(cmd.Context(), sn, l); err != nil {
						opts.Log.Print(err)
					}
				}()
			}
			opts.Log.Printf("serving %s on %s", opts.Root, address)
			return snapshotter.Serve(cmd.Context(), sn, address)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Root, "root", "/var/lib/mkbootfs-snapshotter", "keep the snapshots in `DIR`")
	f.StringVar(&address, "address", "/run/mkbootfs/snapshotter.sock", "serve containerd on the unix socket `SOCKET`")
	f.StringVar(&opts.Cache, "cache", "", "the node cache of chunks, `DIR` (default: ROOT/cache)")
	f.StringVar(&opts.CacheSize, "cache-size", "", "bound the node cache to `SIZE` (20G, 10%; default: a tenth of its filesystem, within 1-20G)")
	f.StringVar(&opts.CacheMaxAge, "cache-max-age", "", "remove from the node cache the boot trees and learned profiles unused for `DURATION` (72h, 90m; default 168h, a week)")
	f.StringVar(&opts.HostsDir, "hosts-dir", "", "containerd's registry hosts configuration, `DIR`/HOST/hosts.toml (its config_path), for mirrors, plain HTTP and TLS")
	f.StringVar(&metrics, "metrics-address", "", "serve metrics (Prometheus text) at http://`ADDR`/metrics, e.g. 127.0.0.1:9810")
	cmd.AddCommand(newSnapshotterMountCmd())
	return cmd
}

// newSnapshotterMountCmd is the process that serves one boot snapshot's
// mount; the daemon starts it.
func newSnapshotterMountCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "mount SNAPSHOT-DIR",
		Short:  "Serve the lazy mount of one boot snapshot (the daemon starts it)",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// The daemon waits on a pipe at descriptor 3 for its word.
			var status *os.File
			var st unix.Stat_t
			if unix.Fstat(3, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFIFO {
				status = os.NewFile(3, "status")
			}
			if err := snapshotter.ServeMount(args[0], status); err != nil {
				return fmt.Errorf("mount of %s: %w", args[0], err)
			}
			return nil
		},
	}
}
