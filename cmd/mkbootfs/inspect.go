package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/bootimage"
	"github.com/mkbootfs/mkbootfs/converter"
	"github.com/mkbootfs/mkbootfs/index"
	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/local"
)

// summary is what inspect reports about an index.
type summary struct {
	Entries      map[string]int    `json:"entries"` // by type
	Inodes       int               `json:"inodes"`
	LogicalBytes int64             `json:"logical_bytes"` // sum of regular file sizes
	DataBytes    int64             `json:"data_bytes"`    // the data stream, holes left out
	Chunks       int               `json:"chunks"`
	UniqueChunks int               `json:"unique_chunks"`
	StoreBytes   int64             `json:"store_bytes,omitempty"` // compressed bytes of the unique chunks, when the store is a local directory
	NewChunks    int               `json:"new_chunks_at_convert"`
	NewBytes     int64             `json:"new_bytes_at_convert"`
	Stores       []string          `json:"stores"`
	Meta         map[string]string `json:"meta"`
}

func newInspectCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "inspect [--json] INDEX-OR-IMAGE",
		Short: "Summarize an index or boot image: entries, bytes, chunks, dedup, stores",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := bootimage.Read(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			s := summarize(b.Index, b.Stores)
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(s)
			}
			printSummary(cmd.OutOrStdout(), s)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON for scripts")
	return cmd
}

var typeNames = map[uint32]string{
	unix.S_IFREG: "files", unix.S_IFDIR: "directories", unix.S_IFLNK: "symlinks",
	unix.S_IFCHR: "char devices", unix.S_IFBLK: "block devices", unix.S_IFIFO: "fifos", unix.S_IFSOCK: "sockets",
}

func summarize(x *index.Index, stores []string) summary {
	s := summary{Entries: map[string]int{}, Inodes: len(x.Inodes), Chunks: len(x.Chunks), DataBytes: x.StreamSize(), Meta: x.Meta}
	for _, e := range x.Entries {
		n := &x.Inodes[e.Inode]
		s.Entries[typeNames[n.Type()]]++
	}
	for i := range x.Inodes {
		if n := &x.Inodes[i]; n.IsRegular() {
			s.LogicalBytes += n.Size
		}
	}
	s.NewChunks, _ = strconv.Atoi(x.Meta[converter.MetaNewChunks])
	s.NewBytes, _ = strconv.ParseInt(x.Meta[converter.MetaNewBytes], 10, 64)
	s.Stores = stores
	unique := map[[32]byte]bool{}
	for _, c := range x.Chunks {
		unique[c.ID] = true
	}
	s.UniqueChunks = len(unique)
	if len(s.Stores) == 1 {
		if ls, err := local.Open(s.Stores[0], false); err == nil {
			for id := range unique {
				if fi, err := os.Stat(ls.Path(store.ID(id))); err == nil {
					s.StoreBytes += fi.Size()
				}
			}
		}
	}
	return s
}

func printSummary(w io.Writer, s summary) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	types := make([]string, 0, len(s.Entries))
	for t := range s.Entries {
		types = append(types, t)
	}
	sort.Strings(types)
	var parts []string
	for _, t := range types {
		parts = append(parts, fmt.Sprintf("%d %s", s.Entries[t], t))
	}
	fmt.Fprintf(tw, "source:\t%s\n", s.Meta[converter.MetaSource])
	fmt.Fprintf(tw, "entries:\t%s\n", strings.Join(parts, ", "))
	fmt.Fprintf(tw, "file bytes:\t%s (%s without holes)\n", mb(s.LogicalBytes), mb(s.DataBytes))
	fmt.Fprintf(tw, "chunks:\t%d (%d distinct), %s\n", s.Chunks, s.UniqueChunks, s.Meta[converter.MetaChunker])
	if s.StoreBytes > 0 {
		fmt.Fprintf(tw, "in the store:\t%s compressed\n", mb(s.StoreBytes))
	}
	fmt.Fprintf(tw, "new at convert:\t%d chunks, %s (the rest were already in the store)\n", s.NewChunks, mb(s.NewBytes))
	fmt.Fprintf(tw, "stores:\t%s\n", strings.Join(s.Stores, ", "))
	tw.Flush()
}

func mb(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }
