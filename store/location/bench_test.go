package location_test

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/folbricht/desync"
	"golang.org/x/sync/errgroup"

	"github.com/mkbootfs/mkbootfs/internal/testserver"
	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/local"
	"github.com/mkbootfs/mkbootfs/store/location"
	"github.com/mkbootfs/mkbootfs/store/storetest"
)

// Fetch parameters: chunks of the chunker's average size, fetched the way
// lazyfs reads ahead, a bounded number at a time.
const (
	benchChunks   = 512
	benchSize     = 64 << 10
	benchParallel = 16
)

// fetchAll runs get on every id, benchParallel at a time.
func fetchAll(ids []store.ID, get func(store.ID) error) error {
	var g errgroup.Group
	g.SetLimit(benchParallel)
	for _, id := range ids {
		g.Go(func() error { return get(id) })
	}
	return g.Wait()
}

// BenchmarkFetch reads every chunk of a store, decompressed and verified,
// through each kind of location on loopback. It reports chunks/s and MB/s
// (of uncompressed data), and its speed relative to desync reading the
// same server the same way (x_desync) and to our reading of the local
// directory (x_local); above 1 means faster than that peer.
func BenchmarkFetch(b *testing.B) {
	ctx := context.Background()
	l := openLocal(b)
	ids := make([]store.ID, benchChunks)
	for i := range ids {
		id, _, err := store.Save(ctx, l, storetest.Chunk(uint64(i), benchSize))
		if err != nil {
			b.Fatal(err)
		}
		ids[i] = id
	}
	desync.Digest = desync.SHA256{}
	sshd := testserver.StartSSHD(b)
	ours := testserver.SSH(b, l.Dir(), false)
	httpOurs := testserver.HTTP(b, l, false)
	nginx := testserver.Nginx(b, l.Dir(), false)
	reg := testserver.StartDockerRegistry(b, testserver.RegistryOptions{})
	oci := ociCopy(b, l, reg.Addr)
	for _, tc := range []struct {
		name string
		url  string
		opt  location.Options
		peer func(b *testing.B) desync.Store
	}{
		{name: "local", url: l.Dir(), peer: func(b *testing.B) desync.Store {
			s, err := desync.NewLocalStore(l.Dir(), desync.StoreOptions{})
			if err != nil {
				b.Fatal(err)
			}
			return s
		}},
		{name: "http-ours", url: httpOurs, peer: desyncHTTP(httpOurs)},
		{name: "http-nginx", url: nginx, peer: desyncHTTP(nginx)},
		{name: "ssh-openssh", url: "ssh://root@" + sshd.Addr + l.Dir(),
			opt:  location.Options{SSHKey: sshd.ClientKey.File, KnownHosts: sshd.KnownHosts},
			peer: desyncSFTP(sshd, l.Dir())},
		{name: "ssh-ours", url: "ssh://any@" + ours.Addr + "/",
			opt:  location.Options{SSHKey: ours.ClientKey.File, KnownHosts: ours.KnownHosts},
			peer: desyncSFTP(ours, "/")},
		{name: "oci-docker-registry", url: oci, peer: desyncOCI(reg.Addr, l, ids)},
	} {
		b.Run(tc.name, func(b *testing.B) {
			tc.opt.Parallelism = benchParallel
			s, err := location.OpenList(ctx, []string{tc.url}, tc.opt)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			peer := tc.peer(b)
			defer peer.Close()
			load := func(s store.Store) func() error {
				return func() error {
					return fetchAll(ids, func(id store.ID) error { _, err := store.Load(ctx, s, id); return err })
				}
			}
			ours, local := load(s), load(l)
			theirs := func() error {
				return fetchAll(ids, func(id store.ID) error { _, err := peer.GetChunk(desync.ChunkID(id)); return err })
			}
			// Each round times ours, desync and the local directory back to
			// back, so that load from elsewhere on the machine hits all three.
			var tTheirs, tLocal time.Duration
			timed := func(fn func() error, sum *time.Duration) {
				start := time.Now()
				if err := fn(); err != nil {
					b.Fatal(err)
				}
				*sum += time.Since(start)
			}
			var warm time.Duration
			timed(ours, &warm) // connect, warm the page cache
			timed(theirs, &warm)
			b.SetBytes(benchChunks * benchSize)
			b.ResetTimer()
			for range b.N {
				if err := ours(); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				timed(theirs, &tTheirs)
				timed(local, &tLocal)
				b.StartTimer()
			}
			b.StopTimer()
			tOurs := b.Elapsed()
			b.ReportMetric(float64(b.N*benchChunks)/tOurs.Seconds(), "chunks/s")
			b.ReportMetric(tTheirs.Seconds()/tOurs.Seconds(), "x_desync")
			b.ReportMetric(tLocal.Seconds()/tOurs.Seconds(), "x_local")
		})
	}
}

func desyncHTTP(u string) func(b *testing.B) desync.Store {
	return func(b *testing.B) desync.Store {
		pu, err := url.Parse(u)
		if err != nil {
			b.Fatal(err)
		}
		s, err := desync.NewRemoteHTTPStore(pu, desync.StoreOptions{N: benchParallel, Timeout: time.Minute})
		if err != nil {
			b.Fatal(err)
		}
		return s
	}
}

// desyncSFTP runs desync's SFTP store, which runs ssh(1) once per
// connection, through a wrapper that gives ssh the port, key and
// known_hosts.
func desyncSFTP(srv *testserver.SSHD, dir string) func(b *testing.B) desync.Store {
	return func(b *testing.B) desync.Store {
		_, port, _ := net.SplitHostPort(srv.Addr)
		wrapper := filepath.Join(b.TempDir(), "ssh")
		script := fmt.Sprintf("#!/bin/sh\nexec ssh -p %s -i %s -o UserKnownHostsFile=%s -o BatchMode=yes -o StrictHostKeyChecking=yes \"$@\"\n",
			port, srv.ClientKey.File, srv.KnownHosts)
		if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
			b.Fatal(err)
		}
		b.Setenv("CASYNC_SSH_PATH", wrapper)
		u := &url.URL{Scheme: "sftp", User: url.User(srv.User), Host: "127.0.0.1", Path: filepath.Clean(dir) + "/"}
		s, err := desync.NewSFTPStore(u, desync.StoreOptions{N: benchParallel})
		if err != nil {
			b.Fatal(err)
		}
		return s
	}
}

// desyncOCI fills a repository of the registry with desync's OCI store
// (a manifest tagged with the chunk ID per chunk: two requests a read)
// and reads it with that store.
func desyncOCI(registry string, l *local.Store, ids []store.ID) func(b *testing.B) desync.Store {
	return func(b *testing.B) desync.Store {
		u := &url.URL{Scheme: "oci+http", Host: registry, Path: "/desync"}
		s, err := desync.NewOCIStore(u, nil, desync.StoreOptions{N: benchParallel, Timeout: time.Minute})
		if err != nil {
			b.Fatal(err)
		}
		err = fetchAll(ids, func(id store.ID) error {
			data, err := store.Load(context.Background(), l, id)
			if err != nil {
				return err
			}
			return s.StoreChunk(desync.NewChunk(data))
		})
		if err != nil {
			b.Fatal(err)
		}
		return s
	}
}
