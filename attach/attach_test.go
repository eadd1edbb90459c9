package attach

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/converter"
	"github.com/mkbootfs/mkbootfs/internal/testenv"
	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/httpstore"
	"github.com/mkbootfs/mkbootfs/store/local"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if fixture.dir != "" {
		os.RemoveAll(fixture.dir)
	}
	if fixture.daemon != "" {
		exec.Command("docker", "rmi", "-f", fixture.daemon).Run()
	}
	os.Exit(code)
}

const (
	toolsImage   = "mkbootfs-test/tools:bookworm"
	busyboxImage = "mkbootfs-test/busybox:latest"
	// testHost is what the test container's /etc/hosts resolves.
	testHost, testHostAddr = "tools-test.invalid", "10.1.2.3"
)

// fixture is the converted tools image, made once per test binary.
var fixture struct {
	once     sync.Once
	err      error
	dir      string
	ref      string // the boot image, in the test registry
	daemon   string // the boot image, in the docker daemon
	index    string // its index file
	storeDir string // its chunks
	// storeBytes is the compressed size of its chunks: what fetching the
	// whole image moves.
	storeBytes int64
}

// tools returns the converted tools image.
func tools(t *testing.T) {
	t.Helper()
	testenv.FUSE(t)
	testenv.Docker(t)
	registry := testenv.Registry(t)
	rootfs := os.Getenv("MKBOOTFS_TOOLS_ROOTFS")
	if rootfs == "" {
		rootfs = "/var/cache/mkbootfs/rootfs/bookworm-tools"
	}
	if _, err := os.Stat(filepath.Join(rootfs, "usr/bin/gdb")); err != nil {
		testenv.Missing(t, "the Debian tools rootfs "+rootfs, "scripts/tools-rootfs.sh builds it")
	}
	fixture.once.Do(func() { fixture.err = convertTools(rootfs, registry) })
	if fixture.err != nil {
		t.Fatal(fixture.err)
	}
}

func convertTools(rootfs, registry string) error {
	if exec.Command("docker", "image", "inspect", toolsImage).Run() != nil {
		imp := exec.Command("sh", "-c", `tar -C "$1" --xattrs --xattrs-include='*' -cf - . | docker import - "$2"`, "sh", rootfs, toolsImage)
		if out, err := imp.CombinedOutput(); err != nil {
			return fmt.Errorf("docker import of %s: %v\n%s", rootfs, err, out)
		}
	}
	dir, err := os.MkdirTemp("", "mkbootfs-attach-test-")
	if err != nil {
		return err
	}
	fixture.dir = dir
	bootinit := filepath.Join(dir, "bootinit")
	build := exec.Command("go", "build", "-trimpath", "-o", bootinit, "../cmd/bootinit")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("building bootinit: %v\n%s", err, out)
	}
	bin, err := os.ReadFile(bootinit)
	if err != nil {
		return err
	}
	fixture.storeDir = filepath.Join(dir, "store")
	s, err := local.Open(fixture.storeDir, true)
	if err != nil {
		return err
	}
	ctx := context.Background()
	res, err := converter.Convert(ctx, converter.Options{Source: "docker-daemon:" + toolsImage, Store: s, StoreURLs: []string{fixture.storeDir}})
	if err != nil {
		return err
	}
	seen := map[[32]byte]bool{}
	for _, c := range res.Index.Chunks {
		if !seen[c.ID] {
			seen[c.ID] = true
			fi, err := os.Stat(s.Path(store.ID(c.ID)))
			if err != nil {
				return err
			}
			fixture.storeBytes += fi.Size()
		}
	}
	raw, err := res.Index.MarshalBinary()
	if err != nil {
		return err
	}
	fixture.index = filepath.Join(dir, "tools.idx")
	if err := os.WriteFile(fixture.index, raw, 0o644); err != nil {
		return err
	}
	img, err := converter.BootImage(ctx, res, bin, s, []string{fixture.storeDir})
	if err != nil {
		return err
	}
	// Tagged per test process: the boot image records a store in this
	// process's temp dir, which another run must not pick up.
	tag := fmt.Sprintf("%s-bootfs-%d", toolsImage, os.Getpid())
	fixture.ref = registry + "/" + tag
	fixture.daemon = tag
	if err := converter.WriteImage(ctx, img, fixture.ref); err != nil {
		return err
	}
	return converter.WriteImage(ctx, img, "docker-daemon:"+fixture.daemon)
}

