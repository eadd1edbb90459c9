package main

import (
	"log"
	"os"

	"github.com/spf13/cobra"

	"github.com/mkbootfs/mkbootfs/snapshotter"
)

func newSnapshotterCmd() *cobra.Command {
	var opts snapshotter.Options
	var address string
	cmd := &cobra.Command{
		Use:   "snapshotter --root DIR --address SOCKET",
		Short: "Serve containerd's snapshots API for boot images (a remote snapshotter)",
		Long: `Snapshotter is a daemon for each node of a containerd (Kubernetes) cluster:
containerd's proxy plugin reaches it at SOCKET. Layers of ordinary images
are kept as containerd's own overlayfs snapshotter keeps them, under DIR.
Run it until SIGINT or SIGTERM.`,
		Example: `  mkbootfs snapshotter --root /var/lib/mkbootfs-snapshotter --address /run/mkbootfs/snapshotter.sock`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts.Log = log.New(os.Stderr, "mkbootfs snapshotter: ", log.LstdFlags)
			sn, err := snapshotter.New(opts)
			if err != nil {
				return err
			}
			defer sn.Close()
			opts.Log.Printf("serving %s on %s", opts.Root, address)
			return snapshotter.Serve(cmd.Context(), sn, address)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Root, "root", "/var/lib/mkbootfs-snapshotter", "keep the snapshots in `DIR`")
	f.StringVar(&address, "address", "/run/mkbootfs/snapshotter.sock", "serve containerd on the unix socket `SOCKET`")
	return cmd
}
