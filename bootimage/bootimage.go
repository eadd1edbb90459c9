// Package bootimage reads boot images, the images `mkbootfs convert`
// makes, and index files: by skopeo's transport names (a registry, the
// docker daemon, a docker-save archive, an OCI layout), or a boot image's
// own layer as a blob. It reads and never converts, so that what mounts or
// runs a boot image (mount, attach, the snapshotter) need not link the
// converter. Of a boot image only its small layer is read: the index, the
// boot config and the access profile.
package bootimage

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/mkbootfs/mkbootfs/bootinit/bootconfig"
	"github.com/mkbootfs/mkbootfs/index"
)

// MetaStores is the index meta key under which the converter records the
// chunk stores, comma-separated.
const MetaStores = "stores"

// Labels a boot image's config carries.
const (
	LabelSource = "org.mkbootfs.source" // the image it was converted from
	LabelStores = "org.mkbootfs.stores" // its chunk stores, comma-separated
	// LabelPrefetch is how many chunks the chunk table its oci:// store is
	// pinned to lists first: its profile's, in the order a start reads
	// them, so that a node can fetch them before it has the index.
	LabelPrefetch = "org.mkbootfs.prefetch"
)

// Layers is how many layers a boot image has: bootinit's, the same in
// every boot image, then the image's own (OwnLayer).
const (
	Layers   = 2
	OwnLayer = 1
)

// Boot is what a boot image holds besides bootinit.
type Boot struct {
	Index  *index.Index
	Stores []string       // the chunk stores recorded at convert time
	Config *v1.ConfigFile // the boot image's config; nil for an index file or a layer
	// Boot is the boot config; nil for an index file.
	Boot *bootconfig.Config
	// Profile is the boot access profile, as the image holds it; nil
	// when it has none (see package profile).
	Profile []byte
}

// Read reads the index and chunk stores named by ref: an index file, or
// a boot image by the transport names of ParseSource (dir: excepted). Of a
// boot image only its own small layer is read.
func Read(ctx context.Context, ref string) (*Boot, error) {
	fi, statErr := os.Stat(ref)
	if statErr == nil && fi.Mode().IsRegular() {
		x, err := index.ReadFile(ref)
		if err != nil {
			return nil, err
		}
		b := &Boot{Index: x}
		if s := x.Meta[MetaStores]; s != "" {
			b.Stores = strings.Split(s, ",")
		}
		return b, nil
	}
	src, err := ParseSource(ref)
	if err == nil && src.Dir != "" {
		err = fmt.Errorf("%s: a directory, not an index file or a boot image", ref)
	}
	if err != nil {
		return nil, fmt.Errorf("%w (want an index file or a boot image)", err)
	}
	img, err := src.Image(ctx, ImageOptions{})
	if err != nil {
		if errors.Is(statErr, os.ErrNotExist) {
			return nil, fmt.Errorf("%s: no such index file, nor image: %w", ref, err)
		}
		return nil, err
	}
	return FromImage(ref, img)
}

// FromImage reads the index and boot config out of the boot image's own
// layer, the last of its two; ref names img in messages.
func FromImage(ref string, img v1.Image) (*Boot, error) {
	layers, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ref, err)
	}
	if len(layers) != Layers {
		return nil, notBoot(ref, fmt.Sprintf("%d layers, a boot image has two", len(layers)))
	}
	rc, err := layers[OwnLayer].Uncompressed()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ref, err)
	}
	defer rc.Close()
	b, err := ReadLayer(ref, rc)
	if err != nil {
		return nil, err
	}
	if b.Config, err = img.ConfigFile(); err != nil {
		return nil, fmt.Errorf("%s: reading the image config: %w", ref, err)
	}
	return b, nil
}

// ReadLayer reads a boot image's own layer, uncompressed (a tar stream):
// its index, boot config and profile. The index is decoded, so verified
// against its checksum.
func ReadLayer(ref string, r io.Reader) (*Boot, error) {
	var rawIndex, rawConfig, rawProfile []byte
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: reading its layer: %w", ref, err)
		}
		var dst *[]byte
		switch path.Clean("/" + h.Name) {
		case bootconfig.Index:
			dst = &rawIndex
		case bootconfig.ConfigFile:
			dst = &rawConfig
		case bootconfig.Profile:
			dst = &rawProfile
		default:
			continue
		}
		if *dst, err = io.ReadAll(tr); err != nil {
			return nil, fmt.Errorf("%s: reading %s: %w", ref, h.Name, err)
		}
	}
	if rawIndex == nil || rawConfig == nil {
		return nil, notBoot(ref, "no "+bootconfig.Index+" and "+bootconfig.ConfigFile)
	}
	x, err := index.Decode(rawIndex)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ref, err)
	}
	var cfg bootconfig.Config
	if err := json.Unmarshal(rawConfig, &cfg); err != nil {
		return nil, fmt.Errorf("%s: %s: %w", ref, bootconfig.ConfigFile, err)
	}
	return &Boot{Index: x, Stores: cfg.Stores, Boot: &cfg, Profile: rawProfile}, nil
}

func notBoot(ref, why string) error {
	return fmt.Errorf("%s is not a boot image (%s): convert it first with `mkbootfs convert`", ref, why)
}