// ctr is a running busybox container whose PID 1 makes syscalls all the
// time without forking (top), to strace and gdb.
type ctr struct {
	name, id string
	pid      int // of its PID 1, on the host
}

var containers atomic.Int32

func startContainer(t *testing.T) *ctr {
	t.Helper()
	testenv.Docker(t)
	if exec.Command("docker", "image", "inspect", busyboxImage).Run() != nil {
		testenv.Missing(t, "the image "+busyboxImage, "scripts/busybox-image.sh builds it")
	}
	c := &ctr{name: fmt.Sprintf("mkbootfs-attach-test-%d-%d", os.Getpid(), containers.Add(1))}
	c.id = strings.TrimSpace(testenv.Run(t, "docker", "run", "-d", "--name", c.name,
		"--add-host", testHost+":"+testHostAddr, "-e", "ATTACH_TEST=yes",
		busyboxImage, "top", "-b", "-d", "1"))
	t.Cleanup(func() { exec.Command("docker", "rm", "-f", c.name).Run() })
	var err error
	if c.pid, err = strconv.Atoi(strings.TrimSpace(testenv.Run(t, "docker", "inspect", "-f", "{{.State.Pid}}", c.name))); err != nil {
		t.Fatal(err)
	}
	return c
}

// state is what a session must leave as it found it.
type state struct {
	procs     []string // the container's processes: host PID and command line
	mountinfo string   // its PID 1's mount table
	diff      string   // docker diff: its filesystem's changes
}

func (c *ctr) state(t *testing.T) state {
	t.Helper()
	mi, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", c.pid))
	if err != nil {
		t.Fatal(err)
	}
	return state{procs: c.procs(t), mountinfo: string(mi), diff: testenv.Run(t, "docker", "diff", c.name)}
}

// procs lists the processes in the container's PID namespace.
func (c *ctr) procs(t *testing.T) []string {
	t.Helper()
	ns, err := nsID(fmt.Sprintf("/proc/%d/ns/pid", c.pid))
	if err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		if id, err := nsID("/proc/" + e.Name() + "/ns/pid"); err != nil || id != ns {
			continue
		}
		cmdline, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil {
			out = append(out, e.Name()+" "+strings.TrimSpace(strings.ReplaceAll(string(cmdline), "\x00", " ")))
		}
	}
	return out
}

func (s state) diffTo(after state) string {
	var d []string
	if !slices.Equal(s.procs, after.procs) {
		d = append(d, fmt.Sprintf("processes %q, then %q", s.procs, after.procs))
	}
	if s.mountinfo != after.mountinfo {
		d = append(d, fmt.Sprintf("mount table\n%s\nthen\n%s", s.mountinfo, after.mountinfo))
	}
	if s.diff != after.diff {
		d = append(d, fmt.Sprintf("docker diff %q, then %q", s.diff, after.diff))
	}
	return strings.Join(d, "\n")
}

// outcome is what one attach did.
type outcome struct {
	stdout, stderr string
	res            *Result
	err            error
}

// attach runs o with stdin from in, capturing stdout and stderr.
func attach(t *testing.T, o Options, in []byte) outcome {
	t.Helper()
	dir := t.TempDir()
	files := make([]*os.File, 3)
	for i, name := range []string{"stdin", "stdout", "stderr"} {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		files[i] = f
	}
	files[0].Write(in)
	files[0].Seek(0, io.SeekStart)
	o.Stdin, o.Stdout, o.Stderr = files[0], files[1], files[2]
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var s outcome
	s.res, s.err = Run(ctx, o)
	out, _ := os.ReadFile(files[1].Name())
	errOut, _ := os.ReadFile(files[2].Name())
	s.stdout, s.stderr = string(out), string(errOut)
	return s
}

func (s outcome) code() int {
	if s.res == nil {
		return -1
	}
	return s.res.ExitCode
}

