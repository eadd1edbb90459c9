package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/mkbootfs/mkbootfs/chunker"
	"github.com/mkbootfs/mkbootfs/converter"
	"github.com/mkbootfs/mkbootfs/internal/atomicfile"
)

func newConvertCmd() *cobra.Command {
	var (
		stores    []string
		indexPath string
		bootinit  string
		opts      converter.Options

		chunkSize      string
		profileRun     bool
		profileFrom    string
		profileTimeout time.Duration
		staticProfile  bool
	)
	cmd := &cobra.Command{
		Use:   "convert [flags] SOURCE [TARGET]",
		Short: "Convert an image into chunks, an index and a lazily pulled boot image",
		Long: `Convert flattens SOURCE, cuts its files into content-defined chunks in the
chunk store, and writes a boot image to TARGET of two small layers: bootinit's,
the same in every boot image, so a node pulls it once; and SOURCE's own, with
the index, the boot config that says where the chunks live, and a skeleton of
SOURCE's tree. Its config is SOURCE's, with bootinit in front of the
entrypoint. Run it as you would run SOURCE, with
  docker run --device /dev/fuse --cap-add SYS_ADMIN -v mkbootfs-cache:/.bootfs/cache TARGET
and, for a directory store on this host, -v STORE:/.bootfs/store:ro.

When TARGET is in a registry and no --store is given, the chunks go to that
registry, as blobs of TARGET's repository (oci://REGISTRY/REPO): TARGET is
pushed as an index of the boot image and the manifest that lists its chunks,
so nothing else needs serving and the registry's garbage collector keeps the
chunks of every tagged boot image. Credentials are docker's (docker login).
A container that reads a registry that wants them gets a docker config:
  -v ~/.docker/config.json:/.bootfs/auth.json:ro
(or -e REGISTRY_AUTH_FILE=FILE, -e DOCKER_CONFIG=DIR, e.g. for a secret).

SOURCE and TARGET use skopeo's transport names:
  IMAGE[:TAG]             SOURCE: the local docker daemon's image, else the registry's (--pull: the registry's)
                          TARGET: a registry
  docker://IMAGE[:TAG]    a registry
  docker-daemon:IMAGE     the local docker daemon
  docker-archive:PATH     a 'docker save' tarball
  oci:PATH[:TAG]          an OCI image layout
  dir:PATH                SOURCE only: a root directory on this machine
With no TARGET, the boot image goes to the docker daemon as IMAGE:TAG-bootfs;
with --index and no TARGET, only the index is written (a dir: SOURCE needs one
of them).`,
		Example: `  mkbootfs convert 127.0.0.1:5000/app:1 127.0.0.1:5000/app:1-bootfs
  mkbootfs convert ubuntu:latest                  # -> ubuntu:latest-bootfs in the docker daemon
  mkbootfs convert --index debian.idx dir:/srv/rootfs`,
		Args: func(cmd *cobra.Command, args []string) error {
			if dash := cmd.ArgsLenAtDash(); dash >= 0 {
				if !profileRun {
					return errors.New("a command after -- is for --profile: give --profile, or drop the --")
				}
				args = args[:dash]
			}
			return cobra.RangeArgs(1, 2)(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			var profileArgs []string
			if dash := cmd.ArgsLenAtDash(); dash >= 0 {
				args, profileArgs = args[:dash], args[dash:]
			}
			if chunkSize != "" {
				var err error
				if opts.Params, err = chunker.ParseParams(chunkSize); err != nil {
					return fmt.Errorf("--chunk-size: %w", err)
				}
			}
			if profileTimeout <= 0 {
				return fmt.Errorf("--profile-timeout %v: want a positive duration, e.g. 30s", profileTimeout)
			}
			if profileRun && profileFrom != "" {
				return errors.New("--profile records a profile and --profile-from reads one: give one of them")
			}
			if profileFrom != "" {
				var err error
				if opts.Profile, err = readProfile(profileFrom); err != nil {
					return err
				}
			}
			target := ""
			if len(args) == 2 {
				target = args[1]
			} else if indexPath == "" && !strings.HasPrefix(args[0], "dir:") {
				var err error
				if target, err = defaultTarget(args[0]); err != nil {
					return err
				}
			}
			if target == "" && indexPath == "" {
				return errors.New("nothing to write: give a TARGET image or --index FILE")
			}
			if profileRun && target == "" {
				return errors.New("--profile runs the boot image, so it needs a TARGET (or none, for IMAGE:TAG-bootfs in the docker daemon)")
			}
			var bootBinary []byte
			if target != "" {
				var err error
				if bootBinary, err = readBootinit(bootinit); err != nil {
					return err
				}
			}
			if len(stores) == 0 {
				// A registry target keeps its chunks next to it: no other server.
				if repo, ok := converter.RegistryRepository(target); ok {
					stores = []string{"oci://" + repo}
				}
			}
			if len(stores) > 1 && slices.ContainsFunc(stores, isOCI) {
				return errors.New("an oci:// --store takes no other --store: the chunk manifest that a boot image reads is in one repository")
			}
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
			// The conversion that a profile is recorded with is laid out
			// again by it: no static profile for it.
			opts.StaticProfile = staticProfile && !profileRun
			res, err := converter.Convert(ctx, opts)
			if err != nil {
				return err
			}
			if profileRun {
				if opts.Profile, err = recordProfile(cmd, res, bootBinary, s, opts.StoreURLs, profileArgs, profileTimeout); err != nil {
					return err
				}
				opts.StaticProfile = staticProfile
				if res, err = converter.Convert(ctx, opts); err != nil {
					return err
				}
			}
			if indexPath != "" {
				b, err := res.Index.MarshalBinary()
				if err != nil {
					return err
				}
				if err := atomicfile.Write(indexPath, b, 0o644); err != nil {
					return err
				}
			}
			st := res.Stats
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "%s: %d entries, %.1f MB in %d chunks (%d new, %.1f MB written), %.2fs\n",
				args[0], st.Entries, float64(st.DataBytes)/1e6, st.Chunks, st.NewChunks, float64(st.NewBytes)/1e6, time.Since(start).Seconds())
			if st.LostChunks > 0 {
				fmt.Fprintf(out, "repaired: %d chunks that the repository's chunk manifests listed were gone from the registry; uploaded again\n", st.LostChunks)
			}
			if opts.Profile != nil && st.ProfileChunks == 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: none of the profile's %d files is a file with data in %s: nothing laid out first, nothing to prefetch\n", len(opts.Profile.Files), args[0])
			}
			if res.StaticErr != nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s: finding the files its command maps to start (the static profile): %v\n", args[0], res.StaticErr)
			}
			if st.ProfileChunks > 0 {
				what := "read at start"
				switch {
				case res.Profile.Static:
					what = "found in the image without running it (its command's program, interpreters, loader and libraries, whole)"
				case st.StaticFiles > 0:
					what = fmt.Sprintf("read at start, %d of them whole, found in the image (its command's start)", st.StaticFiles)
				}
				fmt.Fprintf(out, "profile: %d files, %.1f MB %s, laid out first: %d chunks (%.1f MB) to prefetch at boot\n",
					len(res.Profile.Files), float64(res.Profile.Bytes())/1e6, what, st.ProfileChunks, float64(st.ProfileBytes)/1e6)
			}
			if target == "" {
				return nil
			}
			img, recorded, err := converter.WriteBootImage(ctx, res, bootBinary, s, opts.StoreURLs, target)
			if err != nil {
				return err
			}
			bootSize, ownSize, err := converter.LayerSizes(img)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "boot image %s: a layer of %.2f MB and bootinit's (%.2f MB, shared by every boot image), chunks from %s\n",
				target, float64(ownSize)/1e6, float64(bootSize)/1e6, strings.Join(recorded, ", "))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&stores, "store", nil, "chunk store URL or directory (repeatable; default: TARGET's repository for a registry TARGET, else $MKBOOTFS_STORE_DIR or /var/lib/mkbootfs/store)")
	f.StringVar(&indexPath, "index", "", "also write the bare index to `FILE`")
	f.StringVar(&bootinit, "bootinit", "", "the bootinit `binary` to put in the boot image (default: $MKBOOTFS_BOOTINIT, or bootinit next to mkbootfs)")
	f.StringVar(&opts.Platform, "platform", "", "pick `OS/ARCH[/VARIANT]` from a multi-platform image (default: this machine's)")
	f.BoolVar(&opts.Pull, "pull", false, "read a bare reference from its registry even if the docker daemon has it")
	f.StringVar(&chunkSize, "chunk-size", "", "chunk sizes as casync takes them: `AVG` or MIN:AVG:MAX, in bytes or with K or M (default 16K:64K:256K; smaller chunks fetch less for scattered reads, e.g. a tools image, and make more requests)")
	f.BoolVar(&profileRun, "profile", false, "run the converted image once (docker run --network host; a command after -- replaces its cmd), record what its start reads, and lay that out first for boots to prefetch")
	f.StringVar(&profileFrom, "profile-from", "", "lay out first what the profile `FILE` reads (recorded with docker run -e MKBOOTFS_PROFILE=PATH)")
	f.DurationVar(&profileTimeout, "profile-timeout", time.Minute, "with --profile: stop the run after this long (a server's start is what is profiled)")
	f.BoolVar(&staticProfile, "static-profile", true, "lay out first and prefetch the files that starting the image's command maps, found without running it: its program, #! interpreters, ELF loader and shared libraries (after a recorded profile's files; =false: none)")
	return cmd
}

