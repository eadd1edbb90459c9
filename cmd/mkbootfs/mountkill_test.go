package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/internal/fusectl"
	"github.com/mkbootfs/mkbootfs/internal/testenv"
	"github.com/mkbootfs/mkbootfs/internal/testserver"
	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/local"
)

// readerBound is how long a reader of a mount whose server was killed may
// take to end.
const readerBound = 10 * time.Second

// procState returns the state letter of process pid (R, S, D, Z...), ""
// once it is gone.
func procState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	_, rest, ok := strings.Cut(string(b), ") ")
	if !ok || rest == "" {
		return ""
	}
	return rest[:1]
}

// reader is a process reading files through a mount.
type reader struct {
	cmd    *exec.Cmd
	done   chan error
	stderr bytes.Buffer
}

func startReader(t *testing.T, name string, args ...string) *reader {
	t.Helper()
	r := &reader{cmd: exec.Command(name, args...), done: make(chan error, 1)}
	// A pipe, not /dev/null: GNU tar reads no file data for /dev/null.
	r.cmd.Stdout, r.cmd.Stderr = io.Discard, &r.stderr
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.done <- r.cmd.Wait() }()
	t.Cleanup(func() { r.cmd.Process.Kill() })
	return r
}

// killMount kills the mount's process with SIGKILL, then waits, each wait
// bounded, for it and for every reader to end: a reader that does not is
// stuck on the dead mount (its state, D for uninterruptible sleep, is in
// the failure), and the mount's FUSE connection is aborted so that the
// test ends. It returns the readers' errors.
func killMount(t *testing.T, m *mountProc, readers []*reader) []error {
	t.Helper()
	// A failed check below must not leave the dead mount behind.
	t.Cleanup(func() { unix.Unmount(m.mnt, unix.MNT_DETACH) })
	conn, ok, err := fusectl.Lookup(fusectl.MountedAt(os.Getpid(), m.mnt))
	if err != nil || !ok {
		t.Fatalf("no FUSE connection found for the mount at %s (%v)", m.mnt, err)
	}
	abort := func() {
		if err := fusectl.Abort(conn); err != nil {
			t.Errorf("aborting %v: %v", conn, err)
		}
	}
	m.cmd.Process.Kill()
	if ended, _ := waitBounded(m.done); !ended {
		t.Errorf("the mount's process (state %s) still runs %v after SIGKILL; aborting its %v", procState(m.cmd.Process.Pid), readerBound, conn)
		abort()
		if ended, _ := waitBounded(m.done); !ended {
			t.Fatalf("the mount's process (state %s) still runs after its FUSE connection was aborted", procState(m.cmd.Process.Pid))
		}
	}
	errs := make([]error, len(readers))
	deadline := time.Now().Add(readerBound)
	for i, r := range readers {
		select {
		case errs[i] = <-r.done:
			continue
		case <-time.After(time.Until(deadline)):
		}
		t.Errorf("%s still runs (state %s) %v after the mount's process was killed: stuck on the dead mount; aborting its FUSE connection %s",
			strings.Join(r.cmd.Args, " "), procState(r.cmd.Process.Pid), readerBound, conn)
		abort()
		var ended bool
		if ended, errs[i] = waitBounded(r.done); !ended {
			t.Fatalf("%s (state %s) still runs after the FUSE connection was aborted", strings.Join(r.cmd.Args, " "), procState(r.cmd.Process.Pid))
		}
	}
	return errs
}

// waitBounded waits at most readerBound for a process's end.
func waitBounded(done <-chan error) (ended bool, err error) {
	select {
	case err := <-done:
		return true, err
	case <-time.After(readerBound):
		return false, nil
	}
}

// checkDeadMount checks that the mount at mnt answers "transport endpoint
// is not connected" and that `umount -l` clears it, as the README says.
func checkDeadMount(t *testing.T, mnt string) {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(mnt, &st); !errors.Is(err, syscall.ENOTCONN) {
		t.Errorf("statfs of the dead mount %s: %v, want ENOTCONN", mnt, err)
	}
	if out, err := exec.Command("umount", "-l", mnt).CombinedOutput(); err != nil {
		t.Fatalf("umount -l %s: %v: %s", mnt, err, out)
	}
	if err := unix.Statfs(mnt, &st); err != nil || st.Type == unix.FUSE_SUPER_MAGIC {
		t.Errorf("after umount -l, %s: %v, FUSE %v", mnt, err, st.Type == unix.FUSE_SUPER_MAGIC)
	}
}

