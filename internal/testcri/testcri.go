// Package testcri runs a containerd of a test's own (Debian's, with its
// CRI plugin; never the one dockerd uses) and drives it with crictl as
// kubelet would: host-network pods, pull, create, start, exec, logs. A
// proxy snapshotter can be made CRI's snapshotter. Its cleanup removes
// every pod, stops containerd and its shims, and detaches every mount
// under its directory, also those of a run that was killed.
package testcri

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/template"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/internal/testenv"
)

// ProxyName is the name a proxy snapshotter is registered under.
const ProxyName = "mkbootfs"

// dirPrefix begins the name of every containerd's directory in os.TempDir
// (short: unix socket paths are limited to 108 bytes).
const dirPrefix = "mkbootfs-ctd-"

// Timeouts: one crictl call, and containerd's start and stop.
const (
	callTimeout  = 3 * time.Minute
	startTimeout = 30 * time.Second
	stopTimeout  = 15 * time.Second
	// reconnectWait bounds how long RunPod and Run wait for containerd to reach
	// its proxy snapshotter again.
	reconnectWait = 30 * time.Second
)

// Options configure Start.
type Options struct {
	// Snapshotter is the socket of a proxy snapshotter, registered as
	// ProxyName and made CRI's snapshotter; empty: containerd's overlayfs.
	Snapshotter string
	// SandboxImage is the pod sandbox image; default testenv.PauseImage.
	SandboxImage string
}

// Containerd is a running containerd of the test's own.
type Containerd struct {
	Dir     string // its root, state, config, logs and sockets
	Socket  string // its gRPC socket: CRI and containerd's API
	LogFile string // its log

	crictl string
	proc   *os.Process
	exited chan struct{}
	stop   sync.Once
}

var configTemplate = template.Must(template.New("config").Parse(`version = 2
root = "{{.Dir}}/root"
state = "{{.Dir}}/state"
[grpc]
  address = "{{.Socket}}"
[ttrpc]
  address = "{{.Socket}}.ttrpc"
[debug]
  address = "{{.Dir}}/debug.sock"
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{{.Dir}}/opt"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{{.SandboxImage}}"
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    # This VM's root lacks CAP_SYS_RESOURCE: nothing may lower oom_score_adj.
    restrict_oom_score_adj = true
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "{{.SnapshotterName}}"
      # CRI then labels each layer's snapshot with the image and layer it is of.
      disable_snapshot_annotations = false
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
          Root = "{{.Dir}}/runc"
    # No CNI: only host-network pods.
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "{{.Dir}}/cni/bin"
      conf_dir = "{{.Dir}}/cni/net.d"
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "{{.Dir}}/certs.d"
{{if .Snapshotter}}[proxy_plugins]
  [proxy_plugins.{{.SnapshotterName}}]
    type = "snapshot"
    address = "{{.Snapshotter}}"
{{end}}`))

// hostsTOML makes the local registry plain HTTP for containerd.
const hostsTOML = `server = "http://%[1]s"
[host."http://%[1]s"]
  capabilities = ["pull", "resolve", "push"]
`

