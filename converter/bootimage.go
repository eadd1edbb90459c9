package converter

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/daemon"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/mkbootfs/mkbootfs/bootimage"
	"github.com/mkbootfs/mkbootfs/bootinit/bootconfig"
	"github.com/mkbootfs/mkbootfs/index"
	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/ocistore"
)

// Labels the boot image carries (see package bootimage, which reads them).
const (
	LabelSource   = bootimage.LabelSource
	LabelStores   = bootimage.LabelStores
	LabelPrefetch = bootimage.LabelPrefetch
)

// BootImage builds the boot image of a conversion: a layer with bootinit,
// a small layer with the index, the boot config and the image's skeleton,
// and the source image's config with bootinit in front of its entrypoint.
// s is read for the few files
// the container runtime itself reads before bootinit runs (/etc/passwd and
// /etc/group, which resolve `docker run -u NAME`).
func BootImage(ctx context.Context, res *Result, bootinit []byte, s store.Store, stores []string) (v1.Image, error) {
	idx, err := res.Index.MarshalBinary()
	if err != nil {
		return nil, err
	}
	source := res.Index.Meta[MetaSource]
	boot := bootconfig.Config{Source: source, Stores: stores}
	var prof bytes.Buffer
	if res.Profile != nil {
		res.Profile.WriteTo(&prof)
		// A static profile names the program's files alone: a tree of
		// them would be made and waited for with little to hold.
		if !res.Profile.Static {
			h := sha256.New()
			h.Write(idx)
			h.Write(prof.Bytes())
			boot.Tree = hex.EncodeToString(h.Sum(nil))
		}
	}
	cfgJSON, err := json.MarshalIndent(boot, "", "  ")
	if err != nil {
		return nil, err
	}
	epoch := bootconfig.LayerTime
	// bootinit has a layer of its own (see bootinitLayer).
	bootLayer, err := bootinitLayer(bootinit)
	if err != nil {
		return nil, err
	}
	var etcFiles [][2]string
	for _, f := range []string{"/etc/passwd", "/etc/group"} {
		data, err := readFile(ctx, res.Index, s, f)
		if err != nil {
			return nil, err
		}
		if data != nil {
			etcFiles = append(etcFiles, [2]string{f, string(data)})
		}
	}
	_, etcErr := res.Index.Resolve("/etc")
	imageLayer, err := tarLayer(func(tw *tar.Writer) error {
		// The image's skeleton comes first, so that `docker run
		// --entrypoint PROGRAM` finds PROGRAM in the boot image: see shims.
		if err := shims(tw, res.Index, epoch); err != nil {
			return err
		}
		for _, d := range []string{bootconfig.Dir, bootconfig.CacheDir, bootconfig.StoreDir, bootconfig.LowerDir, bootconfig.UpperDir, bootconfig.RootDir} {
			if err := tarDir(tw, d, 0o755, epoch); err != nil {
				return err
			}
		}
		if err := tarFile(tw, bootconfig.Index, 0o644, idx, epoch); err != nil {
			return err
		}
		if err := tarFile(tw, bootconfig.ConfigFile, 0o644, cfgJSON, epoch); err != nil {
			return err
		}
		if res.Profile != nil {
			if err := tarFile(tw, bootconfig.Profile, 0o644, prof.Bytes(), epoch); err != nil {
				return err
			}
		}
		if etcErr != nil {
			if err := tarDir(tw, "/etc", 0o755, epoch); err != nil {
				return err
			}
		}
		for _, f := range etcFiles {
			if err := tarFile(tw, f[0], 0o644, []byte(f[1]), epoch); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, bootLayer, imageLayer)
	if err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	if res.Image != nil {
		orig := res.Image.Config
		cfg.Architecture, cfg.OS, cfg.Variant, cfg.OSVersion = orig.Architecture, orig.OS, orig.Variant, orig.OSVersion
		cfg.Config = *orig.Config.DeepCopy()
	} else {
		cfg.Architecture, cfg.OS = "amd64", "linux"
	}
	cfg.Config.Entrypoint = append([]string{bootconfig.Bootinit, "--"}, cfg.Config.Entrypoint...)
	if cfg.Config.Labels == nil {
		cfg.Config.Labels = map[string]string{}
	}
	cfg.Config.Labels[LabelSource] = source
	cfg.Config.Labels[LabelStores] = strings.Join(stores, ",")
	if res.leading > 0 {
		cfg.Config.Labels[LabelPrefetch] = strconv.Itoa(res.leading)
	}
	cfg.Created = v1.Time{Time: epoch}
	cfg.History = []v1.History{
		{Created: v1.Time{Time: epoch}, CreatedBy: "mkbootfs: bootinit"},
		{Created: v1.Time{Time: epoch}, CreatedBy: "mkbootfs convert " + source},
	}
	return mutate.ConfigFile(img, cfg)
}

// tarLayer makes a layer of the entries fill writes, compressed once:
// go-containerregistry's tarball layer compresses again for every digest,
// push and write (gzip -9 of bootinit: seconds each).
func tarLayer(fill func(*tar.Writer) error) (v1.Layer, error) {
	var tarBuf, gzBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	if err := fill(tw); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	gw, err := gzip.NewWriterLevel(&gzBuf, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	if _, err := gw.Write(tarBuf.Bytes()); err != nil {
		return nil, err
	}
	if err := gw.Close(); err != nil {
		return nil, err
	}
	l := &memLayer{tar: tarBuf.Bytes(), gz: gzBuf.Bytes()}
	if l.digest, _, err = v1.SHA256(bytes.NewReader(l.gz)); err != nil {
		return nil, err
	}
	if l.diffID, _, err = v1.SHA256(bytes.NewReader(l.tar)); err != nil {
		return nil, err
	}
	return l, nil
}

// memLayer is a docker layer held in memory, compressed and not.
type memLayer struct {
	tar, gz        []byte
	digest, diffID v1.Hash
}

func (l *memLayer) Digest() (v1.Hash, error) { return l.digest, nil }
func (l *memLayer) DiffID() (v1.Hash, error) { return l.diffID, nil }
func (l *memLayer) Size() (int64, error)     { return int64(len(l.gz)), nil }
func (l *memLayer) MediaType() (types.MediaType, error) {
	return types.DockerLayer, nil
}
func (l *memLayer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.gz)), nil
}
func (l *memLayer) Uncompressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.tar)), nil
}