// TestAttach runs the tools of a converted Debian image in a busybox
// container, and checks that the container is as it was afterwards.
func TestAttach(t *testing.T) {
	tools(t)
	c := startContainer(t)
	testenv.Run(t, "docker", "exec", c.name, "sh", "-c", "echo hello from the container > /data.txt")
	resolv := testenv.Run(t, "docker", "exec", c.name, "cat", "/etc/resolv.conf")
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.pid))
	if err != nil {
		t.Fatal(err)
	}
	capBnd, err := statusCaps(status, "CapBnd")
	if err != nil {
		t.Fatal(err)
	}
	before := c.state(t)

	for _, tc := range []struct {
		name    string
		command []string
		code    int
		stdout  []string // substrings
		stderr  []string
		exact   string // the whole stdout
	}{
		{name: "ps", command: []string{"ps", "-eo", "pid,comm"}, stdout: []string{"    1 top", "mkbootfs-attach", " ps"}},
		{name: "strace", command: []string{"timeout", "-s", "INT", "3", "strace", "-p", "1"}, code: 124,
			stderr: []string{"Process 1 attached", "read(", "Process 1 detached"}},
		{name: "gdb", command: []string{"gdb", "-p", "1", "-batch", "-ex", "bt"}, stdout: []string{"#0  0x"}},
		{name: "container root", command: []string{"cat", ContainerDir + "/data.txt"}, exact: "hello from the container\n"},
		{name: "hosts", command: []string{"getent", "hosts", testHost}, stdout: []string{testHostAddr}},
		{name: "resolv.conf", command: []string{"cat", "/etc/resolv.conf"}, exact: resolv},
		{name: "hostname", command: []string{"hostname"}, exact: c.id[:12] + "\n"},
		{name: "tools", command: []string{"cat", "/etc/debian_version"}, stdout: []string{"12."}},
		{name: "env", command: []string{"sh", "-c", `echo "$ATTACH_TEST $PATH"`}, exact: "yes " + defaultPath + "\n"},
		{name: "capabilities", command: []string{"grep", "CapEff", "/proc/self/status"},
			exact: fmt.Sprintf("CapEff:\t%016x\n", capBnd|1<<unix.CAP_SYS_PTRACE)},
		{name: "descriptors", command: []string{"ls", "/proc/self/fd"}, exact: "0\n1\n2\n3\n"},
		{name: "pid namespace", command: []string{"sh", "-c", "readlink /proc/self/ns/pid /proc/1/ns/pid | uniq | wc -l"}, exact: "1\n"},
		{name: "exit code", command: []string{"sh", "-c", "echo out; echo err >&2; exit 7"}, code: 7, exact: "out\n", stderr: []string{"err"}},
		{name: "signal", command: []string{"sh", "-c", "kill -TERM $$"}, code: 128 + 15},
		{name: "throwaway writes", command: []string{"sh", "-c", "echo x > /usr/bin/written && cat /usr/bin/written"}, exact: "x\n"},
		{name: "writes gone", command: []string{"ls", "/usr/bin/written"}, code: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := attach(t, Options{Target: c.name, Tools: fixture.ref, Command: tc.command}, nil)
			if s.err != nil || s.code() != tc.code {
				t.Fatalf("exit %d, %v; want %d\nstdout: %s\nstderr: %s", s.code(), s.err, tc.code, s.stdout, s.stderr)
			}
			for _, w := range tc.stdout {
				if !strings.Contains(s.stdout, w) {
					t.Errorf("stdout lacks %q:\n%s", w, s.stdout)
				}
			}
			for _, w := range tc.stderr {
				if !strings.Contains(s.stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, s.stderr)
				}
			}
			if tc.exact != "" && s.stdout != tc.exact {
				t.Errorf("stdout %q, want %q", s.stdout, tc.exact)
			}
		})
	}

	t.Run("not found", func(t *testing.T) {
		s := attach(t, Options{Target: c.name, Tools: fixture.ref, Command: []string{"no-such-command"}}, nil)
		var ee *ExitError
		if !errors.As(s.err, &ee) || ee.Code != exitNotFound || !strings.Contains(s.err.Error(), "no-such-command") {
			t.Errorf("got %v, want an ExitError with code %d naming the command", s.err, exitNotFound)
		}
	})

	t.Run("byte exact", func(t *testing.T) {
		blob := make([]byte, 3<<20)
		rand.Read(blob)
		// Through a pipe both ways: cat copies stdin to stdout.
		inR, inW, _ := os.Pipe()
		outR, outW, _ := os.Pipe()
		go func() { inW.Write(blob); inW.Close() }()
		got := make(chan []byte)
		go func() { b, _ := io.ReadAll(outR); got <- b }()
		res, err := Run(context.Background(), Options{Target: c.name, Tools: fixture.ref, Command: []string{"cat"},
			Stdin: inR, Stdout: outW, Stderr: os.Stderr})
		inR.Close()
		outW.Close()
		out := <-got
		if err != nil || res.ExitCode != 0 || !bytes.Equal(out, blob) {
			t.Errorf("cat of %d random bytes through a pipe: %d bytes out (equal: %v), %v", len(blob), len(out), bytes.Equal(out, blob), err)
		}
	})

	t.Run("tty", func(t *testing.T) {
		out, code, err := attachTTY(t, Options{Target: c.name, Tools: fixture.ref}, "echo tty-$((6*7)); tty; exit 5\n")
		if err != nil || code != 5 || !strings.Contains(out, "tty-42") || !strings.Contains(out, "/dev/pts/") {
			t.Errorf("exit %d, %v; output:\n%s", code, err, out)
		}
	})

	if after := c.state(t); before.diffTo(after) != "" {
		t.Errorf("the container changed:\n%s", before.diffTo(after))
	}
}

