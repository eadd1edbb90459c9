package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mkbootfs/mkbootfs/nodecache"
)

func newCacheCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cache",
		Short: "Show and prune a node cache (a cache volume's chunks, boot trees and learned profiles)",
		Long: `A node cache is the directory bootinit keeps at /.bootfs/cache (a named volume
shared by a node's containers), or mount's --cache. DIR is that directory, or
the name of a docker volume (docker volume inspect gives its directory).`,
	}
	cmd.AddCommand(newCacheDuCmd(), newCachePruneCmd())
	return cmd
}

func newCacheDuCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "du [--json] DIR|VOLUME",
		Short: "Show what a node cache holds: chunks, boot trees (by image) and learned profiles",
		Example: `  mkbootfs cache du mkbootfs-cache
  mkbootfs cache du --json /var/lib/docker/volumes/mkbootfs-cache/_data`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := cacheDir(args[0])
			if err != nil {
				return err
			}
			u, err := nodecache.Du(cmd.Context(), dir)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), u)
			}
			printUsage(cmd.OutOrStdout(), u)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newCachePruneCmd() *cobra.Command {
	var (
		maxSize string
		opt     nodecache.PruneOptions
		asJSON  bool
	)
	cmd := &cobra.Command{
		Use:   "prune --max-size SIZE [--max-age DURATION] [--json] DIR|VOLUME",
		Short: "Remove the least recently used chunks and boot trees of a node cache down to a size",
		Long: `Prune removes chunks and boot trees, least recently used first, until the cache
holds at most --max-size; with --max-age, also the trees and learned profiles
not used for that long. A tree that a running container uses is never
removed, and a container that needs a chunk prune removed fetches it again.
Files that are no part of the cache are left alone.`,
		Example: `  mkbootfs cache prune --max-size 2G mkbootfs-cache
  mkbootfs cache prune --max-size 0 --max-age 72h /var/lib/mkbootfs/cache`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if maxSize == "" {
				return errors.New("--max-size SIZE is required (e.g. 2G; 0 removes all that no container uses)")
			}
			if opt.MaxAge < 0 {
				return fmt.Errorf("--max-age %v: want a duration of 0 or more, e.g. 72h", opt.MaxAge)
			}
			dir, err := cacheDir(args[0])
			if err != nil {
				return err
			}
			if opt.MaxSize, err = nodecache.ParseSize(maxSize, dir); err != nil {
				return fmt.Errorf("--max-size: %w", err)
			}
			start := time.Now()
			p, err := nodecache.Prune(cmd.Context(), dir, opt)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), p)
			}
			printPruned(cmd.OutOrStdout(), p, time.Since(start))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&maxSize, "max-size", "", "what the cache may hold after: `SIZE` as 500M, 2G or 10% of its filesystem")
	f.DurationVar(&opt.MaxAge, "max-age", 0, "also remove trees and profiles unused for this `DURATION` (e.g. 72h)")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// cacheDir resolves a cache argument: a directory, or else the name of a
// docker volume.
func cacheDir(arg string) (string, error) {
	if _, err := os.Stat(arg); err == nil || !errors.Is(err, fs.ErrNotExist) || strings.Contains(arg, "/") {
		return arg, nil
	}
	out, err := exec.Command("docker", "volume", "inspect", "-f", "{{.Mountpoint}}", arg).Output()
	if err != nil {
		return "", fmt.Errorf("cache %s: no such directory, nor a docker volume of that name", arg)
	}
	return strings.TrimSpace(string(out)), nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func printUsage(w io.Writer, u *nodecache.Usage) {
	fmt.Fprintf(w, "%s\n", u.Dir)
	row := func(what string, c nodecache.Count, note string) {
		fmt.Fprintf(w, "%-14s %8d %7s  %s\n", what, c.Files, nodecache.FormatSize(c.Bytes), note)
	}
	fmt.Fprintf(w, "%-14s %8s %7s\n", "", "files", "bytes")
	row("chunks", u.Chunks, "")
	var trees, profiles nodecache.Count
	for _, t := range u.Trees {
		trees.Files++
		trees.Bytes += t.Bytes
	}
	for _, p := range u.Profiles {
		profiles.Files++
		profiles.Bytes += p.Bytes
	}
	row("trees", trees, "")
	row("profiles", profiles, "")
	if u.Temp.Files > 0 {
		row("being written", u.Temp, "(or left by a process that died)")
	}
	if u.Foreign.Files > 0 {
		row("foreign", u.Foreign, "(no part of the cache: left alone)")
	}
	fmt.Fprintf(w, "%-14s %8s %7s\n", "total", "", nodecache.FormatSize(u.Total))
	if len(u.Trees) > 0 {
		fmt.Fprintln(w, "\ntrees, most recently used first:")
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		for _, t := range u.Trees {
			use := "last used " + ago(t.LastUse)
			if t.InUse {
				use = "in use"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", t.Name, nodecache.FormatSize(t.Bytes), use, t.Source)
		}
		tw.Flush()
	}
	if len(u.Profiles) > 0 {
		fmt.Fprintln(w, "\nlearned profiles:")
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		for _, p := range u.Profiles {
			fmt.Fprintf(tw, "  %s\t%s\tlast used %s\t%s\n", p.Name, nodecache.FormatSize(p.Bytes), ago(p.LastUse), p.Source)
		}
		tw.Flush()
	}
}

func printPruned(w io.Writer, p *nodecache.Pruned, took time.Duration) {
	fmt.Fprintf(w, "%s: %s -> %s in %v: removed %d chunks (%s), %d trees (%s), %d profiles\n",
		p.Dir, nodecache.FormatSize(p.Before), nodecache.FormatSize(p.After), took.Round(time.Millisecond),
		p.Chunks.Files, nodecache.FormatSize(p.Chunks.Bytes), len(p.Trees), nodecache.FormatSize(p.TreeBytes), len(p.Profiles))
	if len(p.InUse) > 0 {
		fmt.Fprintf(w, "kept %d trees in use by running containers: %s\n", len(p.InUse), strings.Join(p.InUse, ", "))
	}
	if p.Foreign.Files > 0 {
		fmt.Fprintf(w, "left %d files that are no part of the cache (%s)\n", p.Foreign.Files, nodecache.FormatSize(p.Foreign.Bytes))
	}
}

func ago(t time.Time) string {
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return "just now"
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}
