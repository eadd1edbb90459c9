package bootimage

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

// Source is an image named in skopeo's transport syntax: a bare reference
// (the docker daemon when it has it, else the registry), docker://REF,
// docker-daemon:REF, docker-archive:PATH[:TAG], oci:PATH[:TAG], or
// dir:PATH, a directory, which is no image.
type Source struct {
	Transport string // "", "docker", "docker-daemon", "docker-archive", "oci", "dir"
	Ref       string // reference, or path for archives and layouts
	Tag       string // oci: and docker-archive: tag within the file
	Dir       string // dir: sources
}

// ImageOptions pick how Source.Image finds an image.
type ImageOptions struct {
	// Platform picks an image from a multi-platform index ("os/arch[/variant]"); empty: the host's.
	Platform string
	// Pull reads a bare reference from its registry even when the local docker daemon has it.
	Pull bool
}

// unsupported are skopeo's transports that mkbootfs does not read.
var unsupported = map[string]bool{"oci-archive": true, "containers-storage": true, "ostree": true, "sif": true, "tarball": true}

// ParseSource parses s in skopeo's transport syntax.
func ParseSource(s string) (Source, error) {
	transport, rest, _ := strings.Cut(s, ":")
	src := Source{Transport: transport, Ref: rest}
	switch transport {
	case "dir":
		src.Dir = rest
	case "docker":
		src.Ref = strings.TrimPrefix(rest, "//")
	case "docker-daemon":
	case "docker-archive", "oci":
		if path, tag, ok := strings.Cut(rest, ":"); ok {
			src.Ref, src.Tag = path, tag
		}
	default:
		if unsupported[transport] {
			return src, fmt.Errorf("source %q: the %s: transport is not supported (use a registry reference, docker-daemon:, docker-archive:, oci: or dir:)", s, transport)
		}
		// A bare reference: ubuntu, ubuntu:24.04, 127.0.0.1:5000/app:1.
		if _, err := name.ParseReference(s); err != nil {
			return src, fmt.Errorf("source %q: neither an image reference (%v) nor transport:name (use docker-daemon:, docker-archive:, oci: or dir:)", s, err)
		}
		return Source{Ref: s}, nil
	}
	if src.Ref == "" {
		return src, fmt.Errorf("source %q: nothing after the transport", s)
	}
	return src, nil
}

// Image opens the image src names; a dir: source is none.
func (src Source) Image(ctx context.Context, opts ImageOptions) (v1.Image, error) {
	switch src.Transport {
	case "dir":
		return nil, fmt.Errorf("dir:%s: a directory, not an image", src.Dir)
	case "docker-archive":
		var tag *name.Tag
		if src.Tag != "" {
			t, err := name.NewTag(src.Tag)
			if err != nil {
				return nil, fmt.Errorf("docker-archive tag %q: %w", src.Tag, err)
			}
			tag = &t
		}
		img, err := tarball.ImageFromPath(src.Ref, tag)
		if err != nil {
			return nil, fmt.Errorf("docker-archive:%s: %w", src.Ref, err)
		}
		return img, nil
	case "oci":
		return ociImage(src.Ref, src.Tag, opts.Platform)
	}
	ref, err := name.ParseReference(src.Ref)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %w", src.Ref, err)
	}
	if src.Transport == "docker-daemon" {
		img, err := daemon.Image(ref, daemon.WithContext(ctx), daemon.WithFileBufferedOpener())
		if err != nil {
			return nil, fmt.Errorf("%s from the docker daemon: %w", src.Ref, err)
		}
		return img, nil
	}
	var local error
	if src.Transport == "" && !opts.Pull {
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
			return nil, fmt.Errorf("%s: not in the local docker daemon, and from the registry: %w", src.Ref, err)
		}
		return nil, fmt.Errorf("%s from the registry: %w", src.Ref, err)
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
