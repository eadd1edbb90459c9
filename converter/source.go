package converter

import (
	"context"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/mkbootfs/mkbootfs/bootimage"
)

// ImageInfo describes the source image.
type ImageInfo struct {
	Ref    string         // the reference it was read by
	Config *v1.ConfigFile // entrypoint, cmd, env, user, ...
}

// config is the image's config, nil for none (a directory).
func (i *ImageInfo) config() *v1.ConfigFile {
	if i == nil {
		return nil
	}
	return i.Config
}

// openSource opens the image src names (see bootimage.ParseSource).
func openSource(ctx context.Context, src bootimage.Source, opts Options) (v1.Image, *ImageInfo, error) {
	img, err := src.Image(ctx, bootimage.ImageOptions{Platform: opts.Platform, Pull: opts.Pull})
	if err != nil {
		return nil, nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, nil, fmt.Errorf("%s: reading the image config: %w", opts.Source, err)
	}
	return img, &ImageInfo{Ref: src.Ref, Config: cfg}, nil
}
