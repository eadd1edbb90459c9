package bootinit_test

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mkbootfs/mkbootfs/internal/fusectl"
)

// exitBound is how long a killed container may take to end.
const exitBound = 5 * time.Second

// leakGrace is how long after its container's end a FUSE connection may
// take to go: the kernel ends a connection as the last reference to its
// mounts goes, which the container's end and docker's answer do not
// order.
const leakGrace = time.Second

// ownMountIO returns the kernel stack of a thread of pid that waits on a
// FUSE filesystem other than in reading /dev/fuse, "" if none does. For
// bootinit, which serves the lazy mount, such a thread does I/O on its own
// mount: killed then, it would wait forever for its own dead threads. (The
// kernel's teardown of the mount as the last process of its namespace
// exits is not such I/O, unless it waits for an answer.)
func ownMountIO(pid int) string {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stack", pid))
	for _, task := range tasks {
		b, err := os.ReadFile(task)
		if err != nil {
			continue
		}
		if stack := string(b); onFUSEMount(stack) {
			return stack
		}
	}
	return ""
}

// onFUSEMount reports whether a thread with this kernel stack waits on a
// FUSE filesystem other than in reading or writing /dev/fuse.
func onFUSEMount(stack string) bool {
	if strings.Contains(stack, "do_exit") && !strings.Contains(stack, "request_wait_answer") {
		return false
	}
	// A thread in /dev/fuse's read or write serves the mount, whatever
	// fuse_ frames it goes through from there (fuse_copy_fill).
	return strings.Contains(stack, "fuse_") && !strings.Contains(stack, "fuse_dev_")
}

