package main

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/mkbootfs/mkbootfs/bootimage"
	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/local"
	"github.com/mkbootfs/mkbootfs/store/location"
)

func newGCCmd() *cobra.Command {
	var (
		dir    string
		opt    local.GCOptions
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "gc [--store DIR] [--keep-newer DURATION] [--dry-run] INDEX-OR-IMAGE...",
		Short: "Remove the chunks of a directory store that no named index or boot image uses",
		Long: `Gc keeps every chunk of the named indexes and boot images (as inspect takes
them) in the directory store, and every chunk used within --keep-newer, and
removes the rest. Name every image that is still in use: a chunk only the
unnamed ones use is removed.

A conversion into the store that runs at the same time is never broken if it
takes less than --keep-newer: the chunks it writes are new, and those it
finds present it touches. Nothing is removed when a named index or image
cannot be read, or when the store holds none of an image's chunks.`,
		Example: `  mkbootfs gc --store /srv/chunks app-2.idx 127.0.0.1:5000/app:3-bootfs
  mkbootfs gc --store /srv/chunks --dry-run --json app-2.idx`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if opt.KeepNewer < 0 {
				return fmt.Errorf("--keep-newer %v: want a duration of 0 or more, e.g. 1h", opt.KeepNewer)
			}
			if dir == "" {
				dir = defaultStore()
			}
			opened, err := location.Open(ctx, dir, location.Options{})
			if err != nil {
				return err
			}
			defer opened.Close()
			s, ok := opened.(*local.Store)
			if !ok {
				return fmt.Errorf("--store %s: gc collects a directory store: run it on the host that has the directory; a registry (oci://) collects its own: delete the boot images no longer used and run its garbage collector (see the README)", dir)
			}
			// Every index is read before anything is removed.
			roots := make([]local.Root, 0, len(args))
			for _, ref := range args {
				b, err := bootimage.Read(ctx, ref)
				if err != nil {
					return fmt.Errorf("%w; nothing was removed", err)
				}
				r := local.Root{Name: ref, Chunks: make([]store.ID, len(b.Index.Chunks))}
				for i, c := range b.Index.Chunks {
					r.Chunks[i] = store.ID(c.ID)
				}
				roots = append(roots, r)
			}
			start := time.Now()
			st, err := s.GC(ctx, roots, opt)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			printGC(cmd, s.Dir(), len(roots), st, opt, time.Since(start))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "store", "", "the store `DIR`ectory (or file:///DIR; default: $MKBOOTFS_STORE_DIR or /var/lib/mkbootfs/store)")
	f.DurationVar(&opt.KeepNewer, "keep-newer", time.Hour, "keep every chunk written or reused within this long, so that conversions running now finish")
	f.BoolVar(&opt.DryRun, "dry-run", false, "count what would be removed, remove nothing")
	f.BoolVar(&asJSON, "json", false, "print JSON for scripts")
	return cmd
}

func printGC(cmd *cobra.Command, dir string, images int, st local.GCStats, opt local.GCOptions, took time.Duration) {
	out := cmd.OutOrStdout()
	verb := "removed"
	if opt.DryRun {
		verb = "would remove"
	}
	fmt.Fprintf(out, "%s: %d chunks, %s; %d images keep %d chunks (%s), %d newer than %v kept (%s); %s %d chunks (%s); %.2fs\n",
		dir, st.Chunks, mb(st.Bytes), images, st.Referenced, mb(st.ReferencedBytes), st.Recent, opt.KeepNewer, mb(st.RecentBytes),
		verb, st.Removed, mb(st.RemovedBytes), took.Seconds())
	if st.Temps > 0 {
		fmt.Fprintf(out, "%s %d temporary files older than %v (writers that died)\n", verb, st.Temps, opt.KeepNewer)
	}
	if st.Missing > 0 {
		fmt.Fprintf(cmd.ErrOrStderr(), "warning: %d chunks the images use are not in %s: those images cannot be read whole; convert them again\n", st.Missing, dir)
	}
	if st.Foreign > 0 {
		fmt.Fprintf(cmd.ErrOrStderr(), "note: %d files in %s are not chunks (XXXX/ID.cacnk); left alone\n", st.Foreign, dir)
	}
}
