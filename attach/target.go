package attach

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Container is a running container found by name or ID.
type Container struct {
	Runtime string // "docker", "podman", "containerd", or "pid"
	ID      string
	Name    string
}

func (c Container) String() string {
	if c.Runtime == "pid" {
		return "pid " + c.ID
	}
	id := c.ID
	if len(id) > 12 {
		id = id[:12]
	}
	if c.Name == "" || c.Name == c.ID {
		return c.Runtime + " " + id
	}
	return c.Runtime + " " + c.Name + " (" + id + ")"
}

// engine is a container engine that can list its running containers and
// tell the host PID of one's main process.
type engine interface {
	name() string
	// list returns the running containers.
	list(ctx context.Context) ([]Container, error)
	// pid returns the host PID of container id's main process, or an
	// error if it is not running.
	pid(ctx context.Context, id string) (int, error)
}

// engines are those looked in, in order: docker through its API socket,
// podman and containerd through their CLIs when installed (containerd's
// when its socket is there too: ctr waits long for a missing one).
func engines() []engine {
	rts := []engine{newDocker()}
	if _, err := exec.LookPath("podman"); err == nil {
		rts = append(rts, podman{})
	}
	sock := os.Getenv("CONTAINERD_ADDRESS")
	if sock == "" {
		sock = "/run/containerd/containerd.sock"
	}
	fi, err := os.Stat(sock)
	if _, lerr := exec.LookPath("ctr"); lerr == nil && err == nil && fi.Mode().Type() == os.ModeSocket {
		rts = append(rts, containerd{})
	}
	return rts
}

// find resolves spec: pid:N, [RUNTIME:]NAME or [RUNTIME:]ID-PREFIX. An
// exact name or ID wins over ID prefixes; no match or several list the
// running containers.
func find(ctx context.Context, spec string, rts []engine) (Container, engine, error) {
	if n, ok := strings.CutPrefix(spec, "pid:"); ok {
		pid, err := strconv.Atoi(n)
		if err != nil || pid <= 0 {
			return Container{}, nil, fmt.Errorf("%q: want pid:N with N a process ID", spec)
		}
		return Container{Runtime: "pid", ID: n}, nil, nil
	}
	q := spec
	if rt, rest, ok := strings.Cut(spec, ":"); ok {
		for _, r := range rts {
			if r.name() == rt {
				rts, q = []engine{r}, rest
			}
		}
	}
	if q == "" {
		return Container{}, nil, errors.New("no container given")
	}
	var all []Container
	byRuntime := map[string]engine{}
	seen := map[string]bool{}
	var failures []string
	for _, r := range rts {
		cs, err := r.list(ctx)
		if err != nil {
			failures = append(failures, err.Error())
			continue
		}
		byRuntime[r.name()] = r
		for _, c := range cs {
			// docker's containers are containerd's too, as moby/ID.
			key := c.ID[strings.LastIndex(c.ID, "/")+1:]
			if !seen[key] {
				seen[key] = true
				all = append(all, c)
			}
		}
	}
	var exact, prefix []Container
	for _, c := range all {
		switch {
		case c.ID == q || c.Name == q:
			exact = append(exact, c)
		case strings.HasPrefix(c.ID, q):
			prefix = append(prefix, c)
		}
	}
	matches := exact
	if len(matches) == 0 {
		matches = prefix
	}
	switch {
	case len(matches) == 1:
		return matches[0], byRuntime[matches[0].Runtime], nil
	case len(matches) > 1:
		return Container{}, nil, fmt.Errorf("%q matches %d running containers: %s; give more of the ID, or the name",
			q, len(matches), list(matches))
	}
	msg := fmt.Sprintf("no running container %q", q)
	if len(all) > 0 {
		msg += "; running: " + list(all)
	} else {
		msg += "; no container is running"
	}
	if len(failures) > 0 {
		msg += " (" + strings.Join(failures, "; ") + ")"
	}
	return Container{}, nil, errors.New(msg + "; or give pid:N")
}

func list(cs []Container) string {
	s := make([]string, len(cs))
	for i, c := range cs {
		s[i] = c.String()
	}
	sort.Strings(s)
	return strings.Join(s, ", ")
}

// docker talks to the docker engine API over its unix socket.
type docker struct {
	socket string
	client *http.Client
}

