package main

import (
	"crypto/md5"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mkbootfs/mkbootfs/internal/testenv"
	"github.com/mkbootfs/mkbootfs/internal/testserver"
)

// serveAt runs `mkbootfs serve --http addr dir` and waits until it
// accepts connections; it is killed when the test ends.
func serveAt(t *testing.T, addr, dir string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "serve", "--http", addr, dir)
	cmd.Env = append(os.Environ(), envRunMain+"=1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return cmd
		}
		if time.Now().After(deadline) {
			t.Fatalf("mkbootfs serve on %s never listened", addr)
		}
	}
}

func fileMD5(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := md5.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return fmt.Sprintf("%x", h.Sum(nil)), nil
}

// A store killed during a full read of /usr through `mkbootfs mount`, and
// started again 8 s later, costs the reads a delay and never an error:
// every file's md5 equals the original's.
func TestMountRidesThroughStoreRestart(t *testing.T) {
	testenv.FUSE(t)
	base := testenv.DebianRootfs(t)
	storeDir := t.TempDir()
	idx := filepath.Join(t.TempDir(), "debian.idx")
	runBuilt(t, "convert", "--store", storeDir, "--index", idx, "dir:"+base)

	want := map[string]string{}
	err := filepath.WalkDir(filepath.Join(base, "usr"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			rel, _ := filepath.Rel(base, p)
			want[rel], err = fileMD5(p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}

	addr := testserver.FreePort(t)
	srv := serveAt(t, addr, storeDir)
	m := startMount(t, idx, "etc/debian_version", "--store", "http://"+addr+"/", "--cache", t.TempDir(), "--stats")

	files := make(chan string)
	var read atomic.Int64
	var mu sync.Mutex
	var bad []string
	var readers sync.WaitGroup
	for range 4 {
		readers.Go(func() {
			for rel := range files {
				got, err := fileMD5(filepath.Join(m.mnt, rel))
				read.Add(1)
				if err != nil || got != want[rel] {
					mu.Lock()
					bad = append(bad, fmt.Sprintf("%s: %s, %v", rel, got, err))
					mu.Unlock()
				}
			}
		})
	}
	restarted := make(chan time.Duration, 1)
	go func() {
		for read.Load() < int64(len(want)/10) {
			time.Sleep(5 * time.Millisecond)
		}
		srv.Process.Signal(syscall.SIGKILL)
		srv.Wait()
		down := time.Now()
		time.Sleep(8 * time.Second)
		serveAt(t, addr, storeDir)
		restarted <- time.Since(down)
	}()
	start := time.Now()
	for rel := range want {
		files <- rel
	}
	close(files)
	readers.Wait()
	took := time.Since(start)
	var down time.Duration
	select {
	case down = <-restarted:
	default:
		t.Fatalf("the read of %d files ended in %v, before the store came back: nothing rode through", len(want), took)
	}
	m.stop(t, syscall.SIGTERM)
	if len(bad) > 0 {
		t.Fatalf("%d of %d files read wrong while the store restarted:\n%v\nmount's stderr:\n%s", len(bad), len(want), bad[:min(len(bad), 10)], &m.stderr)
	}
	t.Logf("%d files of /usr read right in %v, the store down for %v; %s", len(want), took.Round(time.Millisecond), down.Round(time.Millisecond), &m.stdout)
}
