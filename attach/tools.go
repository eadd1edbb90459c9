package attach

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	goruntime "runtime"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/daemon"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/mkbootfs/mkbootfs/bootinit/bootconfig"
	"github.com/mkbootfs/mkbootfs/index"
)

// defaultPath is PATH in a tools tree whose image sets none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// metaStores is the index meta key under which the converter records the
// chunk stores (converter.MetaStores).
const metaStores = "stores"

// Tools is the tree a session sees as its root.
type Tools struct {
	Source string       // what it was loaded from
	Index  *index.Index // nil: the host's root
	Stores []string     // where its chunks are, as recorded at conversion
	Path   string       // PATH in the tree
}

// LoadTools loads the tools tree named by ref: an index file, or a boot
// image made by `mkbootfs convert` (docker-daemon:REF, docker://REF, or a
// bare reference: the docker daemon's image when it has one, else the
// registry's). Only the boot image's small layer is read: the index and
// the boot config. An empty ref is the host's root.
func LoadTools(ctx context.Context, ref string) (*Tools, error) {
	if ref == "" {
		return &Tools{Source: "the host's root", Path: defaultPath}, nil
	}
	if fi, err := os.Stat(ref); err == nil && fi.Mode().IsRegular() {
		x, err := index.ReadFile(ref)
		if err != nil {
			return nil, fmt.Errorf("tools: %w", err)
		}
		t := &Tools{Source: ref, Index: x, Path: defaultPath}
		if s := x.Meta[metaStores]; s != "" {
			t.Stores = strings.Split(s, ",")
		}
		return t, nil
	}
	img, err := openImage(ctx, ref)
	if err != nil {
		return nil, err
	}
	return bootImageTools(ref, img)
}

func openImage(ctx context.Context, ref string) (v1.Image, error) {
	daemonOnly, registryOnly := false, false
	if r, ok := strings.CutPrefix(ref, "docker-daemon:"); ok {
		ref, daemonOnly = r, true
	} else if r, ok := strings.CutPrefix(ref, "docker://"); ok {
		ref, registryOnly = r, true
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("tools image %q: neither an index file nor an image reference: %w", ref, err)
	}
	var local error
	if !registryOnly {
		img, err := daemon.Image(r, daemon.WithContext(ctx))
		if err == nil {
			return img, nil
		}
		if daemonOnly {
			return nil, fmt.Errorf("tools image %s from the docker daemon: %w", ref, err)
		}
		local = err
	}
	img, err := remote.Image(r, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain),
		remote.WithPlatform(v1.Platform{OS: "linux", Architecture: goruntime.GOARCH}))
	if err != nil {
		if local != nil {
			return nil, fmt.Errorf("tools image %s: not in the docker daemon (%v), and from the registry: %w", ref, local, err)
		}
		return nil, fmt.Errorf("tools image %s from the registry: %w", ref, err)
	}
	return img, nil
}

// bootImageTools reads the index and boot config out of a boot image's
// own layer, and PATH out of its config.
func bootImageTools(ref string, img v1.Image) (*Tools, error) {
	notBoot := func(why string) error {
		return fmt.Errorf("tools image %s is not a boot image (%s): convert it first with `mkbootfs convert`", ref, why)
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("tools image %s: %w", ref, err)
	}
	if len(layers) != 2 {
		return nil, notBoot(fmt.Sprintf("%d layers, a boot image has two", len(layers)))
	}
	rc, err := layers[1].Uncompressed() // the image's own: index and boot config
	if err != nil {
		return nil, fmt.Errorf("tools image %s: %w", ref, err)
	}
	defer rc.Close()
	var rawIndex, rawConfig []byte
	tr := tar.NewReader(rc)
	for rawIndex == nil || rawConfig == nil {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("tools image %s: reading its layer: %w", ref, err)
		}
		var dst *[]byte
		switch path.Clean("/" + h.Name) {
		case bootconfig.Index:
			dst = &rawIndex
		case bootconfig.ConfigFile:
			dst = &rawConfig
		default:
			continue
		}
		if *dst, err = io.ReadAll(tr); err != nil {
			return nil, fmt.Errorf("tools image %s: reading %s: %w", ref, h.Name, err)
		}
	}
	if rawIndex == nil || rawConfig == nil {
		return nil, notBoot("no " + bootconfig.Index + " and " + bootconfig.ConfigFile)
	}
	x, err := index.Decode(rawIndex)
	if err != nil {
		return nil, fmt.Errorf("tools image %s: %w", ref, err)
	}
	var cfg bootconfig.Config
	if err := json.Unmarshal(rawConfig, &cfg); err != nil {
		return nil, fmt.Errorf("tools image %s: %s: %w", ref, bootconfig.ConfigFile, err)
	}
	t := &Tools{Source: ref, Index: x, Stores: cfg.Stores, Path: defaultPath}
	if cf, err := img.ConfigFile(); err == nil {
		for _, e := range cf.Config.Env {
			if p, ok := strings.CutPrefix(e, "PATH="); ok && p != "" {
				t.Path = p
			}
		}
	}
	return t, nil
}
