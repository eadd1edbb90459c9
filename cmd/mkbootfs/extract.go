package main

import (
	"github.com/spf13/cobra"

	"github.com/mkbootfs/mkbootfs/bootimage"
	"github.com/mkbootfs/mkbootfs/extract"
)

func newExtractCmd() *cobra.Command {
	var stores []string
	cmd := &cobra.Command{
		Use:   "extract [--store URL]... INDEX-OR-IMAGE DIR",
		Short: "Materialize the whole tree of an index or boot image into a directory",
		Args:  cobra.ExactArgs(2),
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
			return extract.Extract(cmd.Context(), b.Index, s, args[1])
		},
	}
	cmd.Flags().StringArrayVar(&stores, "store", nil, "chunk store URL or directory (repeatable; default: the stores recorded at convert time)")
	return cmd
}
