package bootinit

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/mkbootfs/mkbootfs/bootinit/bootconfig"
	"github.com/mkbootfs/mkbootfs/imagemount"
	"github.com/mkbootfs/mkbootfs/index"
	"github.com/mkbootfs/mkbootfs/nodecache"
	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/location"
)

// storeURLs returns the stores to read, in order: MKBOOTFS_STORE when set,
// else those recorded at convert time, with a recorded local directory
// replaced by StoreDir, where the host's store is bind-mounted.
func storeURLs(cfg *bootconfig.Config) []string {
	if env := os.Getenv(bootconfig.EnvStore); env != "" {
		return strings.Split(env, ",")
	}
	urls := make([]string, len(cfg.Stores))
	for i, u := range cfg.Stores {
		urls[i] = u
		if isLocal(u) {
			urls[i] = bootconfig.StoreDir
		}
	}
	return urls
}

func isLocal(u string) bool { return !strings.Contains(u, "://") || strings.HasPrefix(u, "file://") }

// openStores opens the stores; remote ones are read through the
// node-shared cache at CacheDir.
func openStores(cfg *bootconfig.Config) (store.Store, error) {
	urls := storeURLs(cfg)
	if len(urls) == 0 {
		return nil, fmt.Errorf("no chunk store: the boot config records none; set -e %s=URL", bootconfig.EnvStore)
	}
	opt := imagemount.Options{
		Cache:  bootconfig.CacheDir,
		Log:    func(s string) { fmt.Fprintln(os.Stderr, "bootinit:", s) },
		Stores: location.Options{RegistryAuth: bootconfig.AuthFile},
	}
	if !slices.ContainsFunc(urls, func(u string) bool { return !isLocal(u) }) {
		opt.Cache = "" // already on this node: a cache would only copy it
	}
	if v := os.Getenv(bootconfig.EnvCacheSize); v != "" && opt.Cache != "" {
		var err error
		if opt.CacheSize, err = nodecache.ParseSize(v, bootconfig.CacheDir); err != nil || opt.CacheSize < 1<<20 {
			return nil, &exitError{exitBoot, fmt.Errorf("%s=%q: want a size of 1M or more, such as 30M, 2G or 10%% (of the cache volume's filesystem)", bootconfig.EnvCacheSize, v)}
		}
	}
	if v := os.Getenv(bootconfig.EnvCacheMaxAge); v != "" && opt.Cache != "" {
		var err error
		if opt.CacheMaxAge, err = nodecache.ParseMaxAge(v); err != nil {
			return nil, &exitError{exitBoot, fmt.Errorf("%s: %w", bootconfig.EnvCacheMaxAge, err)}
		}
	}
	st, err := imagemount.Open(context.Background(), urls, opt)
	if err != nil {
		return nil, fmt.Errorf("%w%s", err, localHint(urls, err))
	}
	return st, nil
}

// checkStore fails the boot early, with a clear message, when the first
// chunk cannot be had: a wrong or unreachable store otherwise shows up as
// I/O errors in the app.
func checkStore(x *index.Index, st store.Store, urls []string) error {
	err := imagemount.Check(context.Background(), x, st, 2*time.Minute)
	if err == nil {
		return nil
	}
	return fmt.Errorf("the chunk store cannot serve the image: %w%s", err, localHint(urls, err))
}

// localHint explains the two usual mistakes: a host directory store that
// was not mounted, and a loopback URL that means the container itself.
func localHint(urls []string, err error) string {
	for _, u := range urls {
		if u == bootconfig.StoreDir && (errors.Is(err, store.ErrNotFound) || errors.Is(err, os.ErrNotExist)) {
			return fmt.Sprintf("; the image's chunks are in a directory store on the host: mount it with -v HOST-STORE-DIR:%s:ro", bootconfig.StoreDir)
		}
		pu, perr := url.Parse(u)
		if perr != nil || pu.Host == "" {
			continue
		}
		host := pu.Hostname()
		if (host == "localhost" || strings.HasPrefix(host, "127.") || host == "::1") && errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Sprintf("; %s is this container's own loopback on docker's default bridge: run with --network host or use an address the container can reach (-e %s=URL)", host, bootconfig.EnvStore)
		}
	}
	return ""
}
