package snapshotter

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/internal/atomicfile"
	"github.com/mkbootfs/mkbootfs/lazyfs"
)

// Bounds on a mount process's start and stop.
const (
	// mountStart bounds a mount process's start: reading the index,
	// opening the stores, fetching the first chunk (storeCheck), mounting.
	mountStart = storeCheck + 40*time.Second
	// mountStop bounds the wait for a mount process to unmount and exit
	// once told to; it is then killed and its mount detached.
	mountStop = 10 * time.Second
)

// fuseMagic is a FUSE filesystem's statfs type.
const fuseMagic = 0x65735546

// mounts are the lazy mounts of the boot snapshots, each served by a
// process of its own (ServeMount) that outlives the daemon: a restarted
// daemon finds them, alive, and takes them back, or mounts again those
// whose process is gone.
type mounts struct {
	cmd         []string      // the mount process's command; the snapshot's directory is appended
	cache       string        // the node cache
	cacheSize   int64         // its bound; 0: nodecache's default
	cacheMaxAge time.Duration // how long it keeps trees and profiles unused; 0: nodecache's default
	hostsDir    string        // containerd's hosts configuration; "": none
	log         *log.Logger

	mu    sync.Mutex
	m     map[string]*lazyMount // by snapshot ID
	early map[string]bool       // images whose prefetch before the mount runs
	// What the prefetches before the mounts fetched, for metrics.
	earlyStores            map[string]*storeStats // by store URL
	earlyHits, earlyMisses int64
}

// lazyMount is one boot snapshot's mount.
type lazyMount struct {
	dir   string        // snapshots/ID
	image string        // the boot image, for messages
	turn  chan struct{} // held by whoever starts or stops the mount
}

func (ms *mounts) add(id, dir, image string) *lazyMount {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	if lm, ok := ms.m[id]; ok {
		return lm
	}
	lm := &lazyMount{dir: dir, image: image, turn: make(chan struct{}, 1)}
	ms.m[id] = lm
	return lm
}

func (ms *mounts) get(id string) *lazyMount {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	return ms.m[id]
}

// forget drops the mount of a snapshot that is gone.
func (ms *mounts) forget(id string) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	delete(ms.m, id)
}

// all returns the mounts by snapshot ID.
func (ms *mounts) all() map[string]*lazyMount {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	out := make(map[string]*lazyMount, len(ms.m))
	for id, lm := range ms.m {
		out[id] = lm
	}
	return out
}

func (lm *lazyMount) point() string         { return filepath.Join(lm.dir, lazyDir) }
func (lm *lazyMount) state(f string) string { return filepath.Join(lm.dir, stateDir, f) }

// take waits for lm's turn, at most until ctx ends.
func (lm *lazyMount) take(ctx context.Context) error {
	select {
	case lm.turn <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s: waiting for its mount: %w", lm.image, ctx.Err())
	}
}

func (lm *lazyMount) give() { <-lm.turn }

// pid returns the pid of lm's mount process when it runs, else 0.
func (lm *lazyMount) pid() int {
	b, err := os.ReadFile(lm.state(pidFile))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	// The pid of a process that is gone may be another's now.
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !bytes.Contains(cmdline, []byte("\x00"+lm.dir+"\x00")) {
		return 0
	}
	return pid
}

// alive reports whether lm is mounted and served.
func (lm *lazyMount) alive() bool {
	if lm.pid() == 0 {
		return false
	}
	var st unix.Statfs_t
	return unix.Statfs(lm.point(), &st) == nil && st.Type == fuseMagic
}

// ensure mounts lm unless it is mounted and served: by a new mount
// process, waiting for it to say it is mounted (at most until ctx ends,
// or mountStart).
func (ms *mounts) ensure(ctx context.Context, lm *lazyMount) error {
	if err := lm.take(ctx); err != nil {
		return err
	}
	defer lm.give()
	if lm.alive() {
		return nil
	}
	return ms.start(ctx, lm)
}

// start starts lm's mount process and waits for its word.
func (ms *mounts) start(ctx context.Context, lm *lazyMount) error {
	// A mount whose process was killed answers ENOTCONN: detach it.
	if _, err := lazyfs.RecoverStale(lm.point()); err != nil {
		return err
	}
	cfg, err := json.Marshal(mountConfig{Image: lm.image, Cache: ms.cache, CacheSize: ms.cacheSize, CacheMaxAge: ms.cacheMaxAge, HostsDir: ms.hostsDir})
	if err != nil {
		return err
	}
	if err := atomicfile.Write(lm.state(configFile), cfg, 0o644); err != nil {
		return err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	cmd := exec.Command(ms.cmd[0], append(ms.cmd[1:], lm.dir)...)
	cmd.ExtraFiles = []*os.File{w}
	// A session of its own: no signal to the daemon's process group, nor
	// the end of its terminal, reaches it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	w.Close()
	if err != nil {
		return fmt.Errorf("%s: starting its mount process: %w", lm.image, err)
	}
	go cmd.Wait() // reaped while this daemon lives; init reaps it after
	word := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(r, 4096))
		word <- strings.TrimSpace(string(b))
	}()
	ctx, cancel := context.WithTimeout(ctx, mountStart)
	defer cancel()
	select {
	case s := <-word:
		if s == "ok" {
			ms.log.Printf("mounted %s at %s (mount process %d)", lm.image, lm.point(), cmd.Process.Pid)
			return nil
		}
		if s == "" {
			s = "its mount process exited; see " + lm.state(logFile)
		}
		return errors.New(s)
	case <-ctx.Done():
		cmd.Process.Kill()
		unix.Unmount(lm.point(), unix.MNT_DETACH)
		return fmt.Errorf("%s: not mounted within %v (its stores are slow or unreachable; see %s)", lm.image, mountStart, lm.state(logFile))
	}
}

// stop unmounts lm: its mount process unmounts it (detaches it, should a
// file be open there) and exits; one that does not within mountStop is
// killed, and the mount detached.
func (ms *mounts) stop(lm *lazyMount) {
	lm.take(context.Background())
	defer lm.give()
	pid := lm.pid()
	if pid != 0 {
		unix.Kill(pid, unix.SIGTERM)
		deadline := time.Now().Add(mountStop)
		for lm.pid() != 0 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if lm.pid() != 0 {
			ms.log.Printf("%s: its mount process %d did not stop within %v; killed", lm.image, pid, mountStop)
			unix.Kill(pid, unix.SIGKILL)
		}
	}
	var st unix.Statfs_t
	if err := unix.Statfs(lm.point(), &st); err != nil || st.Type == fuseMagic {
		unix.Unmount(lm.point(), unix.MNT_DETACH)
	}
}