// lastBootinit keeps the layer of the bootinit last put in a boot image:
// a process that makes several (convert --profile, tests) compresses it once.
var lastBootinit struct {
	sync.Mutex
	sum   [sha256.Size]byte
	layer v1.Layer
}

// bootinitLayer returns the layer of bootinit: the same in every boot
// image, so a node pulls it once, whatever it runs.
func bootinitLayer(bootinit []byte) (v1.Layer, error) {
	sum := sha256.Sum256(bootinit)
	lastBootinit.Lock()
	defer lastBootinit.Unlock()
	if lastBootinit.layer != nil && lastBootinit.sum == sum {
		return lastBootinit.layer, nil
	}
	epoch := bootconfig.LayerTime
	l, err := tarLayer(func(tw *tar.Writer) error {
		if err := tarDir(tw, bootconfig.Dir, 0o755, epoch); err != nil {
			return err
		}
		// setuid and setgid root: under `docker run -u USER` bootinit
		// still mounts, and what it makes (mount points, directories
		// overlayfs copies up) is root's, as runc's is; it then runs the
		// app as the user and group docker resolved.
		return tarFile(tw, bootconfig.Bootinit, 0o6755, bootinit, epoch)
	})
	if err != nil {
		return nil, err
	}
	lastBootinit.sum, lastBootinit.layer = sum, l
	return l, nil
}

func tarDir(tw *tar.Writer, p string, mode int64, mtime time.Time) error {
	return tw.WriteHeader(&tar.Header{Name: strings.TrimPrefix(p, "/") + "/", Typeflag: tar.TypeDir, Mode: mode, ModTime: mtime, Format: tar.FormatPAX})
}

func tarFile(tw *tar.Writer, p string, mode int64, data []byte, mtime time.Time) error {
	if err := tw.WriteHeader(&tar.Header{Name: strings.TrimPrefix(p, "/"), Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(data)), ModTime: mtime, Format: tar.FormatPAX}); err != nil {
		return err
	}
	_, err := tw.Write(data)
	return err
}

