package attach

import (
	"context"
	"errors"
	"os/exec"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// fakeEngine lists fixed containers.
type fakeEngine struct {
	n   string
	cs  []Container
	err error
}

func (f fakeEngine) name() string { return f.n }
func (f fakeEngine) list(context.Context) ([]Container, error) {
	return f.cs, f.err
}
func (f fakeEngine) pid(context.Context, string) (int, error) { return 0, errors.New("fake") }

func TestFind(t *testing.T) {
	dockerEng := fakeEngine{n: "docker", cs: []Container{
		{"docker", "3f2a1b9c0d1e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5061728394a5b6c7d8e", "web"},
		{"docker", "3f9b8a7c6d5e4f30211223344556677889900aabbccddeeff00112233445566", "db"},
		{"docker", "a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5061728394a5b6c7d8e9f", "3f"},
	}}
	// containerd lists docker's containers again, by the same ID.
	ctrEng := fakeEngine{n: "containerd", cs: []Container{
		{"containerd", "moby/3f2a1b9c0d1e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5061728394a5b6c7d8e", "3f2a1b9c0d1e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5061728394a5b6c7d8e"},
		{"containerd", "k8s.io/pause", "pause"},
	}}
	broken := fakeEngine{n: "podman", err: errors.New("podman: cannot connect")}
	engs := []engine{dockerEng, ctrEng, broken}
	for _, tc := range []struct {
		spec    string
		wantID  string
		wantErr []string // substrings of the error
	}{
		{spec: "web", wantID: dockerEng.cs[0].ID},
		{spec: "3f2a", wantID: dockerEng.cs[0].ID},
		// An exact name wins over ID prefixes.
		{spec: "3f", wantID: dockerEng.cs[2].ID},
		{spec: "3", wantErr: []string{`"3" matches 2 running containers`, "docker web (3f2a1b9c0d1e)", "docker db (3f9b8a7c6d5e)"}},
		{spec: "pause", wantID: "k8s.io/pause"},
		{spec: "containerd:pause", wantID: "k8s.io/pause"},
		{spec: "docker:pause", wantErr: []string{`no running container "pause"`, "running: docker 3f (a1b2c3d4e5f6)"}},
		{spec: "nope", wantErr: []string{`no running container "nope"`, "docker web (3f2a1b9c0d1e)", "containerd pause (k8s.io/pause)", "podman: cannot connect", "pid:N"}},
		{spec: "pid:42", wantID: "42"},
		{spec: "pid:x", wantErr: []string{"want pid:N"}},
		{spec: "", wantErr: []string{"no container given"}},
	} {
		t.Run(tc.spec, func(t *testing.T) {
			c, _, err := find(context.Background(), tc.spec, engs)
			if tc.wantErr != nil {
				if err == nil {
					t.Fatalf("found %v, want an error", c)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q lacks %q", err, w)
					}
				}
				return
			}
			if err != nil || c.ID != tc.wantID {
				t.Fatalf("find(%q) = %v, %v; want ID %s", tc.spec, c, err, tc.wantID)
			}
		})
	}
}

func TestCgroupProcs(t *testing.T) {
	mountinfo := `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
86 85 0:29 /docker/abc /mnt/cpu ro,relatime - cgroup cgroup rw,cpu,cpuacct
`
	for _, tc := range []struct {
		name, cgroup, mountinfo string
		want                    []string
		wantErr                 bool
	}{
		{
			name: "v1 and v2 (hybrid)",
			cgroup: `9:name=systemd:/docker/abc
4:memory:/docker/abc
2:cpu,cpuacct:/docker/abc
1:pids:/docker/abc
0::/docker/abc`,
			mountinfo: mountinfo,
			want: []string{
				"/sys/fs/cgroup/systemd/docker/abc/cgroup.procs",
				"/sys/fs/cgroup/memory/docker/abc/cgroup.procs",
				"/sys/fs/cgroup/cpu,cpuacct/docker/abc/cgroup.procs",
				"/sys/fs/cgroup/unified/docker/abc/cgroup.procs",
			},
		},
		{
			name:      "v2 only",
			cgroup:    "0::/system.slice/docker-abc.scope\n",
			mountinfo: "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n",
			want:      []string{"/sys/fs/cgroup/system.slice/docker-abc.scope/cgroup.procs"},
		},
		{
			name:      "a mount of a subtree only",
			cgroup:    "0::/docker/abc\n",
			mountinfo: "30 23 0:26 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
			want:      []string{"/sys/fs/cgroup/cgroup.procs"},
		},
		{
			name:      "outside the mounted subtree",
			cgroup:    "0::/other\n",
			mountinfo: "30 23 0:26 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
			wantErr:   true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := cgroupProcs([]byte(tc.cgroup), []byte(tc.mountinfo))
			if tc.wantErr {
				if err == nil {
					t.Fatalf("got %q, want an error", got)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %q, %v\nwant %q", got, err, tc.want)
			}
		})
	}
}

func TestSessionEnviron(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  []string
		tty  bool
		want []string
	}{
		{"path replaced", []string{"PATH=/container/bin", "HOME=/root"}, false, []string{"PATH=/tools/bin", "HOME=/root"}},
		{"no path", []string{"A=1"}, false, []string{"PATH=/tools/bin", "A=1"}},
		{"tty gets a TERM", []string{"A=1"}, true, []string{"PATH=/tools/bin", "A=1", "TERM=vt100"}},
		{"the container's TERM stays", []string{"TERM=dumb"}, true, []string{"PATH=/tools/bin", "TERM=dumb"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("TERM", "vt100")
			if got := sessionEnviron(tc.env, "/tools/bin", tc.tty); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// TestPinnedTargetDies checks that a target that exits while attaching
// gives a clean error, whatever took its PID meanwhile.
func TestPinnedTargetDies(t *testing.T) {
	cmd := exec.Command("sleep", "100")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c, eng, err := find(context.Background(), "pid:"+strconv.Itoa(cmd.Process.Pid), nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := pin(context.Background(), c, eng)
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	if err := p.alive(); err != nil {
		t.Fatal(err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	if _, err := p.info(); err == nil || !strings.Contains(err.Error(), "exited while attaching") {
		t.Errorf("info of a dead target: %v", err)
	}
	if err := p.alive(); err == nil {
		t.Error("a dead target is alive")
	}
	if _, err := pin(context.Background(), c, eng); err == nil || !strings.Contains(err.Error(), "no process") {
		t.Errorf("pinning a dead PID: %v", err)
	}
}
