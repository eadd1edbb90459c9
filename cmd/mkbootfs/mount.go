package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"time"

	"github.com/spf13/cobra"

	"github.com/mkbootfs/mkbootfs/bootimage"
	"github.com/mkbootfs/mkbootfs/internal/atomicfile"
	"github.com/mkbootfs/mkbootfs/lazyfs"
	"github.com/mkbootfs/mkbootfs/nodecache"
	"github.com/mkbootfs/mkbootfs/store/location"
)

func newMountCmd() *cobra.Command {
	var (
		stores     []string
		cacheDir   string
		cacheSize  string
		maxAgeFlag string
		stats      bool
		statsFile  string
		allowOther bool
		suid, dev  bool
		fuseDebug  bool
		opts       lazyfs.Options
	)
	cmd := &cobra.Command{
		Use:   "mount [flags] INDEX-OR-IMAGE MOUNTPOINT",
		Short: "Mount the tree of an index or boot image read-only, fetching chunks as they are read",
		Long: `Mount serves the tree of INDEX-OR-IMAGE (an index file, or a boot image
by convert's transport names) at MOUNTPOINT until interrupted (SIGINT or
SIGTERM), then unmounts it (if files are still open in it, it is detached at
once and served until they are closed). Names, attributes, listings, links and xattrs come
from the index in memory; a read fetches only the chunks it needs from the
stores, through the cache directory when --cache is given. The cache is a
chunk store directory that any number of mounts on the machine may share:
each chunk is fetched once among them.

The mount is nosuid,nodev, as mount(8) mounts a user's filesystem: the
image's setuid programs run with the caller's own privileges and its device
nodes cannot be opened, so that an untrusted image gives no local user root.
--suid and --dev (mount's suid and dev options) honour them, for a tree you
trust that is to be a root filesystem (chroot, systemd-nspawn).

A read whose chunk cannot be fetched fails with EIO and one line on stderr
naming the file, the chunk and the store; the rest of the tree keeps working.

If the server is killed (SIGKILL), MOUNTPOINT is left as a dead mount that
answers "transport endpoint is not connected". Mounting again at the same
place detaches it first; to clear it by hand, run
  umount -l MOUNTPOINT     (or: fusermount3 -uz MOUNTPOINT)`,
		Example: `  mkbootfs mount --cache /var/cache/mkbootfs debian.idx /mnt/debian
  mkbootfs mount --store /srv/chunks --stats-file /run/debian.stats debian.idx /mnt/debian`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if os.Getenv("GOMEMLIMIT") == "" {
				debug.SetMemoryLimit(lazyfs.MemoryLimit)
			}
			var maxAge time.Duration
			if maxAgeFlag != "" {
				var err error
				if maxAge, err = nodecache.ParseMaxAge(maxAgeFlag); err != nil {
					return fmt.Errorf("--cache-max-age: %w", err)
				}
			}
			ctx := cmd.Context()
			b, err := bootimage.Read(ctx, args[0])
			if err != nil {
				return err
			}
			x := b.Index
			if len(stores) == 0 {
				stores = b.Stores
			}
			if len(stores) == 0 {
				stores = []string{defaultStore()}
			}
			st, err := location.OpenList(ctx, stores, location.Options{Timeout: opts.FetchTimeout})
			if err != nil {
				return err
			}
			if cacheDir != "" {
				opt := nodecache.Options{MaxAge: maxAge, Log: func(s string) { fmt.Fprintln(cmd.ErrOrStderr(), "mkbootfs:", s) }}
				if cacheSize != "" {
					if opt.MaxSize, err = nodecache.ParseSize(cacheSize, cacheDir); err != nil {
						st.Close()
						return fmt.Errorf("--cache-size: %w", err)
					}
				}
				c, err := nodecache.Open(cacheDir, st, opt)
				if err != nil {
					st.Close()
					return err
				}
				st = c
			}
			defer st.Close()

			srv, err := lazyfs.Mount(args[1], lazyfs.New(x, st, opts), lazyfs.MountOptions{
				AllowOther: allowOther, SUID: suid, Dev: dev, FsName: args[0], Debug: fuseDebug,
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "mkbootfs: serving %s (%d entries) at %s from %s; interrupt to unmount\n",
				args[0], len(x.Entries), args[1], st)

			done := make(chan struct{})
			go func() { srv.Wait(); close(done) }()
			tick := time.NewTicker(2 * time.Second)
			defer tick.Stop()
		serve:
			for {
				if statsFile != "" {
					if err := writeStats(statsFile, srv.Stats()); err != nil {
						fmt.Fprintln(cmd.ErrOrStderr(), "mkbootfs:", err)
					}
				}
				select {
				case <-ctx.Done():
					if err := srv.Unmount(); err != nil {
						return fmt.Errorf("%w; clear the mount with `umount -l %s`", err, args[1])
					}
					<-done
					break serve
				case <-done: // unmounted from outside
					break serve
				case <-tick.C:
				}
			}
			if statsFile != "" {
				if err := writeStats(statsFile, srv.Stats()); err != nil {
					return err
				}
			}
			if stats {
				printStats(cmd.OutOrStdout(), srv.Stats())
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&stores, "store", nil, "chunk store: "+location.Schemes+" (repeatable, tried in order; default: the stores recorded at convert time)")
	f.StringVar(&cacheDir, "cache", "", "keep fetched chunks in the cache `DIR`, shared with other mounts")
	f.StringVar(&cacheSize, "cache-size", "", "bound the cache: `SIZE` as 30M, 2G or 10% of its filesystem (default a tenth of it, at least 1G, at most 20G); the least recently used go first")
	f.StringVar(&maxAgeFlag, "cache-max-age", "", "remove from the cache the boot trees and learned profiles unused for `DURATION` (72h, 90m; default 168h, a week)")
	f.BoolVar(&stats, "stats", false, "print what the mount fetched and served when it ends")
	f.StringVar(&statsFile, "stats-file", "", "keep the stats, as JSON, in `FILE` (rewritten every 2 seconds)")
	f.BoolVar(&allowOther, "allow-other", os.Geteuid() == 0, "let every user use the mount (default: when run as root)")
	f.BoolVar(&suid, "suid", false, "honour the image's setuid and setgid bits (default: nosuid); only for an image you trust")
	f.BoolVar(&dev, "dev", false, "let the image's device nodes be opened (default: nodev); only for an image you trust")
	f.BoolVar(&fuseDebug, "debug", false, "log every FUSE request")
	f.Int64Var(&opts.MemCache, "mem-cache", 0, "bytes of decoded chunks kept in memory (default 4 MiB)")
	f.IntVar(&opts.Readahead, "readahead", 0, "chunks fetched ahead of sequential reads (default 16; -1: none)")
	f.DurationVar(&opts.FetchTimeout, "fetch-timeout", 0, "give up on one chunk fetch after this long (default 30s)")
	return cmd
}

func writeStats(path string, s lazyfs.Stats) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(path, append(b, '\n'), 0o644)
}

func printStats(w io.Writer, s lazyfs.Stats) {
	fmt.Fprintf(w, "reads %d (%.1f MB), read errors %d\n", s.Reads, float64(s.ReadBytes)/1e6, s.ReadErrors)
	fmt.Fprintf(w, "chunks loaded %d (%.1f MB decoded), from memory %d, readahead %d, failed %d\n",
		s.ChunksLoaded, float64(s.BytesLoaded)/1e6, s.MemHits, s.Readaheads, s.ChunkFailures)
	if c := s.Cache; c != nil {
		fmt.Fprintf(w, "cache hits %d, misses %d (%.1f MB fetched), fetch errors %d, repaired %d, not kept %d\n",
			c.Hits, c.Misses, float64(c.FetchedBytes)/1e6, c.FetchErrors, c.Repaired, c.WriteErrors)
	}
}
