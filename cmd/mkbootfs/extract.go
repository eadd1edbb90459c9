package main

import (
	"strings"

	"github.com/spf13/cobra"

	"github.com/mkbootfs/mkbootfs/converter"
	"github.com/mkbootfs/mkbootfs/index"
)

func newExtractCmd() *cobra.Command {
	var stores []string
	cmd := &cobra.Command{
		Use:   "extract [--store URL]... INDEX DIR",
		Short: "Materialize the whole tree of an index into a directory",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			x, err := index.ReadFile(args[0])
			if err != nil {
				return err
			}
			if len(stores) == 0 && x.Meta[converter.MetaStores] != "" {
				stores = strings.Split(x.Meta[converter.MetaStores], ",")
			}
			s, err := openStore(cmd.Context(), stores, false)
			if err != nil {
				return err
			}
			defer s.Close()
			return converter.Extract(cmd.Context(), x, s, args[1])
		},
	}
	cmd.Flags().StringArrayVar(&stores, "store", nil, "chunk store URL or directory (repeatable; default: the stores recorded in the index)")
	return cmd
}