// WriteHosts writes, in dir, containerd's registry hosts configuration
// (its config_path) that makes the local registry, and the registries at
// the loopback addresses more, plain HTTP.
func WriteHosts(t testing.TB, dir string, more ...string) {
	t.Helper()
	for _, addr := range append([]string{testenv.RegistryAddr}, more...) {
		reg := filepath.Join(dir, addr)
		if err := os.MkdirAll(reg, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(reg, "hosts.toml"), fmt.Appendf(nil, hostsTOML, addr), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// Start starts a containerd with CRI, and stops it when the test ends.
func Start(t testing.TB, opt Options) *Containerd {
	t.Helper()
	testenv.Root(t)
	bin := testenv.Command(t, "containerd")
	testenv.Command(t, "runc")
	crictl := testenv.Crictl(t)
	if opt.SandboxImage == "" {
		opt.SandboxImage = testenv.Pause(t)
	}
	CleanStale()
	dir, err := os.MkdirTemp("", dirPrefix)
	if err != nil {
		t.Fatal(err)
	}
	c := &Containerd{Dir: dir, Socket: filepath.Join(dir, "containerd.sock"), LogFile: filepath.Join(dir, "containerd.log"), crictl: crictl, exited: make(chan struct{})}
	t.Cleanup(c.Stop)
	for _, d := range []string{filepath.Join(dir, "cni", "bin"), filepath.Join(dir, "cni", "net.d")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	WriteHosts(t, filepath.Join(dir, "certs.d"))
	var cfg bytes.Buffer
	name := "overlayfs"
	if opt.Snapshotter != "" {
		name = ProxyName
	}
	err = configTemplate.Execute(&cfg, map[string]string{
		"Dir": dir, "Socket": c.Socket, "SandboxImage": opt.SandboxImage,
		"Snapshotter": opt.Snapshotter, "SnapshotterName": name,
	})
	if err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(config, cfg.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(c.LogFile)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, "--config", config)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, away from a terminal's ^C; killed with the
	// test binary should that die first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting containerd: %v", err)
	}
	c.proc = cmd.Process
	os.WriteFile(filepath.Join(dir, "pid"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644)
	go func() { cmd.Wait(); close(c.exited) }()
	deadline := time.Now().Add(startTimeout)
	for {
		if _, _, err := c.crictlRun(context.Background(), nil, "info"); err == nil {
			break
		}
		select {
		case <-c.exited:
			t.Fatalf("containerd exited as it started; its log:\n%s", c.Log())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd's CRI did not answer within %v; its log:\n%s", startTimeout, c.Log())
		}
	}
	return c
}

// Log returns containerd's log so far.
func (c *Containerd) Log() string {
	b, _ := os.ReadFile(c.LogFile)
	return string(b)
}

// crictlRun runs crictl against this containerd, bounded in time.
func (c *Containerd) crictlRun(ctx context.Context, stdout io.Writer, args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	ep := "unix://" + c.Socket
	cmd := exec.CommandContext(ctx, c.crictl, append([]string{"-r", ep, "-i", ep, "-t", "2m"}, args...)...)
	// No /etc/crictl.yaml of the machine's.
	cmd.Env = append(os.Environ(), "CRI_CONFIG_FILE=/dev/null")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdout != nil {
		cmd.Stdout = stdout
	}
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("crictl %s: no answer within %v", strings.Join(args, " "), callTimeout)
	} else if err != nil {
		err = fmt.Errorf("crictl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return strings.TrimSpace(out.String()), errb.String(), err
}

// Crictl runs crictl with args and returns its output; a failure fails
// the test.
func (c *Containerd) Crictl(t testing.TB, args ...string) string {
	t.Helper()
	out, _, err := c.crictlRun(context.Background(), nil, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TryCrictl runs crictl with args and returns its output, or an error
// holding what it said.
func (c *Containerd) TryCrictl(args ...string) (string, error) {
	out, _, err := c.crictlRun(context.Background(), nil, args...)
	return out, err
}

// Pull pulls an image through CRI, as kubelet does before creating a
// container.
func (c *Containerd) Pull(t testing.TB, image string) {
	t.Helper()
	c.Crictl(t, "pull", image)
}

// Pod is a pod sandbox in the node's network namespace.
type Pod struct {
	ID     string
	Name   string
	config string
	c      *Containerd
}

// RunPod starts a host-network pod, removed when the test ends.
func (c *Containerd) RunPod(t testing.TB, name string) *Pod {
	t.Helper()
	p := &Pod{Name: name, c: c, config: filepath.Join(c.Dir, "pod-"+name+".json")}
	// network 2 is NODE, pid 1 CONTAINER, ipc 0 POD; no hostname, which a
	// pod in the host's UTS namespace cannot set.
	cfg := map[string]any{
		"metadata":      map[string]any{"name": name, "namespace": "default", "uid": name + "-uid", "attempt": 1},
		"log_directory": filepath.Join(c.Dir, "logs", name),
		"linux":         map[string]any{"security_context": map[string]any{"namespace_options": map[string]any{"network": 2, "pid": 1, "ipc": 0}}},
	}
	writeJSON(t, p.config, cfg)
	id, err := whileUnavailable(func() (string, error) { return c.TryCrictl("runp", p.config) })
	if err != nil {
		t.Fatal(err)
	}
	p.ID = id
	t.Cleanup(func() {
		c.TryCrictl("stopp", p.ID)
		c.TryCrictl("rmp", "-f", p.ID)
	})
	return p
}

// Container is what Create makes.
type Container struct {
	Name    string
	Image   string
	Command []string // replaces the image's entrypoint; nil: the image's
	Args    []string // replaces the image's cmd
	Env     []string // NAME=VALUE
	// User runs the container as this uid (run_as_user); nil: the image's.
	User *int64
	// NoNewPrivs sets no_new_privs, as allowPrivilegeEscalation: false does.
	NoNewPrivs bool
}

// Create creates a container in the pod and returns its ID, or crictl's
// error: the CRI error of CreateContainer.
func (p *Pod) Create(ct Container) (string, error) {
	sc := map[string]any{"no_new_privs": ct.NoNewPrivs}
	if ct.User != nil {
		sc["run_as_user"] = map[string]any{"value": *ct.User}
	}
	cfg := map[string]any{
		"metadata": map[string]any{"name": ct.Name},
		"image":    map[string]any{"image": ct.Image},
		"command":  ct.Command,
		"args":     ct.Args,
		"log_path": ct.Name + ".log",
		"linux":    map[string]any{"security_context": sc},
	}
	var envs []map[string]string
	for _, e := range ct.Env {
		k, v, _ := strings.Cut(e, "=")
		envs = append(envs, map[string]string{"key": k, "value": v})
	}
	cfg["envs"] = envs
	file := filepath.Join(p.c.Dir, "ctr-"+p.Name+"-"+ct.Name+".json")
	b, err := json.Marshal(cfg)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(file, b, 0o644); err != nil {
		return "", err
	}
	return p.c.TryCrictl("create", "--no-pull", p.ID, file, p.config)
}

// Run creates and starts a container; a failure fails the test.
func (p *Pod) Run(t testing.TB, ct Container) string {
	t.Helper()
	id, err := whileUnavailable(func() (string, error) { return p.Create(ct) })
	if err != nil {
		t.Fatal(err)
	}
	p.c.Crictl(t, "start", id)
	return id
}

// whileUnavailable runs a crictl call again, as kubelet does, while
// containerd has no connection to its proxy snapshotter: one restarted is
// reached again within containerd's gRPC backoff, and a call meanwhile
// fails Unavailable.
func whileUnavailable(call func() (string, error)) (string, error) {
	deadline := time.Now().Add(reconnectWait)
	for {
		out, err := call()
		if err == nil || !strings.Contains(err.Error(), "code = Unavailable") || time.Now().After(deadline) {
			return out, err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// State returns a container's state (CONTAINER_RUNNING, CONTAINER_EXITED,
// ...) and exit code.
func (c *Containerd) State(t testing.TB, id string) (string, int) {
	t.Helper()
	var st struct {
		Status struct {
			State    string `json:"state"`
			ExitCode int    `json:"exitCode"`
		} `json:"status"`
	}
	out := c.Crictl(t, "inspect", "-o", "json", id)
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("crictl inspect %s: %v\n%s", id, err, out)
	}
	return st.Status.State, st.Status.ExitCode
}

// Wait waits at most timeout for a container to exit and returns its exit
// code.
func (c *Containerd) Wait(t testing.TB, id string, timeout time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		state, code := c.State(t, id)
		if state == "CONTAINER_EXITED" {
			return code
		}
		if time.Now().After(deadline) {
			t.Fatalf("container %s still %s after %v; its logs:\n%s", id, state, timeout, c.Logs(t, id))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Logs returns a container's output, stdout and stderr.
func (c *Containerd) Logs(t testing.TB, id string) string {
	t.Helper()
	out, stderr, err := c.crictlRun(context.Background(), nil, "logs", id)
	if err != nil {
		t.Fatal(err)
	}
	return out + stderr
}

// Exec runs a command in a running container, its stdout to stdout, and
// returns what it wrote on stderr.
func (c *Containerd) Exec(stdout io.Writer, id string, cmd ...string) (string, error) {
	_, stderr, err := c.crictlRun(context.Background(), stdout, append([]string{"exec", id}, cmd...)...)
	return stderr, err
}

// Stop removes every pod, stops containerd and what it started, and
// detaches the mounts left under its directory; then removes it.
func (c *Containerd) Stop() {
	c.stop.Do(func() {
		if c.proc != nil {
			c.TryCrictl("rmp", "-fa")
			c.proc.Signal(syscall.SIGTERM)
			select {
			case <-c.exited:
			case <-time.After(stopTimeout):
				c.proc.Kill()
				<-c.exited
			}
		}
		clean(c.Dir)
	})
}

// CleanStale cleans up after the containerds of test runs that were
// killed: directories whose containerd is gone.
func CleanStale() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "pid"))
		if err != nil {
			continue // being made, or not ours
		}
		pid, _ := strconv.Atoi(string(b))
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && filepath.Base(exe) == "containerd" {
			continue // still running
		}
		clean(d)
	}
}

// clean kills what a containerd in dir left running (its shims, and the
// containers of runc's state there), detaches every mount under dir,
// deepest first, and removes it.
func clean(dir string) {
	for _, pid := range leftovers(dir) {
		unix.Kill(pid, unix.SIGKILL)
	}
	for _, p := range MountsUnder(dir) {
		unix.Unmount(p, unix.MNT_DETACH)
	}
	os.RemoveAll(dir)
}

// leftovers are the shims serving dir's containerd and the containers in
// its runc state.
func leftovers(dir string) []int {
	var pids []int
	procs, _ := os.ReadDir("/proc")
	sock := filepath.Join(dir, "containerd.sock")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile("/proc/" + p.Name() + "/cmdline")
		if err != nil {
			continue
		}
		args := strings.Split(string(cmdline), "\x00")
		if strings.Contains(args[0], "containerd-shim") && slices.Contains(args, sock) {
			pids = append(pids, pid)
		}
	}
	states, _ := filepath.Glob(filepath.Join(dir, "runc", "*", "*", "state.json"))
	for _, s := range states {
		var st struct {
			Pid   int    `json:"init_process_pid"`
			Start uint64 `json:"init_process_start"`
		}
		if b, err := os.ReadFile(s); err == nil && json.Unmarshal(b, &st) == nil && st.Pid > 0 && startTime(st.Pid) == st.Start {
			pids = append(pids, st.Pid)
		}
	}
	return pids
}

// startTime is a process's start time in clock ticks, as runc records it.
func startTime(pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the command name, which may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0
	}
	v, _ := strconv.ParseUint(f[19], 10, 64)
	return v
}

// MountsUnder lists the mount points under dir in this mount namespace,
// deepest first.
func MountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		// No unescaping: the paths under a containerd's directory hold
		// no space, tab nor backslash.
		p := fields[4]
		if strings.HasPrefix(p, dir+"/") || p == dir {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	return out
}

func writeJSON(t testing.TB, file string, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// WaitSocket waits at most timeout for a unix socket to accept.
func WaitSocket(path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		conn, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			conn.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: no answer within %v: %w", path, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
