package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"

	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/location"
)

// defaultStore is where chunks go when no --store is given.
func defaultStore() string {
	if d := os.Getenv("MKBOOTFS_STORE_DIR"); d != "" {
		return d
	}
	return "/var/lib/mkbootfs/store"
}

// openStore opens the chunk stores named by urls, tried in order.
func openStore(ctx context.Context, urls []string, create bool) (store.Store, error) {
	if len(urls) == 0 {
		urls = []string{defaultStore()}
	}
	if len(urls) == 1 {
		return location.Open(ctx, urls[0], location.Options{Create: create})
	}
	return location.OpenList(ctx, urls, location.Options{Create: create})
}

// storeURLs returns the store URLs to record in an index: directories
// made absolute, so the index can be used from anywhere.
func storeURLs(urls []string) ([]string, error) {
	if len(urls) == 0 {
		urls = []string{defaultStore()}
	}
	out := make([]string, len(urls))
	for i, u := range urls {
		out[i] = u
		if !strings.Contains(u, "://") {
			abs, err := filepath.Abs(u)
			if err != nil {
				return nil, err
			}
			out[i] = abs
		}
	}
	return out, nil
}
