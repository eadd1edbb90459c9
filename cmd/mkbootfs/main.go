// Command mkbootfs converts container images into lazily pulled boot
// images, and mounts, serves and attaches them.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// version is stamped by the Makefile (-ldflags -X main.version=...).
var version = "dev"

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "mkbootfs",
		Short:         "Make container images start fast: lazy, deduplicated, block-level pulling",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	// One constructor per command, one file per command.
	for _, newCmd := range []func() *cobra.Command{
		newVersionCmd,
		newConvertCmd,
		newExtractCmd,
		newInspectCmd,
		newServeCmd,
		newMountCmd,
		newAttachCmd,
		newCacheCmd,
		newSnapshotterCmd,
		newGCCmd,
	} {
		root.AddCommand(newCmd())
	}
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the mkbootfs version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), "mkbootfs", version)
		},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkbootfs:", err)
		os.Exit(1)
	}
}
