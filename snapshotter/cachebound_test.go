package snapshotter_test

import (
	"bufio"
	"crypto/md5"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/internal/testcache"
	"github.com/mkbootfs/mkbootfs/internal/testcri"
	"github.com/mkbootfs/mkbootfs/internal/testenv"
	"github.com/mkbootfs/mkbootfs/nodecache"
)

// The snapshotter's node cache bound.
const (
	criBound     = 24 << 20
	criBoundFlag = "24M"
	criData      = 16 << 20 // each image's own file, read whole by its pod
)

// The snapshotter's node cache, bounded by --cache-size below what two
// images read, while pods of three images (a static busybox and 16 MiB of
// random bytes of their own, their chunks in the registry next to them)
// read their file in turn, then at once, then in turn again: the cache
// never holds more than a batch (a sixteenth of the bound) past it, every
// pod reads what the image holds, and the image read last is then found
// in the cache. Each image's mount is a process of its own, with its own
// view of the cache, as on a node.
func TestCRICacheBound(t *testing.T) {
	n := startNode(t, "--cache-size", criBoundFlag)
	type image struct{ ref, md5 string }
	var imgs []image
	for i := range 3 {
		tree := t.TempDir()
		if err := os.MkdirAll(filepath.Join(tree, "bin"), 0o755); err != nil {
			t.Fatal(err)
		}
		testenv.Run(t, "cp", testenv.Command(t, "busybox"), filepath.Join(tree, "bin", "busybox"))
		data := make([]byte, criData)
		rand.Read(data)
		if err := os.WriteFile(filepath.Join(tree, "data"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		sum := md5.Sum(data)
		ref := registryRef(t, fmt.Sprintf("bound-%d:1", i))
		if out, err := exec.Command(mkbootfs(t), "convert", "dir:"+tree, ref).CombinedOutput(); err != nil {
			t.Fatalf("mkbootfs convert dir:%s %s: %v\n%s", tree, ref, err, out)
		}
		n.Pull(t, ref)
		imgs = append(imgs, image{ref, hex.EncodeToString(sum[:])})
	}
	watch := testcache.Start(filepath.Join(n.sn.root, "cache"))
	pod := n.RunPod(t, "cache-bound")
	// read starts a container that reads img's file. The mounts' page
	// caches would serve it again: they are dropped first, as memory
	// pressure would, so that it reads through the node cache.
	read := func(name string, img image) string {
		t.Helper()
		for _, m := range lazyMounts(n.sn.root) {
			dropPages(t, filepath.Join(m, "data"))
		}
		return pod.Run(t, testcri.Container{Name: name, Image: img.ref, Args: []string{"/bin/busybox", "md5sum", "/data"}})
	}
	// check waits for the container id of img and checks what it read.
	check := func(round string, id string, img image) {
		t.Helper()
		if code := n.Wait(t, id, 2*time.Minute); code != 0 || !strings.HasPrefix(n.Logs(t, id), img.md5+" ") {
			t.Fatalf("%s: %s: exit %d, logs %q; want the md5 %s; the snapshotter's log:\n%s", round, img.ref, code, n.Logs(t, id), img.md5, n.sn.log())
		}
		n.Crictl(t, "rm", id)
	}
	for r, round := range []struct {
		name     string
		together bool
	}{{"in turn", false}, {"at once", true}, {"in turn again", false}} {
		_, missesBefore := cacheCounts(t, n)
		start := time.Now()
		ids := make([]string, len(imgs))
		for i, img := range imgs {
			ids[i] = read(fmt.Sprintf("read-%d-%d", r, i), img)
			if !round.together {
				check(round.name, ids[i], img)
			}
		}
		if round.together {
			for i, img := range imgs {
				check(round.name, ids[i], img)
			}
		}
		hits, misses := cacheCounts(t, n)
		t.Logf("%s: %d pods in %v; the cache's peak so far %s; chunks found in it %d, fetched %d (so far)", round.name, len(imgs), time.Since(start).Round(time.Millisecond), nodecache.FormatSize(watch.Peak()), hits, misses)
		// 48 MiB read through a 24M cache: every round fetches again.
		if misses == missesBefore {
			t.Errorf("%s: the pods read no chunk from the stores, not through a bounded cache", round.name)
		}
	}
	// The image read last is the cache's most recently used: read again,
	// it is found there, mostly: evictions made room for it, not only
	// refused to keep it (a chunk fetched while they catch up is not kept).
	hits, misses := cacheCounts(t, n)
	last := imgs[len(imgs)-1]
	check("last again", read("read-last", last), last)
	hits2, misses2 := cacheCounts(t, n)
	if found, fetched := hits2-hits, misses2-misses; found <= fetched {
		t.Errorf("the image read last, read again: %d chunks found in the cache, %d fetched; want most found", found, fetched)
	} else {
		t.Logf("the image read last, read again: %d chunks found in the cache, %d fetched", found, fetched)
	}
	watch.Stop(t, criBound)
}

// cacheCounts returns the node cache's hits and misses of the node's
// mounts, from the snapshotter's metrics.
func cacheCounts(t *testing.T, n *node) (hits, misses int64) {
	t.Helper()
	resp, err := http.Get("http://" + n.sn.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		fmt.Sscanf(sc.Text(), "mkbootfs_snapshotter_cache_hits_total %d", &hits)
		fmt.Sscanf(sc.Text(), "mkbootfs_snapshotter_cache_misses_total %d", &misses)
	}
	return hits, misses
}

// dropPages drops the page cache of the file at p.
func dropPages(t *testing.T, p string) {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatalf("fadvise %s: %v", p, err)
	}
}