func isOCI(u string) bool { return strings.HasPrefix(u, "oci://") }

// defaultTarget names the boot image of SOURCE in the docker daemon:
// IMAGE:TAG-bootfs, as docker users tag variants.
func defaultTarget(source string) (string, error) {
	ref := source
	if t, rest, ok := strings.Cut(source, ":"); ok && (t == "docker-daemon" || t == "docker") {
		ref = strings.TrimPrefix(rest, "//")
	} else if ok && (t == "docker-archive" || t == "oci") {
		return "", fmt.Errorf("give a TARGET for %s sources (or --index FILE)", t)
	}
	tag, err := name.NewTag(ref)
	if err != nil {
		return "", fmt.Errorf("source %q has no tag to derive a target from: give a TARGET", source)
	}
	// Named as the source was, not as tag.Context().Name() spells it
	// (index.docker.io/library/ubuntu), so the output names what docker lists.
	if !strings.HasSuffix(ref, ":"+tag.TagStr()) {
		ref += ":" + tag.TagStr()
	}
	return "docker-daemon:" + ref + "-bootfs", nil
}

// readBootinit finds the bootinit binary: the flag, $MKBOOTFS_BOOTINIT,
// next to this executable, or where packages install it.
func readBootinit(flag string) ([]byte, error) {
	candidates := []string{flag, os.Getenv("MKBOOTFS_BOOTINIT")}
	if exe, err := os.Executable(); err == nil {
		candidates = append(candidates, filepath.Join(filepath.Dir(exe), "bootinit"))
	}
	candidates = append(candidates, "/usr/local/lib/mkbootfs/bootinit", "/usr/lib/mkbootfs/bootinit")
	for _, c := range candidates {
		if c == "" {
			continue
		}
		b, err := os.ReadFile(c)
		if err == nil {
			return b, nil
		}
		if c == flag {
			return nil, fmt.Errorf("--bootinit: %w", err)
		}
	}
	return nil, errors.New("no bootinit binary found next to mkbootfs: build it (`make build` puts bin/bootinit beside bin/mkbootfs) or pass --bootinit PATH")
}
