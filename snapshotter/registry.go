package snapshotter

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/mkbootfs/mkbootfs/bootimage"
	"github.com/mkbootfs/mkbootfs/store/ocistore"
)

// Bounds on what is read from a registry.
const (
	maxManifest = 4 << 20   // a manifest or an image config
	maxOwnLayer = 512 << 20 // a boot image's own layer, uncompressed: its index grows with the tree
	registryOp  = time.Minute
	maxImages   = 1024 // manifests whose answer is remembered
)

// registry reads, from an image's registry, what tells a boot image's own
// layer apart, and that layer: through containerd's resolver, with
// containerd's hosts configuration (mirrors, plain HTTP, TLS) and docker's
// credentials, as containerd itself pulls.
type registry struct {
	resolver remotes.Resolver
	mu       sync.Mutex
	images   map[digest.Digest]ownLayer // by manifest digest
}

// ownLayer is a boot image's own layer; the zero value: not a boot image.
type ownLayer struct {
	desc ocispec.Descriptor
	// stores are the image's chunk stores, and prefetch how many chunks
	// its pinned chunk table lists first (its profile's), as its config's
	// labels say; 0: it says not.
	stores   []string
	prefetch int
}

// newRegistry reads hosts configuration from hostsDir (containerd's
// config_path, one HOST/hosts.toml each; "" for none) and credentials
// from docker's config (DOCKER_CONFIG, else ~/.docker/config.json).
func newRegistry(hostsDir string) *registry {
	return &registry{
		resolver: docker.NewResolver(docker.ResolverOptions{Hosts: config.ConfigureHosts(context.Background(), hostOptions(hostsDir))}),
		images:   map[digest.Digest]ownLayer{},
	}
}

// hostOptions is containerd's hosts configuration at hostsDir ("" for
// none), with docker's credentials.
func hostOptions(hostsDir string) config.HostOptions {
	opts := config.HostOptions{Credentials: dockerCredentials}
	if hostsDir != "" {
		opts.HostDir = config.HostDirFromRoot(hostsDir)
	}
	return opts
}

// chunkRegistries returns how a mount's oci:// chunk stores reach their
// registry: as containerd's hosts configuration at hostsDir says (its
// scheme, TLS settings and header: a login, say) of a registry it names,
// with parallelism connections kept alive; else by the registry's name
// alone, as a chunk store does anywhere.
func chunkRegistries(hostsDir string, parallelism int) func(string) (ocistore.Host, error) {
	return func(registry string) (ocistore.Host, error) {
		if hostsDir == "" {
			return ocistore.Host{}, nil
		}
		dir, err := config.HostDirFromRoot(hostsDir)(registry)
		if errdefs.IsNotFound(err) || err == nil && dir == "" {
			return ocistore.Host{}, nil
		}
		if err != nil {
			return ocistore.Host{}, fmt.Errorf("containerd's hosts configuration of %s: %w", registry, err)
		}
		opts := hostOptions(hostsDir)
		opts.UpdateClient = func(c *http.Client) error {
			if tr, ok := c.Transport.(*http.Transport); ok {
				tr.MaxIdleConnsPerHost = parallelism
				tr.DisableCompression = true // chunks are zstd already
			}
			return nil
		}
		hosts, err := config.ConfigureHosts(context.Background(), opts)(registry)
		if err != nil {
			return ocistore.Host{}, fmt.Errorf("containerd's hosts configuration of %s: %w", registry, err)
		}
		// The registry's own entry: a mirror does not hold its chunks.
		for _, h := range hosts {
			if h.Host == registry && h.Path == "/v2" && h.Capabilities.Has(docker.HostCapabilityPull) {
				return ocistore.Host{Scheme: h.Scheme, Transport: h.Client.Transport, Header: h.Header}, nil
			}
		}
		return ocistore.Host{}, nil
	}
}

// dockerCredentials returns the user and secret docker's config holds for
// host, or none.
func dockerCredentials(host string) (string, string, error) {
	reg, err := name.NewRegistry(host)
	if err != nil {
		return "", "", nil
	}
	a, err := authn.DefaultKeychain.Resolve(reg)
	if err != nil {
		return "", "", fmt.Errorf("docker credentials for %s: %w", host, err)
	}
	c, err := a.Authorization()
	if err != nil {
		return "", "", fmt.Errorf("docker credentials for %s: %w", host, err)
	}
	if c.IdentityToken != "" {
		return "", c.IdentityToken, nil
	}
	return c.Username, c.Password, nil
}

// bootLayer tells from the labels CRI gives the snapshot of a layer
// whether it is a boot image's own layer: the last of two, in an image
// whose config bears bootimage.LabelSource. It returns the image's
// reference, by digest, and the layer.
func (r *registry) bootLayer(ctx context.Context, labels map[string]string) (string, ownLayer, bool, error) {
	ref, layer, manifest := labels[snapshotters.TargetRefLabel], labels[snapshotters.TargetLayerDigestLabel], labels[snapshotters.TargetManifestDigestLabel]
	// The layers label lists this layer and those above it: only the
	// image's last layer can be a boot image's own.
	if ref == "" || layer == "" || manifest == "" || strings.Contains(labels[snapshotters.TargetImageLayersLabel], ",") {
		return "", ownLayer{}, false, nil
	}
	md, err := digest.Parse(manifest)
	if err != nil {
		return "", ownLayer{}, false, nil
	}
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return "", ownLayer{}, false, nil
	}
	byDigest := reference.TrimNamed(named).String() + "@" + md.String()
	r.mu.Lock()
	own, seen := r.images[md]
	r.mu.Unlock()
	if !seen {
		if own, err = r.lookUp(ctx, byDigest, md); err != nil {
			return "", ownLayer{}, false, err
		}
		r.mu.Lock()
		if len(r.images) >= maxImages {
			clear(r.images)
		}
		r.images[md] = own
		r.mu.Unlock()
	}
	if own.desc.Digest.String() != layer {
		return "", ownLayer{}, false, nil
	}
	return byDigest, own, true, nil
}

