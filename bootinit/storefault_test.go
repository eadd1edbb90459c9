package bootinit_test

import (
	"context"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mkbootfs/mkbootfs/bootimage"
	"github.com/mkbootfs/mkbootfs/internal/testserver"
	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/httpstore"
	"github.com/mkbootfs/mkbootfs/store/local"
)

// envServe makes the test binary a store server of its own process: "ADDR
// DIR DELAY" serves the directory store DIR over HTTP at ADDR, each answer
// after DELAY, as `mkbootfs serve --http` does. A process, so that a test
// can stop (SIGSTOP) or kill it.
const envServe = "MKBOOTFS_TEST_SERVE_STORE"

func init() {
	v := os.Getenv(envServe)
	if v == "" {
		return
	}
	var addr, dir string
	var delay time.Duration
	if _, err := fmt.Sscan(v, &addr, &dir, &delay); err != nil {
		fmt.Fprintf(os.Stderr, "%s=%q: %v\n", envServe, v, err)
		os.Exit(2)
	}
	s, err := local.Open(dir, false)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	h := httpstore.NewHandler(s, httpstore.HandlerOptions{})
	err = http.ListenAndServe(addr, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(delay)
		h.ServeHTTP(w, r)
	}))
	fmt.Fprintln(os.Stderr, err)
	os.Exit(2)
}

// serveProcess serves the store in dir at addr from a process of its own,
// each answer after delay, until the test ends or it is killed.
func serveProcess(t *testing.T, addr, dir string, delay time.Duration) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %s %s", envServe, addr, dir, delay))
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGCONT)
		cmd.Process.Kill()
		cmd.Wait()
	})
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return cmd
		}
		if time.Now().After(deadline) {
			t.Fatalf("the store server on %s never listened", addr)
		}
	}
}

// running reports whether the container runs.
func running(t *testing.T, name string) bool {
	t.Helper()
	return docker(t, "inspect", "-f", "{{.State.Running}}", name).stdout == "true\n"
}

// TestStoppedStore stops the store's process (SIGSTOP) while the app reads
// through the lazy mount: docker stop ends the container with the app's
// SIGTERM (143) before its 10 s timeout and SIGKILL (137); bootinit
// cancels the fetches the stopped store never answers rather than wait for
// their 30 s timeout.
func TestStoppedStore(t *testing.T) {
	_, boot, storeDir := converted(t)
	addr := testserver.FreePort(t)
	srv := serveProcess(t, addr, storeDir, 50*time.Millisecond)
	name := "mkbootfs-e2e-stopped-store"
	start(t, name, "--network", "host", "--device", "/dev/fuse", "--cap-add", "SYS_ADMIN", "-e", "MKBOOTFS_STORE=http://"+addr,
		boot, "sh", "-c", "echo reading; exec cat /usr/bin/* /usr/lib/x86_64-linux-gnu/*.so* >/dev/null")
	w := watch(t, name)
	waitForLog(t, name, "reading\n")
	if err := srv.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	if !running(t, name) {
		w.stopWatching()
		r := docker(t, "logs", name)
		t.Fatalf("the read ended before the store was stopped: stdout %q, stderr %q", r.stdout, r.stderr)
	}
	began := time.Now()
	if r := docker(t, "stop", name); r.code != 0 {
		t.Fatalf("docker stop: %s", r.stderr)
	}
	took := time.Since(began)
	w.waitExit(t, exitBound)
	if r := docker(t, "inspect", "-f", "{{.State.ExitCode}}", name); r.stdout != "143\n" {
		t.Errorf("exit code %q after docker stop (took %v), want 143: the app's SIGTERM, not docker's SIGKILL at 10 s (137); stderr: %s",
			strings.TrimSpace(r.stdout), took.Round(time.Millisecond), docker(t, "logs", name).stderr)
	}
	t.Logf("docker stop with the store stopped mid-read: %v", took.Round(time.Millisecond))
}

