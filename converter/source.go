package converter

import (
	"context"
	"fmt"
	"runtime"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/daemon"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// ImageInfo describes the source image.
type ImageInfo struct {
	Ref    string         // the reference it was read by
	Config *v1.ConfigFile // entrypoint, cmd, env, user, ...
}

// source is a parsed Options.Source.
type source struct {
	transport string // "", "docker", "docker-daemon", "docker-archive", "oci"
	ref       string // reference, or path for archives and layouts
	tag       string // oci: and docker-archive: tag within the file
	dir       string // dir: sources
}

// unsupported are skopeo's transports that mkbootfs does not read.
var unsupported = map[string]bool{"oci-archive": true, "containers-storage": true, "ostree": true, "sif": true, "tarball": true}

func parseSource(s string) (source, error) {
	transport, rest, _ := strings.Cut(s, ":")
	src := source{transport: transport, ref: rest}
	switch transport {
	case "dir":
		src.dir = rest
	case "docker":
		src.ref = strings.TrimPrefix(rest, "//")
	case "docker-daemon":
	case "docker-archive", "oci":
		if path, tag, ok := strings.Cut(rest, ":"); ok {
			src.ref, src.tag = path, tag
		}
	default:
		if unsupported[transport] {
			return src, fmt.Errorf("source %q: the %s: transport is not supported (use a registry reference, docker-daemon:, docker-archive:, oci: or dir:)", s, transport)
		}
		// A bare reference: ubuntu, ubuntu:24.04, 127.0.0.1:5000/app:1.
		if _, err := name.ParseReference(s); err != nil {
			return src, fmt.Errorf("source %q: neither an image reference (%v) nor transport:name (use docker-daemon:, docker-archive:, oci: or dir:)", s, err)
		}
		return source{ref: s}, nil
	}
	if src.ref == "" {
		return src, fmt.Errorf("source %q: nothing after the transport", s)
	}
	return src, nil
}

// open resolves an image source.
func (src source) open(ctx context.Context, opts Options) (v1.Image, *ImageInfo, error) {
	img, err := src.image(ctx, opts)
	if err != nil {
		return nil, nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, nil, fmt.Errorf("%s: reading the image config: %w", opts.Source, err)
	}
	return img, &ImageInfo{Ref: src.ref, Config: cfg}, nil
}

func (src source) image(ctx context.Context, opts Options) (v1.Image, error) {
	switch src.transport {
	case "docker-archive":
		var tag *name.Tag
		if src.tag != "" {
			t, err := name.NewTag(src.tag)
			if err != nil {
				return nil, fmt.Errorf("docker-archive tag %q: %w", src.tag, err)
			}
			tag = &t
		}
		img, err := tarball.ImageFromPath(src.ref, tag)
		if err != nil {
			return nil, fmt.Errorf("docker-archive:%s: %w", src.ref, err)
		}
		return img, nil
	case "oci":
		return ociImage(src.ref, src.tag, opts.Platform)
	}
	ref, err := name.ParseReference(src.ref)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %w", src.ref, err)
	}
	if src.transport == "docker-daemon" {
		img, err := daemon.Image(ref, daemon.WithContext(ctx), daemon.WithFileBufferedOpener())
		if err != nil {
			return nil, fmt.Errorf("%s from the docker daemon: %w", src.ref, err)
		}
		return img, nil
	}
	var local error
	if src.transport == "" && !opts.Pull {
		// As docker run does: an image the daemon has is used as it is.
		img, err := daemon.Image(ref, daemon.WithContext(ctx), daemon.WithFileBufferedOpener())
		if err == nil {
			return img, nil
		}
		local = err
	}
	plat, err := platform(opts.Platform)
	if err != nil {
		return nil, err
	}
	img, err := remote.Image(ref, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain), remote.WithPlatform(plat))
	if err != nil {
		if local != nil {
			return nil, fmt.Errorf("%s: not in the local docker daemon, and from the registry: %w", src.ref, err)
		}
		return nil, fmt.Errorf("%s from the registry: %w", src.ref, err)
	}
	return img, nil
}

func platform(s string) (v1.Platform, error) {
	if s == "" {
		return v1.Platform{OS: "linux", Architecture: runtime.GOARCH}, nil
	}
	p, err := v1.ParsePlatform(s)
	if err != nil {
		return v1.Platform{}, fmt.Errorf("--platform %q: %w", s, err)
	}
	return *p, nil
}

// ociImage finds an image in an OCI layout: by its ref.name annotation when
// a tag is given, else the only image (or the platform's, in an index).
func ociImage(path, tag, plat string) (v1.Image, error) {
	idx, err := layout.ImageIndexFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("oci:%s: %w", path, err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("oci:%s: %w", path, err)
	}
	var found []v1.Descriptor
	for _, d := range m.Manifests {
		if tag == "" || d.Annotations["org.opencontainers.image.ref.name"] == tag {
			found = append(found, d)
		}
	}
	if len(found) != 1 {
		return nil, fmt.Errorf("oci:%s: %d images match tag %q; name one as oci:%s:TAG", path, len(found), tag, path)
	}
	d := found[0]
	if d.MediaType.IsImage() {
		return idx.Image(d.Digest)
	}
	if !d.MediaType.IsIndex() {
		return nil, fmt.Errorf("oci:%s: %s is neither an image nor an index", path, d.MediaType)
	}
	child, err := idx.ImageIndex(d.Digest)
	if err != nil {
		return nil, err
	}
	want, err := platform(plat)
	if err != nil {
		return nil, err
	}
	im, err := child.IndexManifest()
	if err != nil {
		return nil, err
	}
	for _, c := range im.Manifests {
		if c.Platform != nil && c.Platform.Satisfies(want) {
			return child.Image(c.Digest)
		}
	}
	return nil, fmt.Errorf("oci:%s: no image for platform %s", path, want.String())
}