// lookUp reads the manifest md and the config of the image ref names by
// digest. The manifest is fetched by its digest alone, with no HEAD first
// (a round trip): its size and media type are unknown, so it is read up to
// maxManifest and checked against md; a registry that will not serve it
// so is asked as containerd asks, after a HEAD.
func (r *registry) lookUp(ctx context.Context, ref string, md digest.Digest) (ownLayer, error) {
	ctx, cancel := context.WithTimeout(ctx, registryOp)
	defer cancel()
	f, err := r.resolver.Fetcher(ctx, ref)
	if err != nil {
		return ownLayer{}, fmt.Errorf("%s: %w", ref, err)
	}
	var m ocispec.Manifest
	if err := fetchJSON(ctx, f, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: md, Size: maxManifest}, &m); err != nil {
		_, desc, rerr := r.resolver.Resolve(ctx, ref)
		if rerr != nil {
			return ownLayer{}, fmt.Errorf("resolving %s: %w", ref, rerr)
		}
		if err := fetchJSON(ctx, f, desc, &m); err != nil {
			return ownLayer{}, fmt.Errorf("%s: its manifest: %w", ref, err)
		}
	}
	if len(m.Layers) != bootimage.Layers {
		return ownLayer{}, nil
	}
	var cfg ocispec.Image
	if err := fetchJSON(ctx, f, m.Config, &cfg); err != nil {
		return ownLayer{}, fmt.Errorf("%s: its config: %w", ref, err)
	}
	labels := cfg.Config.Labels
	if _, ok := labels[bootimage.LabelSource]; !ok {
		return ownLayer{}, nil
	}
	own := ownLayer{desc: m.Layers[bootimage.OwnLayer]}
	if s := labels[bootimage.LabelStores]; s != "" {
		own.stores = strings.Split(s, ",")
	}
	if n, err := strconv.Atoi(labels[bootimage.LabelPrefetch]); err == nil && n > 0 {
		own.prefetch = n
	}
	return own, nil
}

// fetchJSON fetches the small blob desc (of at most desc.Size bytes),
// verifies it and decodes it.
func fetchJSON(ctx context.Context, f remotes.Fetcher, desc ocispec.Descriptor, v any) error {
	if desc.Size > maxManifest {
		return fmt.Errorf("%s: %d bytes, more than the %d a manifest or config may have", desc.Digest, desc.Size, maxManifest)
	}
	rc, err := f.Fetch(ctx, desc)
	if err != nil {
		return err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, maxManifest+1))
	if err != nil {
		return err
	}
	if desc.Digest.Validate() != nil || desc.Digest.Algorithm().FromBytes(b) != desc.Digest {
		return fmt.Errorf("%s: the registry sent %d bytes of other content", desc.Digest, len(b))
	}
	return json.Unmarshal(b, v)
}

// fetchLayer fetches the layer desc of the image ref, verifies it against
// its digest, and writes it uncompressed (a tar stream) to path: to a
// temporary file, synced, then renamed.
func (r *registry) fetchLayer(ctx context.Context, ref string, desc ocispec.Descriptor, path string) error {
	ctx, cancel := context.WithTimeout(ctx, registryOp)
	defer cancel()
	f, err := r.resolver.Fetcher(ctx, ref)
	if err != nil {
		return err
	}
	rc, err := f.Fetch(ctx, desc)
	if err != nil {
		return err
	}
	defer rc.Close()
	if desc.Digest.Validate() != nil {
		return fmt.Errorf("layer digest %q: %w", desc.Digest, desc.Digest.Validate())
	}
	verifier := desc.Digest.Verifier()
	compressed := bufio.NewReader(io.TeeReader(io.LimitReader(rc, maxOwnLayer), verifier))
	var in io.Reader = compressed
	if magic, _ := compressed.Peek(2); bytes.Equal(magic, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(compressed)
		if err != nil {
			return fmt.Errorf("layer %s: %w", desc.Digest, err)
		}
		defer zr.Close()
		in = zr
	}
	tmp := path + ".tmp"
	out, err := os.Create(tmp)
	if err != nil {
		return err
	}
	n, err := io.Copy(out, io.LimitReader(in, maxOwnLayer+1))
	if err == nil && n > maxOwnLayer {
		err = fmt.Errorf("more than %d bytes uncompressed", maxOwnLayer)
	}
	if err == nil {
		// The rest of the compressed stream, for the digest.
		_, err = io.Copy(io.Discard, compressed)
	}
	if err == nil && !verifier.Verified() {
		err = errors.New("the registry sent other content than its digest names")
	}
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("layer %s of %s: %w", desc.Digest, ref, err)
	}
	return nil
}