func TestOnFUSEMount(t *testing.T) {
	for _, tc := range []struct {
		name, stack string
		want        bool
	}{
		{"lookup on the mount", "request_wait_answer+0x\n__fuse_simple_request+0x\nfuse_lookup_name+0x\nfuse_lookup+0x\n__lookup_slow+0x\n", true},
		{"close on the mount", "request_wait_answer+0x\nfuse_flush+0x\nfilp_flush+0x\n__x64_sys_close+0x\n", true},
		{"serving: waiting for a request", "fuse_dev_do_read+0x\nfuse_dev_read+0x\nvfs_read+0x\n", false},
		{"serving: copying a request into its buffer", "__get_user_pages+0x\ngup_fast_fallback+0x\niov_iter_get_pages2+0x\nfuse_copy_fill+0x\nfuse_dev_do_read+0x\nfuse_dev_read+0x\nvfs_read+0x\n", false},
		{"serving: answering", "fuse_copy_args+0x\nfuse_dev_do_write+0x\nfuse_dev_write+0x\n", false},
		{"exiting", "fuse_file_release+0x\n__fput+0x\ntask_work_run+0x\ndo_exit+0x\n", false},
		{"exiting, waiting for an answer", "request_wait_answer+0x\nfuse_flush+0x\nfilp_close+0x\ndo_exit+0x\n", true},
		{"elsewhere", "futex_wait+0x\ndo_futex+0x\n", false},
	} {
		if got := onFUSEMount(tc.stack); got != tc.want {
			t.Errorf("%s: onFUSEMount = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// watched is a container whose FUSE connections are noted while it runs,
// so that a test can tell they ended, or end them if it wedged; and whose
// PID 1 is watched for I/O on its own mount.
type watched struct {
	name  string
	mu    sync.Mutex
	conns map[string]fusectl.Conn
	ownIO string // a stack of PID 1 doing I/O on its mount
	stop  chan struct{}
	done  chan struct{}
}

// watch notes the FUSE connections of container name until stopWatching.
func watch(t *testing.T, name string) *watched {
	t.Helper()
	pid, _ := strconv.Atoi(strings.TrimSpace(docker(t, "inspect", "-f", "{{.State.Pid}}", name).stdout))
	w := &watched{name: name, conns: map[string]fusectl.Conn{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			for _, name := range fusectl.Mounted(pid) {
				w.mu.Lock()
				_, seen := w.conns[name]
				w.mu.Unlock()
				if c, ok, _ := fusectl.Lookup(name); ok && !seen {
					w.mu.Lock()
					w.conns[name] = c
					w.mu.Unlock()
				}
			}
			if stack := ownMountIO(pid); stack != "" && w.ownIO == "" {
				w.mu.Lock()
				w.ownIO = stack
				w.mu.Unlock()
			}
			select {
			case <-w.stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	return w
}

func (w *watched) stopWatching() {
	close(w.stop)
	<-w.done
}

// waitExit waits, at most bound, for the container to end. A container
// that does not is wedged: its FUSE connections are aborted (so that the
// test suite goes on), and waitExit fails the test.
func (w *watched) waitExit(t *testing.T, bound time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	err := exec.CommandContext(ctx, "docker", "wait", w.name).Run()
	w.stopWatching()
	if w.ownIO != "" {
		t.Errorf("%s: bootinit, which serves the lazy mount, did I/O on it:\n%s", w.name, w.ownIO)
	}
	conns := slices.Collect(maps.Values(w.conns))
	if err == nil && ctx.Err() == nil {
		leaks, err := fusectl.Leaked(conns, leakGrace)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range leaks {
			t.Errorf("%s ended, but its %s lives on, mounted nowhere", w.name, l)
		}
		for _, c := range conns {
			if fusectl.Reused(c) {
				t.Logf("%s ended; the number of its %v is a later mount's already", w.name, c)
			}
		}
		return
	}
	for _, c := range conns {
		if err := fusectl.Abort(c); err != nil {
			t.Errorf("aborting %v: %v", c, err)
		}
	}
	t.Errorf("%s was still running after %v: wedged (its FUSE connections %v are aborted now)", w.name, bound, conns)
	docker(t, "wait", w.name)
}

// TestKilledDuringCopyUp kills a container while the boot reads the
// image's files through the lazy mount, a chunk at a time from a slow
// store, to fill a volume (docker's copy-up). The process that reads is
// then blocked on the mount: were it the one that serves the mount, it
// would wait forever for an answer from its own dead threads.
func TestKilledDuringCopyUp(t *testing.T) {
	_, boot, storeDir := converted(t)
	ch, addr := serveCounting(t, storeDir)
	ch.delay.Store(int64(time.Second))
	name := "mkbootfs-e2e-killed-copyup"
	vol := fmt.Sprintf("mkbootfs-e2e-killed-copyup-%d", os.Getpid())
	// A cleanup, not a defer: it runs after start's removes the container.
	t.Cleanup(func() { docker(t, "volume", "rm", "-f", vol) })
	start(t, name, "--network", "host", "--device", "/dev/fuse", "--cap-add", "SYS_ADMIN",
		"-e", "MKBOOTFS_STORE=http://"+addr, "-v", vol+":/usr/share/doc", boot, "true")
	w := watch(t, name)
	// The first request is bootinit's check of the store; those after it,
	// the copy's reads.
	for i := 0; ch.requests() < 3; i++ {
		if i == 300 {
			t.Fatalf("the boot made %d requests in 30 s", ch.requests())
		}
		time.Sleep(100 * time.Millisecond)
	}
	docker(t, "kill", name)
	w.waitExit(t, exitBound)
}

// TestKillSweep kills containers through their first start and a start
// after a whole one, unprofiled and profiled, from a store slowed down:
// every 0.1 s to the end of a whole start (the boot, the app's run, the
// tree making). Each ends within exitBound with its FUSE connections, and
// the next start on the same cache volume runs right.
func TestKillSweep(t *testing.T) {
	orig, boot, storeDir := converted(t)
	profiled, _, _ := profiledImage(t)
	check := "apt-get --version | head -1; md5sum /usr/bin/apt-get /usr/lib/x86_64-linux-gnu/libapt-pkg.so.6.0.0"
	want := docker(t, "run", "--rm", orig, "sh", "-c", check)
	for _, img := range []struct{ name, ref string }{{"unprofiled", boot}, {"profiled", profiled}} {
		t.Run(img.name, func(t *testing.T) {
			t.Parallel()
			ch, addr := serveCounting(t, storeDir)
			ch.delay.Store(int64(5 * time.Millisecond))
			vol := fmt.Sprintf("mkbootfs-e2e-sweep-%s-%d", img.name, os.Getpid())
			// A cleanup, not a defer: it runs after those of start remove
			// the containers that use the volume.
			t.Cleanup(func() { docker(t, "volume", "rm", "-f", vol) })
			flags := []string{"--network", "host", "--device", "/dev/fuse", "--cap-add", "SYS_ADMIN",
				"-e", "MKBOOTFS_STORE=http://" + addr, "-v", vol + ":/.bootfs/cache"}
			killAt := func(after time.Duration) {
				name := fmt.Sprintf("mkbootfs-e2e-sweep-%s-%d", img.name, after.Milliseconds())
				start(t, name, append(flags, "-v", "/usr/share/doc", img.ref, "sh", "-c", check)...)
				w := watch(t, name)
				time.Sleep(after)
				docker(t, "kill", name)
				w.waitExit(t, exitBound)
			}
			// How long a whole first and second start take here, from docker
			// run to exit: how much of them the sweep covers.
			docker(t, "volume", "rm", "-f", vol)
			var took []time.Duration
			for range 2 {
				began := time.Now()
				docker(t, append(append([]string{"run", "--rm"}, flags...), img.ref, "sh", "-c", check)...)
				took = append(took, time.Since(began).Round(10*time.Millisecond))
			}
			var points []time.Duration
			for after := 100 * time.Millisecond; after <= max(took[0], took[1]); after += 100 * time.Millisecond {
				points = append(points, after)
			}
			t.Logf("a whole first start took %v, a second %v: %d kill points", took[0], took[1], len(points))
			for _, after := range points {
				docker(t, "volume", "rm", "-f", vol)
				killAt(after) // a first start
				// The second start runs whole, then a later one is killed.
				if r := docker(t, append(append([]string{"run", "--rm"}, flags...), img.ref, "sh", "-c", check)...); r.stdout != want.stdout || r.code != 0 {
					t.Fatalf("after a start killed at %v: exit %d, stdout %q, want %q; stderr: %s", after, r.code, r.stdout, want.stdout, r.stderr)
				}
				killAt(after)
			}
		})
	}
}

// TestInterruptedBoot stops a container while bootinit waits for its
// store: it ends as the original would on SIGTERM, and says why.
func TestInterruptedBoot(t *testing.T) {
	_, boot, storeDir := converted(t)
	ch, addr := serveCounting(t, storeDir)
	ch.delay.Store(int64(time.Minute))
	name := "mkbootfs-e2e-interrupted"
	start(t, name, "--network", "host", "--device", "/dev/fuse", "--cap-add", "SYS_ADMIN", "-e", "MKBOOTFS_STORE=http://"+addr, boot, "true")
	for i := 0; ch.requests() == 0; i++ {
		if i == 300 {
			t.Fatal("the boot made no request in 30 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if r := docker(t, "stop", name); r.code != 0 {
		t.Fatalf("docker stop: %s", r.stderr)
	}
	if r := docker(t, "inspect", "-f", "{{.State.ExitCode}}", name); r.stdout != "143\n" {
		t.Errorf("exit code %q, want 143 (SIGTERM)", r.stdout)
	}
	if r := docker(t, "logs", name); !strings.Contains(r.stderr, "the boot was interrupted by SIGTERM") {
		t.Errorf("stderr %q does not say the boot was interrupted", r.stderr)
	}
}

// TestOOMKilledBoot boots with too little memory: the OOM killer ends the
// container, which exits.
func TestOOMKilledBoot(t *testing.T) {
	_, boot, storeDir := converted(t)
	killed := 0
	for _, mem := range []string{"8m", "16m"} {
		name := "mkbootfs-e2e-oom-" + mem
		start(t, name, append(bootFlags(storeDir), "--memory", mem, "--memory-swap", mem, boot, "sh", "-c", "cat /usr/lib/x86_64-linux-gnu/*.so* | md5sum")...)
		w := watch(t, name)
		w.waitExit(t, 2*time.Minute)
		r := docker(t, "inspect", "-f", "{{.State.ExitCode}} {{.State.OOMKilled}} {{.Id}}", name)
		f := strings.Fields(r.stdout)
		// docker 20.10 on cgroup v1 often misses the OOM event of a
		// container whose PID 1 the killer took: the kernel's log says.
		if len(f) == 3 && (f[1] == "true" || oomKilledIn(t, f[2])) {
			killed++
		}
		t.Logf("--memory %s: exit code and OOM-killed: %s", mem, strings.TrimSpace(r.stdout))
	}
	// Else the test shows nothing of the OOM killer: a smaller --memory is
	// needed.
	if killed == 0 {
		t.Error("the OOM killer ended no container")
	}
}

// TestFUSEConnectionsSeen: the tests' view of FUSE connections works on
// this host, whether fusectl is mounted or not: a running container's lazy
// mount is a connection that exists and is mounted, not leaked; once the
// container is killed, none of its connections is left unmounted.
func TestFUSEConnectionsSeen(t *testing.T) {
	_, boot, storeDir := converted(t)
	name := "mkbootfs-e2e-fusectl"
	start(t, name, append(bootFlags(storeDir), boot, "sh", "-c", "echo ready; exec sleep 600")...)
	waitForLog(t, name, "ready\n")
	w := watch(t, name)
	var conns []fusectl.Conn
	for i := 0; len(conns) == 0 && i < 500; i++ {
		time.Sleep(10 * time.Millisecond)
		w.mu.Lock()
		conns = slices.Collect(maps.Values(w.conns))
		w.mu.Unlock()
	}
	if len(conns) == 0 {
		t.Fatal("no FUSE connection in the mounts of the container's PID 1")
	}
	for _, c := range conns {
		if alive, err := fusectl.Alive(c); err != nil || !alive {
			t.Errorf("the running container's %v: fusectl does not show it (%v)", c, err)
		}
	}
	if leaks, err := fusectl.Leaked(conns, 0); err != nil || len(leaks) > 0 {
		t.Errorf("the running container's mounted FUSE connections counted as leaked: %v %v", leaks, err)
	}
	docker(t, "kill", name)
	w.waitExit(t, exitBound)
}

// oomKilledIn reports whether the kernel's log has the OOM killer killing
// a process of the container whose ID is id.
func oomKilledIn(t *testing.T, id string) bool {
	out, err := exec.Command("dmesg").Output()
	if err != nil {
		t.Logf("dmesg: %v", err)
		return false
	}
	return strings.Contains(string(out), "task_memcg=/docker/"+id+",")
}
