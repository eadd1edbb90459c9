package converter

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

// Boot is what a boot image holds besides bootinit.
type Boot struct {
	Index  *index.Index
	Stores []string       // the chunk stores recorded at convert time
	Config *v1.ConfigFile // the boot image's config; nil for an index file
}

// ReadBoot reads the index and chunk stores named by ref: an index file, or
// a boot image made by Convert, by the transport names of Options.Source
// (dir: excepted). Of a boot image only its own small layer is read.
func ReadBoot(ctx context.Context, ref string) (*Boot, error) {
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
	src, err := parseSource(ref)
	if err == nil && src.dir != "" {
		err = fmt.Errorf("%s: a directory, not an index file or a boot image", ref)
	}
	if err != nil {
		return nil, fmt.Errorf("%w (want an index file or a boot image)", err)
	}
	img, err := src.image(ctx, Options{Source: ref})
	if err != nil {
		if errors.Is(statErr, os.ErrNotExist) {
			return nil, fmt.Errorf("%s: no such index file, nor image: %w", ref, err)
		}
		return nil, err
	}
	return readBootImage(ref, img)
}

// readBootImage reads the index and boot config out of the boot image's
// own layer, the last of its two.
func readBootImage(ref string, img v1.Image) (*Boot, error) {
	notBoot := func(why string) error {
		return fmt.Errorf("%s is not a boot image (%s): convert it first with `mkbootfs convert`", ref, why)
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ref, err)
	}
	if len(layers) != 2 {
		return nil, notBoot(fmt.Sprintf("%d layers, a boot image has two", len(layers)))
	}
	rc, err := layers[1].Uncompressed()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ref, err)
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
			return nil, fmt.Errorf("%s: reading its layer: %w", ref, err)
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
			return nil, fmt.Errorf("%s: reading %s: %w", ref, h.Name, err)
		}
	}
	if rawIndex == nil || rawConfig == nil {
		return nil, notBoot("no " + bootconfig.Index + " and " + bootconfig.ConfigFile)
	}
	x, err := index.Decode(rawIndex)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ref, err)
	}
	var cfg bootconfig.Config
	if err := json.Unmarshal(rawConfig, &cfg); err != nil {
		return nil, fmt.Errorf("%s: %s: %w", ref, bootconfig.ConfigFile, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("%s: reading the image config: %w", ref, err)
	}
	return &Boot{Index: x, Stores: cfg.Stores, Config: cf}, nil
}