// shims writes the image's directories and symlinks into the boot layer,
// and every executable file as a symlink to bootinit. docker resolves an
// --entrypoint (and the PATH search for it) in the boot layer before
// bootinit runs; this way it lands on bootinit, started under the
// program's name, which boots the image and then runs the real program.
func shims(tw *tar.Writer, x *index.Index, mtime time.Time) error {
	for e := 1; e < len(x.Entries); e++ {
		p := strings.TrimPrefix(x.Path(uint32(e)), "/")
		own := strings.TrimPrefix(bootconfig.Dir, "/")
		if p == own || strings.HasPrefix(p, own+"/") || p == "etc/passwd" || p == "etc/group" {
			continue // the boot layer's own files; docker refuses a path twice
		}
		if strings.HasPrefix(p, whiteoutPrefix) || strings.Contains(p, "/"+whiteoutPrefix) {
			continue // a dir: source's (layers may hold none): docker would read it as a whiteout
		}
		n := &x.Inodes[x.Entries[e].Inode]
		hdr := &tar.Header{Name: p, ModTime: mtime, Format: tar.FormatPAX}
		switch {
		case n.IsDir():
			hdr.Typeflag, hdr.Name, hdr.Mode = tar.TypeDir, p+"/", int64(n.Mode&0o7777)
		case n.Type() == syscall.S_IFLNK:
			hdr.Typeflag, hdr.Linkname, hdr.Mode = tar.TypeSymlink, n.Target, 0o777
		case n.IsRegular() && n.Mode&0o111 != 0:
			hdr.Typeflag, hdr.Linkname, hdr.Mode = tar.TypeSymlink, bootconfig.Bootinit, 0o777
		default:
			continue
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
	}
	return nil
}

// readFile returns the content of the regular file at p in x, nil when x
// has none there.
func readFile(ctx context.Context, x *index.Index, s store.Store, p string) ([]byte, error) {
	e, err := x.Resolve(p)
	if err != nil {
		return nil, nil
	}
	ino := x.Entries[e].Inode
	n := &x.Inodes[ino]
	if !n.IsRegular() || n.Size > 1<<20 {
		return nil, nil
	}
	data := make([]byte, n.Size)
	_, err = x.ReadAt(ino, data, 0, func(i int) ([]byte, error) {
		return store.Load(ctx, s, store.ID(x.Chunks[i].ID))
	})
	if err != nil {
		return nil, fmt.Errorf("reading %s for the boot layer: %w", p, err)
	}
	return data, nil
}

// WriteBootImage builds the boot image of res (BootImage) and writes it
// to target (WriteImage); it returns the image and the stores its boot
// config records.
//
// When s is a registry chunk store (oci://), the image's chunks are
// listed in a chunk table and chunk manifests of that repository (Convert
// pushed them, when it wrote to s), and the
// store pinned to the table replaces s in stores: bootinit then reads the
// chunk map with one request. A registry target in the same repository becomes an OCI index
// of the boot image, for its platform, and the chunk manifests, for
// platform unknown/unknown (as buildx attaches attestations; docker pull
// takes the boot image): the registry's garbage collector keeps whatever
// a tag reaches, so it keeps every chunk the boot image needs. A boot
// image written anywhere else leaves the chunk manifests tagged
// mkbootfs-chunks-HEX in the store's repository, for the same reason.
func WriteBootImage(ctx context.Context, res *Result, bootinit []byte, s store.Store, stores []string, target string) (v1.Image, []string, error) {
	oci, _ := s.(*ocistore.Store)
	var cm *ocistore.ChunkManifests
	copied := *res // its leading is this store's
	res = &copied
	if oci == nil {
		res.leading = 0 // no chunk table
	} else {
		cm = res.manifests
		if cm == nil || res.manifestStore != oci {
			order, leading := tableOrder(res.Index, res.Profile)
			var err error
			if cm, err = oci.PushChunkManifest(ctx, order); err != nil {
				return nil, nil, err
			}
			res.leading = leading
		}
		pinned := oci.Pinned(cm.Table.Digest)
		stores = slices.Clone(stores)
		for i, u := range stores {
			if u == oci.String() {
				stores[i] = pinned
			}
		}
		if !slices.Contains(stores, pinned) {
			stores = append([]string{pinned}, stores...)
		}
	}
	img, err := BootImage(ctx, res, bootinit, s, stores)
	if err != nil {
		return nil, nil, err
	}
	if oci == nil {
		return img, stores, WriteImage(ctx, img, target)
	}
	if ref, err := registryRef(target); err == nil && ref.Context().Name() == oci.Repository().Name() {
		return img, stores, pushWithChunks(ctx, img, ref, cm.Parts)
	}
	tag := "mkbootfs-chunks-" + cm.Table.Digest.Hex[:16]
	if err := oci.TagChunkManifests(ctx, tag, cm); err != nil {
		return nil, nil, err
	}
	return img, stores, WriteImage(ctx, img, target)
}

// pushWithChunks pushes img by digest, then tags ref with an index of img
// and the chunk manifests parts.
func pushWithChunks(ctx context.Context, img v1.Image, ref name.Reference, parts []v1.Descriptor) error {
	opts := []remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)}
	desc, err := partial.Descriptor(img)
	if err != nil {
		return err
	}
	if err := remote.Write(ref.Context().Digest(desc.Digest.String()), img, opts...); err != nil {
		return fmt.Errorf("pushing the boot image to %s: %w", ref.Context(), err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return err
	}
	idx := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex}
	idx.Manifests = append(idx.Manifests, v1.Descriptor{MediaType: desc.MediaType, Size: desc.Size, Digest: desc.Digest, Platform: cfg.Platform()})
	for _, p := range parts {
		p.Platform = &v1.Platform{OS: "unknown", Architecture: "unknown"}
		idx.Manifests = append(idx.Manifests, p)
	}
	body, err := json.Marshal(idx)
	if err != nil {
		return err
	}
	if err := remote.Put(ref, rawIndex(body), opts...); err != nil {
		return fmt.Errorf("pushing the index of the boot image and its chunk manifests to %s: %w", ref, err)
	}
	return nil
}