// TestContainerRidesThroughStoreRestart kills the store's process during a
// full read of /usr by the app and starts it again 8 s later: the app
// reads every file, each with the original's md5, and exits 0.
func TestContainerRidesThroughStoreRestart(t *testing.T) {
	orig, boot, storeDir := converted(t)
	const check = "cd /usr && find . -type f -print0 | sort -z | xargs -0 md5sum"
	want := docker(t, "run", "--rm", orig, "sh", "-c", check)
	if want.code != 0 {
		t.Fatalf("the original: exit %d, %s", want.code, want.stderr)
	}
	addr := testserver.FreePort(t)
	// Slowed down, so that the read spans the 8 s the store is down.
	const delay = 5 * time.Millisecond
	srv := serveProcess(t, addr, storeDir, delay)
	name := "mkbootfs-e2e-store-restart"
	start(t, name, "--network", "host", "--device", "/dev/fuse", "--cap-add", "SYS_ADMIN", "-e", "MKBOOTFS_STORE=http://"+addr,
		boot, "sh", "-c", "echo reading >&2; "+check)
	for i := 0; !strings.Contains(docker(t, "logs", name).stderr, "reading\n"); i++ {
		if i == 600 {
			t.Fatal("the app never started reading")
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second)
	srv.Process.Kill()
	srv.Wait()
	time.Sleep(8 * time.Second)
	if !running(t, name) {
		t.Fatalf("the read of /usr ended before the store came back: nothing rode through; stderr: %s", docker(t, "logs", name).stderr)
	}
	serveProcess(t, addr, storeDir, delay)
	began := time.Now()
	code := strings.TrimSpace(docker(t, "wait", name).stdout)
	r := docker(t, "logs", name)
	if code != "0" || r.stdout != want.stdout {
		t.Fatalf("exit %s (want 0); %d of %d md5sum lines as the original's; stderr:\n%s", code, sameLines(r.stdout, want.stdout), strings.Count(want.stdout, "\n"), r.stderr)
	}
	t.Logf("%d files of /usr read right; the read went on %v after the store came back", strings.Count(want.stdout, "\n"), time.Since(began).Round(time.Millisecond))
}

// sameLines counts the lines of got that want holds.
func sameLines(got, want string) int {
	w := map[string]bool{}
	for _, l := range strings.Split(want, "\n") {
		w[l] = true
	}
	n := 0
	for _, l := range strings.Split(got, "\n") {
		if l != "" && w[l] {
			n++
		}
	}
	return n
}

// TestDamagedChunks serves the image from a store where one chunk of each
// of three files is damaged: flipped bytes, cut short, or another chunk's
// bytes under its name. Reading those files fails with EIO, every other
// file reads right, no wrong byte reaches the app, the cache volume holds
// only chunks that verify, and a start from the sound store afterwards,
// on the same volume, reads every file right.
func TestDamagedChunks(t *testing.T) {
	orig, boot, storeDir := converted(t)
	b, err := bootimage.Read(context.Background(), "docker-daemon:"+boot)
	if err != nil {
		t.Fatal(err)
	}
	const lib = "/usr/lib/x86_64-linux-gnu/"
	damaged := []struct{ path, how string }{
		{lib + "libapt-pkg.so.6.0.0", "flipped"},
		{lib + "libstdc++.so.6.0.30", "cut short"},
		{lib + "libsystemd.so.0.35.0", "swapped"},
	}
	sound := []string{"/usr/bin/apt-get", lib + "libzstd.so.1.5.4", "/usr/bin/dpkg"}
	dir := t.TempDir()
	if out, err := exec.Command("cp", "-a", storeDir+"/.", dir).CombinedOutput(); err != nil {
		t.Fatalf("copying the store: %v: %s", err, out)
	}
	s, err := local.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	// A chunk inside each file, none of whose bytes another file has.
	inner := func(p string) store.ID {
		t.Helper()
		e, err := b.Index.Resolve(p)
		if err != nil {
			t.Fatal(err)
		}
		f, l, ok := b.Index.ChunkSpan(b.Index.Entries[e].Inode)
		if !ok || l-f < 2 {
			t.Fatalf("%s: chunks %d..%d: too few for one of its own", p, f, l)
		}
		return store.ID(b.Index.Chunks[(f+l)/2].ID)
	}
	var bad []store.ID
	for _, d := range damaged {
		id := inner(d.path)
		bad = append(bad, id)
		raw, err := os.ReadFile(s.Path(id))
		if err != nil {
			t.Fatal(err)
		}
		switch d.how {
		case "flipped":
			for k := len(raw) / 2; k < len(raw)/2+16; k++ {
				raw[k] ^= 0xff
			}
		case "cut short":
			raw = raw[:len(raw)/2]
		case "swapped":
			raw, err = os.ReadFile(s.Path(inner(sound[1])))
			if err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(s.Path(id), raw, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	vol := fmt.Sprintf("mkbootfs-e2e-damaged-%d", os.Getpid())
	t.Cleanup(func() { docker(t, "volume", "rm", "-f", vol) })
	files := append([]string{}, sound...)
	for _, d := range damaged {
		files = append(files, d.path, d.path) // a second read fails as the first
	}
	script := `for f; do md5sum "$f"; done`
	want := docker(t, append([]string{"run", "--rm", orig, "sh", "-c", script, "sh"}, files...)...)
	runFrom := func(dir string) result {
		_, addr := serveCounting(t, dir)
		args := append(append([]string{"run", "--rm"}, httpStore(addr)...), "-v", vol+":/.bootfs/cache", boot, "sh", "-c", script, "sh")
		return docker(t, append(args, files...)...)
	}
	got := runFrom(dir)
	wantLines := strings.Split(strings.TrimSpace(want.stdout), "\n")
	var gotSound []string
	for _, l := range strings.Split(strings.TrimSpace(got.stdout), "\n") {
		if !slices.Contains(wantLines, l) {
			t.Errorf("a wrong byte reached the app: %q is not the original's", l)
		}
		gotSound = append(gotSound, l)
	}
	if len(gotSound) != len(sound) {
		t.Errorf("from the damaged store, md5sum printed %d sums, want %d (the sound files'):\n%s", len(gotSound), len(sound), got.stdout)
	}
	for _, d := range damaged {
		if n := strings.Count(got.stderr, d.path+": Input/output error"); n != 2 {
			t.Errorf("%s (a chunk %s): %d reads failed with EIO, want 2; stderr:\n%s", d.path, d.how, n, got.stderr)
		}
	}
	// The volume holds what verifies, and none of the damaged chunks.
	mp := strings.TrimSpace(docker(t, "volume", "inspect", "-f", "{{.Mountpoint}}", vol).stdout)
	cache, err := local.Open(mp, false)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	err = filepath.WalkDir(mp, func(p string, e fs.DirEntry, err error) error {
		if err != nil || !strings.HasSuffix(p, ".cacnk") {
			return err
		}
		id, err := store.ParseID(strings.TrimSuffix(filepath.Base(p), ".cacnk"))
		if err != nil {
			return err
		}
		if slices.Contains(bad, id) {
			t.Errorf("the cache volume holds damaged chunk %s", id.Short())
		}
		n++
		_, err = store.Load(context.Background(), cache, id)
		return err
	})
	if err != nil {
		t.Errorf("the cache volume: %v", err)
	}
	if n == 0 {
		t.Error("the cache volume holds no chunk")
	}
	if again := runFrom(storeDir); again.stdout != want.stdout || again.code != 0 {
		t.Errorf("from the sound store on the same volume: exit %d, stdout %q, want %q; stderr: %s", again.code, again.stdout, want.stdout, again.stderr)
	}
}

// TestKillWithStoreDown kills containers whose store went away in the
// middle of the app's reads, refusing connections (its process killed) or
// answering nothing (stopped), at points through the retries of the reads
// that wait on it: each ends within exitBound and leaves no FUSE
// connection.
func TestKillWithStoreDown(t *testing.T) {
	_, boot, storeDir := converted(t)
	for _, down := range []struct {
		name string
		sig  syscall.Signal
	}{{"refusing", syscall.SIGKILL}, {"hung", syscall.SIGSTOP}} {
		t.Run(down.name, func(t *testing.T) {
			t.Parallel()
			for _, after := range []time.Duration{200 * time.Millisecond, time.Second, 3 * time.Second} {
				addr := testserver.FreePort(t)
				srv := serveProcess(t, addr, storeDir, 20*time.Millisecond)
				name := fmt.Sprintf("mkbootfs-e2e-store-%s-%d", down.name, after.Milliseconds())
				start(t, name, "--network", "host", "--device", "/dev/fuse", "--cap-add", "SYS_ADMIN", "-e", "MKBOOTFS_STORE=http://"+addr,
					boot, "sh", "-c", "echo reading; exec cat /usr/bin/* /usr/lib/x86_64-linux-gnu/*.so* >/dev/null")
				w := watch(t, name)
				waitForLog(t, name, "reading\n")
				if err := srv.Process.Signal(down.sig); err != nil {
					t.Fatal(err)
				}
				time.Sleep(after)
				if !running(t, name) {
					w.stopWatching()
					t.Fatalf("%s ended %v after its store went down, before the kill: %s", name, after, docker(t, "logs", name).stderr)
				}
				docker(t, "kill", name)
				w.waitExit(t, exitBound)
			}
		})
	}
}