// attachTTY runs a session on a terminal (our own pty pair) and types
// input into it; it returns what the terminal showed.
func attachTTY(t *testing.T, o Options, input string) (string, int, error) {
	t.Helper()
	m, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Non-blocking, so that the read below can time out.
	unix.SetNonblock(m, true)
	master := os.NewFile(uintptr(m), "ptmx")
	defer master.Close()
	if err := unix.IoctlSetPointerInt(m, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(m, unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	slave, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer slave.Close()
	var out bytes.Buffer
	read := make(chan struct{})
	go func() { io.Copy(&out, master); close(read) }()
	o.Stdin, o.Stdout, o.Stderr = slave, slave, slave
	type result struct {
		res *Result
		err error
	}
	done := make(chan result)
	go func() {
		res, err := Run(context.Background(), o)
		done <- result{res, err}
	}()
	// Typed ahead: the session's terminal keeps it until the shell reads.
	master.WriteString(input)
	r := <-done
	slave.Close()
	master.SetReadDeadline(time.Now().Add(time.Second))
	<-read
	if r.err != nil {
		return out.String(), -1, r.err
	}
	return out.String(), r.res.ExitCode, nil
}

// TestAttachFetchesLittle measures the bytes a session fetches: a cold
// cache fetches a small part of the tools image, a second session nothing.
func TestAttachFetchesLittle(t *testing.T) {
	tools(t)
	c := startContainer(t)
	l, err := local.Open(fixture.storeDir, false)
	if err != nil {
		t.Fatal(err)
	}
	// The server notes the chunks each session asks for.
	var (
		mu        sync.Mutex
		requested []map[string]bool
	)
	serve := httpstore.NewHandler(l, httpstore.HandlerOptions{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		requested[len(requested)-1][r.URL.Path] = true
		mu.Unlock()
		serve.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	cache := t.TempDir()
	script := `ps -ef >/dev/null && timeout -s INT 2 strace -p 1 2>/dev/null; gdb -p 1 -batch -ex bt | grep -c '^#' && cat /etc/hostname && getent hosts ` + testHost
	var fetched []int64
	for i, what := range []string{"cold cache", "second attach"} {
		mu.Lock()
		requested = append(requested, map[string]bool{})
		mu.Unlock()
		s := attach(t, Options{Target: c.name, Tools: fixture.ref, Stores: []string{srv.URL + "/"}, CacheDir: cache, Command: []string{"sh", "-c", script}}, nil)
		if s.err != nil || s.code() != 0 || !strings.Contains(s.stdout, testHostAddr) {
			t.Fatalf("%s: exit %d, %v\nstdout: %s\nstderr: %s", what, s.code(), s.err, s.stdout, s.stderr)
		}
		st := s.res.Stats
		if st == nil || st.Cache == nil {
			t.Fatalf("%s: no cache stats", what)
		}
		fetched = append(fetched, st.Cache.FetchedBytes)
		t.Logf("%s: fetched %.1f MB (%d chunks, compressed): %.1f%% of the image's %.1f MB of file data, %.1f%% of its %.1f MB of compressed chunks; loaded %.1f MB decoded (%.1f%% of the file data)",
			what, float64(st.Cache.FetchedBytes)/1e6, st.Cache.Misses,
			100*float64(st.Cache.FetchedBytes)/float64(s.res.ImageBytes), float64(s.res.ImageBytes)/1e6,
			100*float64(st.Cache.FetchedBytes)/float64(fixture.storeBytes), float64(fixture.storeBytes)/1e6,
			float64(st.BytesLoaded)/1e6, 100*float64(st.BytesLoaded)/float64(s.res.ImageBytes))
		// The bar: the bytes moved, against the image's size (its file
		// data, as docker reports an image's size). Against its compressed
		// chunks the ratio is about twice as high: gdb alone maps some 36 MB
		// of binaries and libraries at startup.
		if i == 0 && st.Cache.FetchedBytes*10 >= s.res.ImageBytes {
			t.Errorf("a cold session fetched %d bytes, not under 10%% of the image's %d", st.Cache.FetchedBytes, s.res.ImageBytes)
		}
	}
	// The second session fetches nothing the first did. It may fetch a
	// chunk the first never read: the sessions race strace and gdb against
	// the kernel's readahead, so their reads differ a little.
	for path := range requested[1] {
		if requested[0][path] {
			t.Errorf("a second session fetched %s again", path)
		}
	}
	if fetched[1]*100 > fetched[0] {
		t.Errorf("a second session fetched %d bytes, over 1%% of the first's %d", fetched[1], fetched[0])
	}
}

// TestAttachKilled kills the attach process mid-session: the session's
// processes and mounts go, the container is as it was.
func TestAttachKilled(t *testing.T) {
	tools(t)
	c := startContainer(t)
	before := c.state(t)
	spec, err := json.Marshal(helperSpec{Target: c.name, Tools: fixture.ref, Command: []string{"sh", "-c", "sleep 1001 & sleep 1000"}})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperAttach$")
	cmd.Env = append(os.Environ(), "MKBOOTFS_ATTACH_HELPER="+string(spec))
	// The helper's test output (a t.Fatal) goes to stdout.
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	until := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(time.Minute); !ok(); {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within a minute; processes %q\n%s", what, c.procs(t), &stderr)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	until("the session's sleeps run", func() bool {
		n := 0
		for _, p := range c.procs(t) {
			if _, cmd, _ := strings.Cut(p, " "); cmd == "sleep 1000" || cmd == "sleep 1001" {
				n++
			}
		}
		return n == 2
	})
	cmd.Process.Kill()
	cmd.Wait()
	until("the session's processes go", func() bool { return slices.Equal(c.procs(t), before.procs) })
	if after := c.state(t); before.diffTo(after) != "" {
		t.Errorf("the container changed:\n%s", before.diffTo(after))
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), fixture.ref) {
		t.Errorf("a mount of the tools image is left on the host:\n%s", mi)
	}
}

// helperSpec is the session TestHelperAttach runs, passed as JSON.
type helperSpec struct {
	Target, Tools string
	Command       []string
}

// TestHelperAttach is the attach process that TestAttachKilled kills.
func TestHelperAttach(t *testing.T) {
	spec := os.Getenv("MKBOOTFS_ATTACH_HELPER")
	if spec == "" {
		return
	}
	var hs helperSpec
	if err := json.Unmarshal([]byte(spec), &hs); err != nil {
		t.Fatal(err)
	}
	devnull, _ := os.Open(os.DevNull)
	Run(context.Background(), Options{Target: hs.Target, Tools: hs.Tools, Command: hs.Command, Stdin: devnull})
	t.Fatal("the session ended before the test killed it")
}

// TestAttachHostRoot attaches with no tools image: the host's root,
// read-only.
func TestAttachHostRoot(t *testing.T) {
	testenv.Root(t)
	c := startContainer(t)
	testenv.Run(t, "docker", "exec", c.name, "sh", "-c", "echo hello from the container > /data.txt")
	before := c.state(t)
	host, err := os.ReadFile("/etc/os-release")
	if err != nil {
		t.Fatal(err)
	}
	s := attach(t, Options{Target: c.name, Command: []string{"sh", "-c",
		"cat /etc/os-release " + ContainerDir + "/data.txt; getent hosts " + testHost + "; touch /usr/x 2>/dev/null || echo read-only; touch /tmp/x && echo tmp"}}, nil)
	want := string(host) + "hello from the container\n"
	if s.err != nil || s.code() != 0 || !strings.HasPrefix(s.stdout, want) ||
		!strings.Contains(s.stdout, testHostAddr) || !strings.HasSuffix(s.stdout, "read-only\ntmp\n") {
		t.Errorf("exit %d, %v\nstdout: %s\nstderr: %s", s.code(), s.err, s.stdout, s.stderr)
	}
	if after := c.state(t); before.diffTo(after) != "" {
		t.Errorf("the container changed:\n%s", before.diffTo(after))
	}
}

// TestAttachTargets names targets in the ways a user may.
func TestAttachTargets(t *testing.T) {
	tools(t)
	c := startContainer(t)
	for _, tc := range []struct {
		name, target string
		err          string // a substring of the error; none: it attaches
	}{
		{"name", c.name, ""},
		{"ID prefix", c.id[:10], ""},
		{"pid", "pid:" + strconv.Itoa(c.pid), ""},
		{"unknown lists the running", "mkbootfs-no-such-container", c.name},
		{"no process", "pid:999999999", "no process"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := attach(t, Options{Target: tc.target, Tools: fixture.index, Stores: []string{fixture.storeDir}, Command: []string{"cat", "/etc/hostname"}}, nil)
			if tc.err != "" {
				if s.err == nil || !strings.Contains(s.err.Error(), tc.err) {
					t.Errorf("got %v, want an error naming %q", s.err, tc.err)
				}
				return
			}
			if s.err != nil || s.stdout != c.id[:12]+"\n" {
				t.Errorf("got %q, %v\nstderr: %s", s.stdout, s.err, s.stderr)
			}
		})
	}
	t.Run("paused", func(t *testing.T) {
		testenv.Run(t, "docker", "pause", c.name)
		defer testenv.Run(t, "docker", "unpause", c.name)
		s := attach(t, Options{Target: c.name, Tools: fixture.index, Stores: []string{fixture.storeDir}, Command: []string{"true"}}, nil)
		if s.err == nil || !strings.Contains(s.err.Error(), "paused") {
			t.Errorf("attaching to a paused container: %v", s.err)
		}
	})
}

// TestLoadTools loads the tools image from the registry, the daemon and an
// index file, and refuses an image that was not converted.
func TestLoadTools(t *testing.T) {
	tools(t)
	ctx := context.Background()
	for _, ref := range []string{fixture.ref, "docker://" + fixture.ref, "docker-daemon:" + fixture.daemon, fixture.daemon, fixture.index} {
		t.Run(ref, func(t *testing.T) {
			tl, err := LoadTools(ctx, ref)
			if err != nil {
				t.Fatal(err)
			}
			if tl.Index == nil || len(tl.Index.Entries) < 1000 || !slices.Equal(tl.Stores, []string{fixture.storeDir}) || tl.Path != defaultPath {
				t.Errorf("%s: %d entries, stores %q, PATH %q", ref, len(tl.Index.Entries), tl.Stores, tl.Path)
			}
		})
	}
	if _, err := LoadTools(ctx, "docker-daemon:"+busyboxImage); err == nil || !strings.Contains(err.Error(), "not a boot image") {
		t.Errorf("loading an image that was not converted: %v", err)
	}
}
