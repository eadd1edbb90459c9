package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/mkbootfs/mkbootfs/converter"
	"github.com/mkbootfs/mkbootfs/internal/atomicfile"
)

func newConvertCmd() *cobra.Command {
	var (
		stores    []string
		indexPath string
		opts      converter.Options
	)
	cmd := &cobra.Command{
		Use:   "convert [flags] SOURCE [TARGET]",
		Short: "Convert an image or a directory into chunks and an index",
		Long: `Convert flattens SOURCE, cuts its files into content-defined chunks in the
chunk store, and writes the index of the tree.

SOURCE uses skopeo's transport names:
  IMAGE[:TAG]             the local docker daemon's image, else the registry's (--pull: the registry's)
  docker://IMAGE[:TAG]    a registry
  docker-daemon:IMAGE     the local docker daemon
  docker-archive:PATH     a 'docker save' tarball
  oci:PATH[:TAG]          an OCI image layout
  dir:PATH                a root directory on this machine`,
		Example: `  mkbootfs convert --index debian.idx dir:/srv/rootfs
  mkbootfs convert --store /srv/chunks --index app.idx docker-archive:app.tar`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 2 {
				return errors.New("boot image targets are not supported by this build: use --index FILE")
			}
			if indexPath == "" {
				return errors.New("nothing to write: give --index FILE")
			}
			ctx := cmd.Context()
			s, err := openStore(ctx, stores, true)
			if err != nil {
				return err
			}
			defer s.Close()
			opts.Source, opts.Store = args[0], s
			if opts.StoreURLs, err = storeURLs(stores); err != nil {
				return err
			}
			if term.IsTerminal(int(os.Stderr.Fd())) {
				opts.Progress = os.Stderr
			}
			start := time.Now()
			res, err := converter.Convert(ctx, opts)
			if err != nil {
				return err
			}
			b, err := res.Index.MarshalBinary()
			if err != nil {
				return err
			}
			if err := atomicfile.Write(indexPath, b, 0o644); err != nil {
				return err
			}
			st := res.Stats
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %d entries, %.1f MB in %d chunks (%d new, %.1f MB written), index %s (%d KB), %.2fs\n",
				args[0], st.Entries, float64(st.DataBytes)/1e6, st.Chunks, st.NewChunks, float64(st.NewBytes)/1e6,
				indexPath, len(b)/1024, time.Since(start).Seconds())
			return nil
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&stores, "store", nil, "chunk store URL or directory (repeatable; default $MKBOOTFS_STORE_DIR or /var/lib/mkbootfs/store)")
	f.StringVar(&indexPath, "index", "", "write the index to `FILE`")
	f.StringVar(&opts.Platform, "platform", "", "pick `OS/ARCH[/VARIANT]` from a multi-platform image (default: this machine's)")
	f.BoolVar(&opts.Pull, "pull", false, "read a bare reference from its registry even if the docker daemon has it")
	return cmd
}
