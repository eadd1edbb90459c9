package bootinit_test

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mkbootfs/mkbootfs/internal/testcache"
	"github.com/mkbootfs/mkbootfs/internal/testenv"
	"github.com/mkbootfs/mkbootfs/nodecache"
	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/local"
)

const (
	boundImages  = 5
	boundData    = 40 << 20 // each image's own files, read whole by its app
	boundSize    = 100 << 20
	boundSizeEnv = "100M"
)

// boundImage is a Debian variant: the minbase rootfs (hard links) and
// boundData of its own under /opt/data.
type boundImage struct {
	ref string
	md5 string // of its /opt/data files, catenated in name order
}

// boundImages makes the variants, converted into one store, served over
// HTTP on loopback (a local store would not go through the cache).
func boundImagesAndStore(t *testing.T) ([]boundImage, string) {
	t.Helper()
	testenv.Root(t)
	testenv.FUSE(t)
	testenv.Docker(t)
	base := testenv.DebianRootfs(t)
	work := t.TempDir()
	storeDir := filepath.Join(work, "store")
	imgs := make([]boundImage, boundImages)
	for i := range imgs {
		tree := filepath.Join(work, fmt.Sprintf("tree%d", i))
		if out, err := exec.Command("cp", "-al", base, tree).CombinedOutput(); err != nil {
			t.Fatalf("cp -al %s: %v\n%s", base, err, out)
		}
		data := filepath.Join(tree, "opt/data")
		os.MkdirAll(data, 0o755)
		rng := rand.New(rand.NewPCG(uint64(i), 77))
		h := md5.New()
		for f := range 10 {
			b := make([]byte, boundData/10)
			for j := 0; j < len(b); j += 8 {
				v := rng.Uint64()
				for k := range 8 {
					b[j+k] = byte(v >> (8 * k))
				}
			}
			h.Write(b)
			if err := os.WriteFile(filepath.Join(data, fmt.Sprintf("part%d", f)), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		imgs[i] = boundImage{
			ref: fmt.Sprintf("mkbootfs-test/bound:%d-%d", i, os.Getpid()),
			md5: hex.EncodeToString(h.Sum(nil)),
		}
		if err := convertInto(work, "dir:"+tree, imgs[i].ref, storeDir); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { exec.Command("docker", "rmi", "-f", imgs[i].ref).Run() })
	}
	_, addr := serveCounting(t, storeDir)
	return imgs, "http://" + addr + "/"
}

// A node cache bounded to 100 MB while five Debian variants of 246 MB,
// each reading 40 MB of its own, start in turn, then at once, then in turn
// again: the volume never holds more than a batch (a sixteenth) past the
// bound, every container exits 0 with the right output, and what the
// cache holds is sound.
func TestCacheBound(t *testing.T) {
	imgs, storeURL := boundImagesAndStore(t)
	vol := fmt.Sprintf("mkbootfs-test-bound-%d", os.Getpid())
	docker(t, "volume", "rm", "-f", vol)
	t.Cleanup(func() { docker(t, "volume", "rm", "-f", vol) })
	if r := docker(t, "volume", "create", vol); r.code != 0 {
		t.Fatal(r.stderr)
	}
	mnt := strings.TrimSpace(docker(t, "volume", "inspect", "-f", "{{.Mountpoint}}", vol).stdout)

	watch := testcache.Start(mnt)
	runOne := func(img boundImage) error {
		r := docker(t, "run", "--rm", "--network", "host", "--device", "/dev/fuse", "--cap-add", "SYS_ADMIN",
			"-e", "MKBOOTFS_STORE="+storeURL, "-e", "MKBOOTFS_CACHE_SIZE="+boundSizeEnv, "-v", vol+":/.bootfs/cache",
			img.ref, "/bin/sh", "-c", "cat /opt/data/part0 /opt/data/part1 /opt/data/part2 /opt/data/part3 /opt/data/part4 /opt/data/part5 /opt/data/part6 /opt/data/part7 /opt/data/part8 /opt/data/part9 | md5sum")
		if r.code != 0 || !strings.HasPrefix(r.stdout, img.md5+" ") {
			return fmt.Errorf("%s: exit %d, stdout %q (want %s), stderr:\n%s", img.ref, r.code, r.stdout, img.md5, r.stderr)
		}
		return nil
	}
	rounds := []struct {
		name     string
		together bool
	}{{"in turn", false}, {"at once", true}, {"in turn again", false}}
	for _, round := range rounds {
		start := time.Now()
		var wg sync.WaitGroup
		for _, img := range imgs {
			if !round.together {
				if err := runOne(img); err != nil {
					t.Fatalf("%s: %v", round.name, err)
				}
				continue
			}
			wg.Go(func() {
				if err := runOne(img); err != nil {
					t.Errorf("%s: %v", round.name, err)
				}
			})
		}
		wg.Wait()
		t.Logf("%s: %d containers in %v; the volume's peak so far %s", round.name, len(imgs), time.Since(start).Round(time.Millisecond), nodecache.FormatSize(watch.Peak()))
	}
	watch.Stop(t, boundSize)
	// What is left is sound: every chunk verifies.
	l, err := local.Open(mnt, false)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	err = l.Walk(func(id store.ID) error {
		n++
		_, err := store.Load(context.Background(), l, id)
		return err
	})
	if err != nil {
		t.Errorf("a chunk in the cache volume: %v", err)
	}
	u, _ := nodecache.Du(context.Background(), mnt)
	t.Logf("left %d chunks, %s", n, nodecache.FormatSize(u.Total))
}

// A bad MKBOOTFS_CACHE_SIZE or MKBOOTFS_CACHE_MAX_AGE stops the boot with
// one line saying what to give.
func TestBadCacheEnv(t *testing.T) {
	_, boot, _ := converted(t)
	for _, tc := range []struct{ env, value, want string }{
		{"MKBOOTFS_CACHE_SIZE", "lots", `MKBOOTFS_CACHE_SIZE="lots": want a size of 1M or more`},
		{"MKBOOTFS_CACHE_SIZE", "10K", `MKBOOTFS_CACHE_SIZE="10K": want a size of 1M or more`},
		{"MKBOOTFS_CACHE_SIZE", "-1G", `MKBOOTFS_CACHE_SIZE="-1G": want a size of 1M or more`},
		{"MKBOOTFS_CACHE_MAX_AGE", "7d", `MKBOOTFS_CACHE_MAX_AGE: max age "7d": want a duration above 0`},
		{"MKBOOTFS_CACHE_MAX_AGE", "0", `MKBOOTFS_CACHE_MAX_AGE: max age "0": want a duration above 0`},
	} {
		r := docker(t, "run", "--rm", "--network", "host", "--device", "/dev/fuse", "--cap-add", "SYS_ADMIN",
			"-e", "MKBOOTFS_STORE=http://127.0.0.1:1/", "-e", tc.env+"="+tc.value, boot, "true")
		if r.code != 125 || !strings.Contains(r.stderr, tc.want) || strings.Count(strings.TrimSpace(r.stderr), "\n") > 0 {
			t.Errorf("%s=%s: exit %d, stderr %q; want 125 and one line with %q", tc.env, tc.value, r.code, r.stderr, tc.want)
		}
	}
}

// MKBOOTFS_CACHE_MAX_AGE is how long the node cache keeps the boot trees
// and learned profiles no start used. Another image's tree and profile
// last used 3 hours ago, and a profile used 30 minutes ago: a start with
// MKBOOTFS_CACHE_MAX_AGE=1h removes the first two, keeps the third. The
// volume is new, so the start's evictor sweeps within its first second (a
// node sweeps at most every ten minutes).
func TestCacheMaxAgeEnv(t *testing.T) {
	_, boot, storeDir := converted(t)
	_, addr := serveCounting(t, storeDir)
	vol, dir := learnVolume(t, "max-age")
	const old, young = "other-image", "recent-image"
	tree := nodecache.TreeDir(dir, old)
	if err := os.MkdirAll(filepath.Join(tree, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "etc", "os-release"), []byte("ID=other\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := nodecache.TreeMade(dir, old, "other:1"); err != nil {
		t.Fatal(err)
	}
	for name, age := range map[string]time.Duration{old: 3 * time.Hour, young: 30 * time.Minute} {
		if err := nodecache.SaveProfile(dir, name, name+":1", []byte("mkbootfs profile 1\n\"/etc/os-release\" 0+10\n")); err != nil {
			t.Fatal(err)
		}
		touchAgo(t, nodecache.ProfilePath(dir, name), age)
	}
	// A tree's last use is its lock file's mtime.
	if err := os.WriteFile(nodecache.TreeLock(dir, old), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	touchAgo(t, nodecache.TreeLock(dir, old), 3*time.Hour)

	name := fmt.Sprintf("mkbootfs-test-max-age-%d", os.Getpid())
	start(t, name, append(httpStore(addr), "-e", "MKBOOTFS_CACHE_MAX_AGE=1h", "-e", "MKBOOTFS_LEARN=off", "-v", vol+":/.bootfs/cache", boot, "sleep", "600")...)
	gone := func(p string) bool { _, err := os.Lstat(p); return errors.Is(err, fs.ErrNotExist) }
	deadline := time.Now().Add(time.Minute)
	for !gone(tree) || !gone(nodecache.ProfilePath(dir, old)) {
		if time.Now().After(deadline) {
			u, _ := nodecache.Du(context.Background(), dir)
			t.Fatalf("a minute into a start with MKBOOTFS_CACHE_MAX_AGE=1h, the tree and profile unused for 3 hours are still there: %+v; logs:\n%s", u, docker(t, "logs", name).stderr)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if gone(nodecache.ProfilePath(dir, young)) {
		t.Error("the profile used 30 minutes ago was removed under MKBOOTFS_CACHE_MAX_AGE=1h")
	}
}

// touchAgo sets the mtime of the file at p to age ago.
func touchAgo(t *testing.T, p string, age time.Duration) {
	t.Helper()
	then := time.Now().Add(-age)
	if err := os.Chtimes(p, then, then); err != nil {
		t.Fatal(err)
	}
}