// rawIndex is an OCI index as pushed.
type rawIndex []byte

func (r rawIndex) RawManifest() ([]byte, error)        { return r, nil }
func (r rawIndex) MediaType() (types.MediaType, error) { return types.OCIImageIndex, nil }

// RegistryRepository returns the repository of target when target names
// an image in a registry (a bare reference or docker://REF).
func RegistryRepository(target string) (string, bool) {
	ref, err := registryRef(target)
	if err != nil {
		return "", false
	}
	return ref.Context().Name(), true
}

// registryRef parses target when it names an image in a registry.
func registryRef(target string) (name.Reference, error) {
	transport, rest, _ := strings.Cut(target, ":")
	switch transport {
	case "docker-daemon", "docker-archive", "oci", "dir":
		return nil, fmt.Errorf("target %q is not in a registry", target)
	case "docker":
		target = strings.TrimPrefix(rest, "//")
	}
	return name.ParseReference(target)
}

// WriteImage writes img to target, in skopeo's transport syntax: a bare
// reference or docker://REF (a registry), docker-daemon:REF,
// docker-archive:PATH[:REF], oci:PATH[:TAG].
func WriteImage(ctx context.Context, img v1.Image, target string) error {
	transport, rest, _ := strings.Cut(target, ":")
	switch transport {
	case "docker-daemon":
		tag, err := name.NewTag(rest)
		if err != nil {
			return fmt.Errorf("target %q: %w", target, err)
		}
		resp, err := daemon.Write(tag, img, daemon.WithContext(ctx))
		if err == nil && strings.Contains(resp, `"errorDetail"`) {
			// The daemon reports a failed load in the response, not the status.
			err = errors.New(strings.TrimSpace(resp))
		}
		if err != nil {
			return fmt.Errorf("loading the boot image into the docker daemon: %w", err)
		}
		return nil
	case "docker-archive":
		path, ref, _ := strings.Cut(rest, ":")
		var tag name.Tag
		if ref != "" {
			var err error
			if tag, err = name.NewTag(ref); err != nil {
				return fmt.Errorf("target %q: %w", target, err)
			}
		} else {
			tag, _ = name.NewTag("mkbootfs/boot:latest")
		}
		return tarball.WriteToFile(path, tag, img)
	case "oci":
		path, tag, _ := strings.Cut(rest, ":")
		p, err := layout.FromPath(path)
		if err != nil {
			if p, err = layout.Write(path, empty.Index); err != nil {
				return fmt.Errorf("target %q: %w", target, err)
			}
		}
		var opts []layout.Option
		if tag != "" {
			opts = append(opts, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag}))
		}
		return p.AppendImage(img, opts...)
	}
	ref, err := registryRef(target)
	if err != nil {
		return fmt.Errorf("target %q: %w", target, err)
	}
	if err := remote.Write(ref, img, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
		return fmt.Errorf("pushing the boot image to %s: %w", ref, err)
	}
	return nil
}

// LayerSizes returns the compressed sizes of a boot image's two layers:
// bootinit's, shared by every boot image, and the image's own.
func LayerSizes(img v1.Image) (bootinit, own int64, err error) {
	layers, err := img.Layers()
	if err == nil && len(layers) != 2 {
		err = fmt.Errorf("%d layers", len(layers))
	}
	if err != nil {
		return 0, 0, fmt.Errorf("boot image: want two layers: %w", err)
	}
	if bootinit, err = layers[0].Size(); err == nil {
		own, err = layers[1].Size()
	}
	return bootinit, own, err
}
