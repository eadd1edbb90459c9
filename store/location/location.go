// Package location maps a store location — a plain path or a file://,
// http(s)://, ssh:// or oci:// URL — to the chunk store that serves it, and a list
// of locations to one store that fails over between them and retries.
package location

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/httpstore"
	"github.com/mkbootfs/mkbootfs/store/local"
	"github.com/mkbootfs/mkbootfs/store/ocistore"
	"github.com/mkbootfs/mkbootfs/store/sshstore"
)

// Options configure the stores Open makes. Zero fields take each store's
// defaults.
type Options struct {
	// Create makes a local store directory that does not exist.
	Create bool
	// Timeout bounds each request to a remote store.
	Timeout time.Duration
	// Parallelism is how many requests a caller runs at once on a remote
	// store: connections are pooled and requests bounded to match.
	Parallelism int
	// SSHKey and KnownHosts are the SSH private key file and known_hosts
	// file; see sshstore.Options.
	SSHKey, KnownHosts string
	// RegistryAuth is a docker config file whose credentials an oci://
	// store tries before docker's usual places; see ocistore.Options.
	RegistryAuth string
	// RegistryHost, when set, says how an oci:// store reaches its
	// registry (by its host[:port]); see ocistore.Host.
	RegistryHost func(registry string) (ocistore.Host, error)
	// Retry bounds the retries of OpenList.
	Retry store.RetryOptions
	// Wrap, when set, wraps each store OpenList opens, under its failover
	// and retries (to count what each one fetches, say).
	Wrap func(loc string, s store.Store) store.Store
}

// Schemes lists the location forms Open accepts, for messages.
const Schemes = "a directory, file:///dir, http://host/path, https://host/path, ssh://[user@]host[:port]/path or oci://registry/repo[@sha256:digest]"

// Open returns the store at loc.
func Open(ctx context.Context, loc string, opt Options) (store.Store, error) {
	scheme, _, ok := strings.Cut(loc, "://")
	if !ok {
		return local.Open(loc, opt.Create)
	}
	switch strings.ToLower(scheme) {
	case "file":
		u, err := url.Parse(loc)
		if err != nil {
			return nil, fmt.Errorf("store %s: %w", loc, err)
		}
		if u.Host != "" && u.Host != "localhost" {
			return nil, fmt.Errorf("store %s: a file:// URL names a local directory (file:///dir); for another host use ssh://", loc)
		}
		return local.Open(u.Path, opt.Create)
	case "http", "https":
		return httpstore.New(loc, httpstore.Options{Timeout: opt.Timeout, Parallelism: opt.Parallelism})
	case "ssh":
		return sshstore.Open(loc, sshstore.Options{
			KeyFile: opt.SSHKey, KnownHosts: opt.KnownHosts, Timeout: opt.Timeout, Parallelism: opt.Parallelism,
		})
	case "oci":
		// Create means the store will be written: ask for push access.
		o := ocistore.Options{Timeout: opt.Timeout, Parallelism: opt.Parallelism, AuthFile: opt.RegistryAuth, Push: opt.Create}
		if opt.RegistryHost != nil {
			registry, _, _ := strings.Cut(loc[len(scheme)+len("://"):], "/")
			h, err := opt.RegistryHost(registry)
			if err != nil {
				return nil, fmt.Errorf("store %s: %w", loc, err)
			}
			o.Host = h
		}
		return ocistore.Open(loc, o)
	}
	return nil, fmt.Errorf("store %s: unknown scheme %q; want %s", loc, scheme, Schemes)
}

// OpenList returns one store over locs: reads try each in order (a store
// that fails moves behind the others for a while), writes go to the first,
// and transient errors are retried with backoff. A directory store that
// does not exist (not mounted, say) is passed over as a store that is down
// would be, unless no store is left.
func OpenList(ctx context.Context, locs []string, opt Options) (store.Store, error) {
	if len(locs) == 0 {
		return nil, errors.New("no store given; want " + Schemes)
	}
	stores := make([]store.Store, 0, len(locs))
	var missing error
	for _, loc := range locs {
		s, err := Open(ctx, loc, opt)
		if errors.Is(err, os.ErrNotExist) {
			missing = cmp.Or(missing, err)
			continue
		}
		if err != nil {
			for _, s := range stores {
				s.Close()
			}
			return nil, err
		}
		if opt.Wrap != nil {
			s = opt.Wrap(loc, s)
		}
		stores = append(stores, s)
	}
	if len(stores) == 0 {
		return nil, missing
	}
	retry := opt.Retry
	if retry.Timeout == 0 {
		// One attempt may ask every store once, each within its timeout.
		per := opt.Timeout
		if per <= 0 {
			per = time.Minute
		}
		retry.Timeout = per * time.Duration(len(stores))
	}
	return store.Retry(store.Failover(stores...), retry), nil
}
