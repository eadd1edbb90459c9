package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/mkbootfs/mkbootfs/attach"
	"github.com/mkbootfs/mkbootfs/lazyfs"
	"github.com/mkbootfs/mkbootfs/store/location"
)

func newAttachCmd() *cobra.Command {
	var (
		o     attach.Options
		stats bool
	)
	cmd := &cobra.Command{
		Use:   "attach [flags] CONTAINER [--] [COMMAND [ARG...]]",
		Short: "Run a shell or command in a running container, with a tools image brought in lazily",
		Long: `Attach runs COMMAND (default: bash, else sh) in the running container CONTAINER
(a docker name or ID; podman:NAME or containerd:NAMESPACE/ID; or pid:N), in its
pid, net, ipc, uts and cgroup namespaces and its cgroups, as root with the
container's capabilities plus CAP_SYS_PTRACE (strace and gdb work on its
processes), its environment, and PATH from the tools image.

The root the command sees is the tools image (--tools, default $MKBOOTFS_TOOLS):
a boot image made by 'mkbootfs convert', from the docker daemon or a registry,
or an index file. It is mounted lazily: only the bytes the session reads are
fetched, through the node's chunk cache (--cache). Writes go to a throwaway
layer. Without a tools image, the command sees the host's root, read-only.
The container's own root is at ` + attach.ContainerDir + `; its /proc, /dev, /sys,
/etc/resolv.conf, /etc/hosts, /etc/hostname, /etc/passwd and /etc/group are
bound over the tools image's.

With stdin and stdout terminals, the command gets a terminal of its own;
otherwise it reads and writes ours as they are (byte for byte) and the exit
status is the command's. When the command exits, everything it left running
is killed; nothing of the session stays in the container, and nothing stays
on the host if attach itself is killed.`,
		Example: `  mkbootfs convert 127.0.0.1:5000/tools:1 127.0.0.1:5000/tools:1-bootfs
  mkbootfs attach --tools 127.0.0.1:5000/tools:1-bootfs web
  MKBOOTFS_TOOLS=127.0.0.1:5000/tools:1-bootfs mkbootfs attach web -- gdb -p 1 -batch -ex bt
  mkbootfs attach pid:4242 -- ps -ef`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if os.Getenv("GOMEMLIMIT") == "" {
				debug.SetMemoryLimit(lazyfs.MemoryLimit)
			}
			o.Target, o.Command = args[0], args[1:]
			if len(o.Command) > 0 && o.Command[0] == "--" {
				o.Command = o.Command[1:]
			}
			if !cmd.Flags().Changed("tools") {
				o.Tools = os.Getenv("MKBOOTFS_TOOLS")
			}
			res, err := attach.Run(cmd.Context(), o)
			if stats && res != nil && res.Stats != nil {
				printAttachStats(cmd.ErrOrStderr(), res)
			}
			var ee *attach.ExitError
			if errors.As(err, &ee) {
				fmt.Fprintln(cmd.ErrOrStderr(), "mkbootfs:", err)
				os.Exit(ee.Code)
			}
			if err != nil {
				return err
			}
			if res.ExitCode != 0 {
				os.Exit(res.ExitCode) // the command's status is ours
			}
			return nil
		},
	}
	f := cmd.Flags()
	// Everything after CONTAINER is the command's, flags included.
	f.SetInterspersed(false)
	f.StringVar(&o.Tools, "tools", "", "tools `IMAGE` (a boot image) or index file (default $MKBOOTFS_TOOLS; none: the host's root)")
	f.StringArrayVar(&o.Stores, "store", nil, "chunk store of the tools image: "+location.Schemes+" (repeatable; default: the stores it records)")
	f.StringVar(&o.CacheDir, "cache", attach.DefaultCacheDir, "keep fetched chunks in the cache `DIR`, shared with other mounts (\"\": none)")
	f.BoolVar(&o.NoTTY, "no-tty", false, "run on our stdin and stdout even when they are terminals")
	f.BoolVar(&stats, "stats", false, "print what the session fetched from the tools image when it ends")
	return cmd
}

func printAttachStats(w io.Writer, res *attach.Result) {
	s := res.Stats
	fmt.Fprintf(w, "mkbootfs: tools image %s: read %.1f MB of its %.1f MB of file data (%.1f%%) in %d chunks",
		res.Tools.Source, float64(s.BytesLoaded)/1e6, float64(res.ImageBytes)/1e6,
		100*float64(s.BytesLoaded)/float64(max(res.ImageBytes, 1)), s.ChunksLoaded)
	if c := s.Cache; c != nil {
		fmt.Fprintf(w, "; fetched %.1f MB (compressed), cache hits %d, misses %d", float64(c.FetchedBytes)/1e6, c.Hits, c.Misses)
	}
	fmt.Fprintln(w)
}