func newDocker() *docker {
	sock := "/var/run/docker.sock"
	if h := os.Getenv("DOCKER_HOST"); strings.HasPrefix(h, "unix://") {
		sock = strings.TrimPrefix(h, "unix://")
	}
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}
	return &docker{socket: sock, client: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

func (d *docker) name() string { return "docker" }

func (d *docker) get(ctx context.Context, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker"+path, nil)
	if err != nil {
		return err
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return fmt.Errorf("docker at %s: %w", d.socket, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("docker at %s: %w", d.socket, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Message string }
		json.Unmarshal(body, &e)
		return &apiError{status: resp.StatusCode, msg: fmt.Sprintf("docker: %s: %s", resp.Status, e.Message)}
	}
	return json.Unmarshal(body, v)
}

type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func (d *docker) list(ctx context.Context) ([]Container, error) {
	var cs []struct {
		ID    string `json:"Id"`
		Names []string
	}
	if err := d.get(ctx, "/containers/json", &cs); err != nil {
		return nil, err
	}
	out := make([]Container, len(cs))
	for i, c := range cs {
		out[i] = Container{Runtime: "docker", ID: c.ID}
		if len(c.Names) > 0 {
			out[i].Name = strings.TrimPrefix(c.Names[0], "/")
		}
	}
	return out, nil
}

func (d *docker) pid(ctx context.Context, id string) (int, error) {
	var c struct {
		State struct {
			Running bool
			Pid     int
		}
	}
	if err := d.get(ctx, "/containers/"+url.PathEscape(id)+"/json", &c); err != nil {
		return 0, err
	}
	if !c.State.Running || c.State.Pid <= 0 {
		return 0, errors.New("not running")
	}
	return c.State.Pid, nil
}

// podman asks the podman CLI.
type podman struct{}

func (podman) name() string { return "podman" }

func (podman) list(ctx context.Context) ([]Container, error) {
	out, err := command(ctx, "podman", "ps", "--no-trunc", "--format", "{{.ID}} {{.Names}}")
	if err != nil {
		return nil, err
	}
	var cs []Container
	for _, l := range lines(out) {
		id, name, _ := strings.Cut(l, " ")
		cs = append(cs, Container{Runtime: "podman", ID: id, Name: name})
	}
	return cs, nil
}

func (podman) pid(ctx context.Context, id string) (int, error) {
	out, err := command(ctx, "podman", "inspect", "--format", "{{.State.Pid}}", id)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil || pid <= 0 {
		return 0, errors.New("not running")
	}
	return pid, nil
}

// containerd asks the ctr CLI, in every containerd namespace. A container
// is NAMESPACE/ID.
type containerd struct{}

func (containerd) name() string { return "containerd" }

func (c containerd) list(ctx context.Context) ([]Container, error) {
	tasks, err := c.tasks(ctx)
	if err != nil {
		return nil, err
	}
	var cs []Container
	for id := range tasks {
		_, name, _ := strings.Cut(id, "/")
		cs = append(cs, Container{Runtime: "containerd", ID: id, Name: name})
	}
	return cs, nil
}

func (c containerd) pid(ctx context.Context, id string) (int, error) {
	tasks, err := c.tasks(ctx)
	if err != nil {
		return 0, err
	}
	if pid, ok := tasks[id]; ok {
		return pid, nil
	}
	return 0, errors.New("not running")
}

// tasks returns the running tasks' PIDs by NAMESPACE/ID.
func (containerd) tasks(ctx context.Context) (map[string]int, error) {
	out, err := command(ctx, "ctr", "namespaces", "list", "-q")
	if err != nil {
		return nil, err
	}
	tasks := map[string]int{}
	for _, ns := range lines(out) {
		out, err := command(ctx, "ctr", "-n", ns, "tasks", "list")
		if err != nil {
			return nil, err
		}
		for _, l := range lines(out) { // TASK PID STATUS, a header first
			f := strings.Fields(l)
			if len(f) == 3 && f[2] == "RUNNING" {
				if pid, err := strconv.Atoi(f[1]); err == nil {
					tasks[ns+"/"+f[0]] = pid
				}
			}
		}
	}
	return tasks, nil
}

func command(ctx context.Context, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}

func lines(b []byte) []string {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// pinned is a target process held by a pidfd, so that it cannot be
// confused with a later process that reuses its PID.
type pinned struct {
	pid   int
	pidfd int
	what  string // the container, for messages
}

// pin opens a pidfd on container c's main process. For a container, the
// engine is asked again after the pidfd is open: if it still names the
// same PID, the pidfd holds the container's process, not a newcomer that
// took a freed PID.
func pin(ctx context.Context, c Container, rt engine) (*pinned, error) {
	var pid int
	var err error
	if rt == nil {
		pid, _ = strconv.Atoi(c.ID)
	} else if pid, err = rt.pid(ctx, c.ID); err != nil {
		return nil, fmt.Errorf("%s: %w", c, err)
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, fmt.Errorf("%s: no process %d", c, pid)
		}
		return nil, fmt.Errorf("%s: pidfd_open(%d): %w", c, pid, err)
	}
	p := &pinned{pid: pid, pidfd: fd, what: c.String()}
	if rt != nil {
		again, err := rt.pid(ctx, c.ID)
		if err != nil || again != pid {
			p.close()
			return nil, fmt.Errorf("%s stopped or restarted while attaching (pid %d, then %d, %v); try again", c, pid, again, err)
		}
	}
	return p, nil
}

// alive fails once the process has exited: whatever was read from
// /proc/PID before a successful check was the pinned process's.
func (p *pinned) alive() error {
	if err := unix.PidfdSendSignal(p.pidfd, 0, nil, 0); err != nil {
		return fmt.Errorf("%s (pid %d) exited while attaching", p.what, p.pid)
	}
	return nil
}

func (p *pinned) close() { unix.Close(p.pidfd) }

func (p *pinned) proc(name string) string { return "/proc/" + strconv.Itoa(p.pid) + "/" + name }
