package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/mkbootfs/mkbootfs/bootimage"
	"github.com/mkbootfs/mkbootfs/extract"
)

func newExtractCmd() *cobra.Command {
	var stores []string
	var opt extract.Options
	cmd := &cobra.Command{
		Use:   "extract [--store URL]... [--devices] [--same-permissions] INDEX-OR-IMAGE DIR",
		Short: "Materialize the whole tree of an index or boot image into a directory",
		Long: `Extract writes the whole tree of INDEX-OR-IMAGE into DIR (empty or new),
with its owners when run as root, as tar does, its modes, times, xattrs and
hard links.

An image is untrusted: by default its device nodes are skipped, and its files
lose their setuid and setgid bits and file capabilities (security.capability),
so that a tree extracted by root gives no other user a /dev/mem or a
setuid-root shell; extract says how many on stderr. For a tree you trust that
is to be a root filesystem, --devices (rsync's name) creates the devices and
--same-permissions (tar's -p; --preserve-permissions too) keeps the bits and
capabilities.`,
		Example: `  mkbootfs extract --store /srv/chunks debian.idx /tmp/debian
  mkbootfs extract --devices --same-permissions 127.0.0.1:5000/app:1-bootfs /srv/root`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := bootimage.Read(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if len(stores) == 0 {
				stores = b.Stores
			}
			s, err := openStore(cmd.Context(), stores, false)
			if err != nil {
				return err
			}
			defer s.Close()
			res, err := extract.Extract(cmd.Context(), b.Index, s, args[1], opt)
			if err != nil {
				return err
			}
			if res.Devices > 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "mkbootfs: skipped %d device nodes (--devices creates them)\n", res.Devices)
			}
			if res.Privileged > 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "mkbootfs: cleared setuid, setgid or capabilities of %d files (--same-permissions keeps them)\n", res.Privileged)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&stores, "store", nil, "chunk store URL or directory (repeatable; default: the stores recorded at convert time)")
	f.BoolVar(&opt.Devices, "devices", false, "create the image's block and character devices (default: skipped)")
	f.BoolVarP(&opt.SamePermissions, "same-permissions", "p", false, "keep setuid and setgid bits and file capabilities (default: cleared); also --preserve-permissions")
	f.BoolVar(&opt.SamePermissions, "preserve-permissions", false, "tar's other name of --same-permissions")
	f.MarkHidden("preserve-permissions")
	return cmd
}