// TestMountKilledWhileReadsWait kills `mkbootfs mount` with SIGKILL while
// readers wait in reads whose chunks a stopped (SIGSTOP) store never
// sends: every reader gets an error within readerBound, none is left in
// uninterruptible sleep (D), and the dead mount is cleared by `umount -l`.
func TestMountKilledWhileReadsWait(t *testing.T) {
	testenv.FUSE(t)
	testenv.Root(t)
	src, storeDir := t.TempDir(), t.TempDir()
	os.MkdirAll(filepath.Join(src, "etc"), 0o755)
	os.WriteFile(filepath.Join(src, "etc/motd"), []byte("hello\n"), 0o644)
	big := make([]byte, 8<<20)
	rand.Read(big)
	os.WriteFile(filepath.Join(src, "big"), big, 0o644)
	idx := filepath.Join(t.TempDir(), "tree.idx")
	convertCLI(t, "--store", storeDir, "--index", idx, "dir:"+src)

	addr := testserver.FreePort(t)
	srv := serveAt(t, addr, storeDir)
	m := startMount(t, idx, "etc/motd", "--store", "http://"+addr+"/", "--cache", t.TempDir())
	if err := srv.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Signal(syscall.SIGCONT) })

	readers := []*reader{
		startReader(t, "cat", filepath.Join(m.mnt, "big")),
		startReader(t, "tail", "-c", "1", filepath.Join(m.mnt, "big")),
		startReader(t, "cat", filepath.Join(m.mnt, "etc/motd")),
	}
	// Each waits in a read for a chunk the stopped store does not send.
	time.Sleep(time.Second)
	for _, r := range readers {
		if len(r.done) > 0 {
			t.Fatalf("%s ended while the store was stopped: %v; %s", strings.Join(r.cmd.Args, " "), <-r.done, &r.stderr)
		}
	}
	errs := killMount(t, m, readers)
	for i, r := range readers {
		if errs[i] == nil {
			t.Errorf("%s succeeded through a mount whose store sent nothing", strings.Join(r.cmd.Args, " "))
		}
		t.Logf("%s: %v: %s", strings.Join(r.cmd.Args, " "), errs[i], strings.TrimSpace(r.stderr.String()))
	}
	checkDeadMount(t, m.mnt)
}

// TestMountKillSweep kills `mkbootfs mount` with SIGKILL at steps through
// a full read of the Debian /usr/bin and /usr/sbin (27 MB) by four
// readers: each time every reader ends
// within readerBound (read whole, or with an error), none is left in
// uninterruptible sleep, and `umount -l` clears the dead mount; every
// chunk the killed mounts left in their cache verifies.
func TestMountKillSweep(t *testing.T) {
	testenv.FUSE(t)
	testenv.Root(t)
	debian := testenv.DebianRootfs(t)
	// The part of the tree the readers read.
	base := t.TempDir()
	os.MkdirAll(filepath.Join(base, "usr"), 0o755)
	os.MkdirAll(filepath.Join(base, "etc"), 0o755)
	for _, d := range []string{"usr/bin", "usr/sbin", "etc/debian_version"} {
		if out, err := exec.Command("cp", "-a", filepath.Join(debian, d), filepath.Join(base, d)).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v: %s", err, out)
		}
	}
	storeDir, cache := t.TempDir(), t.TempDir()
	idx := filepath.Join(t.TempDir(), "debian.idx")
	runBuilt(t, "convert", "--store", storeDir, "--index", idx, "dir:"+base)
	addr := testserver.FreePort(t)
	serveAt(t, addr, storeDir)
	readAll := func(mnt string) []*reader {
		var rs []*reader
		for _, d := range []string{"usr/bin", "usr/sbin"} {
			rs = append(rs, startReader(t, "tar", "-C", mnt, "-cf", "-", d))
			rs = append(rs, startReader(t, "sh", "-c", "cat "+filepath.Join(mnt, d)+"/*"))
		}
		return rs
	}
	start := time.Now()
	for _, after := range []time.Duration{0, 100 * time.Millisecond, 300 * time.Millisecond, time.Second} {
		m := startMount(t, idx, "etc/debian_version", "--store", "http://"+addr+"/", "--cache", cache)
		readers := readAll(m.mnt)
		time.Sleep(after)
		errs := killMount(t, m, readers)
		failed := 0
		for _, err := range errs {
			if err != nil {
				failed++
			}
		}
		t.Logf("killed %v into the read: %d of %d readers got an error", after, failed, len(readers))
		checkDeadMount(t, m.mnt)
	}
	t.Logf("kills in %v", time.Since(start).Round(time.Millisecond))
	// Nothing the killed mounts left in the cache is wrong: every chunk
	// verifies, and a new mount over it reads right.
	c, err := local.Open(cache, false)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	err = c.Walk(func(id store.ID) error {
		n++
		_, err := store.Load(context.Background(), c, id)
		return err
	})
	if err != nil || n == 0 {
		t.Fatalf("the cache the killed mounts left (%d chunks): %v", n, err)
	}
	m := startMount(t, idx, "etc/debian_version", "--store", "http://"+addr+"/", "--cache", cache)
	for _, rel := range []string{"usr/bin/apt-get", "usr/bin/bash", "usr/sbin/ldconfig"} {
		want, err := fileMD5(filepath.Join(base, rel))
		if err != nil {
			t.Fatal(err)
		}
		if got, err := fileMD5(filepath.Join(m.mnt, rel)); got != want || err != nil {
			t.Errorf("%s after the killed mounts: %s, %v; want %s", rel, got, err, want)
		}
	}
	m.stop(t, syscall.SIGTERM)
	t.Logf("%d chunks in the cache verify", n)
}
