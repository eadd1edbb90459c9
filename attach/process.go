package attach

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// targetInfo is what a session takes from the target process.
type targetInfo struct {
	env    []string
	capBnd uint64 // its capability bounding set
	// cgroupProcs are the cgroup.procs files of its cgroups, one per
	// hierarchy mounted here.
	cgroupProcs []string
	// root is its root directory (O_PATH), in its mount namespace.
	root *os.File
}

// joined are the namespaces a session joins besides the mount namespace
// (when they are not ours already).
var joined = []struct {
	name string
	flag int
}{
	{"pid", unix.CLONE_NEWPID},
	{"net", unix.CLONE_NEWNET},
	{"ipc", unix.CLONE_NEWIPC},
	{"uts", unix.CLONE_NEWUTS},
	{"cgroup", unix.CLONE_NEWCGROUP},
}

// info reads what a session needs from /proc/PID, then checks that the
// process is still the pinned one.
func (p *pinned) info() (*targetInfo, error) {
	in := &targetInfo{}
	env, err := os.ReadFile(p.proc("environ"))
	if err != nil {
		return nil, p.procErr(err)
	}
	for _, e := range bytes.Split(env, []byte{0}) {
		if len(e) > 0 {
			in.env = append(in.env, string(e))
		}
	}
	status, err := os.ReadFile(p.proc("status"))
	if err != nil {
		return nil, p.procErr(err)
	}
	if in.capBnd, err = statusCaps(status, "CapBnd"); err != nil {
		return nil, fmt.Errorf("%s: %w", p.proc("status"), err)
	}
	if same, err := sameNS("user", p.pid); err != nil {
		return nil, p.procErr(err)
	} else if !same {
		return nil, fmt.Errorf("%s runs in a user namespace of its own (userns-remap or rootless): attach does not support that yet", p.what)
	}
	cg, err := os.ReadFile(p.proc("cgroup"))
	if err != nil {
		return nil, p.procErr(err)
	}
	mountinfo, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	if in.cgroupProcs, err = cgroupProcs(cg, mountinfo); err != nil {
		return nil, fmt.Errorf("%s: %w", p.what, err)
	}
	// The session joins its cgroups: in a frozen one it would freeze too.
	for _, f := range in.cgroupProcs {
		if frozen(path.Dir(f)) {
			return nil, fmt.Errorf("%s is paused (its cgroup %s is frozen): unpause it first", p.what, path.Dir(f))
		}
	}
	if in.root, err = os.OpenFile(p.proc("root"), unix.O_PATH|unix.O_DIRECTORY, 0); err != nil {
		return nil, p.procErr(err)
	}
	if err := p.alive(); err != nil {
		in.root.Close()
		return nil, err
	}
	return in, nil
}

// procErr reports a failed read of /proc/PID: mostly, the process is gone.
func (p *pinned) procErr(err error) error {
	if aerr := p.alive(); aerr != nil {
		return aerr
	}
	return fmt.Errorf("%s: %w", p.what, err)
}

// statusCaps parses a capability mask line of /proc/PID/status.
func statusCaps(status []byte, key string) (uint64, error) {
	for _, l := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(l, key+":"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, fmt.Errorf("no %s line", key)
}

// sameNS reports whether process pid is in the calling thread's namespace
// of that kind. The thread's, not the process's: a thread that joined a
// container's namespaces may linger (Go parks the main thread when a
// goroutine locked to it ends).
func sameNS(kind string, pid int) (bool, error) {
	a, err := nsID("/proc/thread-self/ns/" + kind)
	if err != nil {
		return false, err
	}
	b, err := nsID("/proc/" + strconv.Itoa(pid) + "/ns/" + kind)
	if err != nil {
		return false, err
	}
	return a == b, nil
}

// nsIdent names a namespace: its nsfs device and inode.
type nsIdent struct{ Dev, Ino uint64 }

func nsID(file string) (nsIdent, error) {
	var st unix.Stat_t
	if err := unix.Stat(file, &st); err != nil {
		return nsIdent{}, err
	}
	return nsIdent{st.Dev, st.Ino}, nil
}

// cgroupProcs maps the lines of /proc/PID/cgroup ("ID:CONTROLLERS:PATH")
// to the cgroup.procs files under the hierarchies mounted in mountinfo
// (ours). A hierarchy that is not mounted here is skipped.
func cgroupProcs(cgroup, mountinfo []byte) ([]string, error) {
	type hierarchy struct{ root, point string }
	v1 := map[string][]hierarchy{} // by each controller or name=
	var v2 []hierarchy
	sc := bufio.NewScanner(bytes.NewReader(mountinfo))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		sep := -1
		for i, x := range f {
			if x == "-" {
				sep = i
				break
			}
		}
		if sep < 5 || len(f) < sep+4 {
			continue
		}
		// Octal escapes (\040 for a space) are left: cgroup mount
		// points have none, and a wrong path fails to open, by name.
		h := hierarchy{root: f[3], point: f[4]}
		switch f[sep+1] {
		case "cgroup2":
			v2 = append(v2, h)
		case "cgroup":
			for _, o := range strings.Split(f[sep+3], ",") {
				v1[o] = append(v1[o], h)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	var files []string
	for _, l := range strings.Split(strings.TrimSpace(string(cgroup)), "\n") {
		parts := strings.SplitN(l, ":", 3)
		if len(parts) != 3 {
			continue
		}
		controllers, p := parts[1], parts[2]
		hs := v2
		if controllers != "" {
			hs = v1[strings.Split(controllers, ",")[0]]
		}
		found := false
		for _, h := range hs {
			rel, ok := strings.CutPrefix(p, h.root)
			if h.root == "/" {
				rel, ok = p, true
			}
			if ok && (rel == "" || strings.HasPrefix(rel, "/")) {
				files = append(files, path.Join(h.point, rel, "cgroup.procs"))
				found = true
				break
			}
		}
		if !found && len(hs) > 0 {
			return nil, fmt.Errorf("its cgroup %s (%s) is outside the hierarchy mounted here", p, l)
		}
	}
	return files, nil
}

// frozen reports whether the cgroup in dir is frozen (cgroup v1's freezer,
// or v2's cgroup.freeze).
func frozen(dir string) bool {
	if b, err := os.ReadFile(path.Join(dir, "freezer.state")); err == nil {
		return strings.TrimSpace(string(b)) != "THAWED"
	}
	b, err := os.ReadFile(path.Join(dir, "cgroup.events"))
	return err == nil && strings.Contains(string(b), "frozen 1")
}

// joinCgroups moves process pid into the cgroups whose cgroup.procs files
// are given.
func joinCgroups(pid int, files []string) error {
	for _, f := range files {
		if err := os.WriteFile(f, []byte(strconv.Itoa(pid)), 0); err != nil {
			return fmt.Errorf("joining the container's cgroup: %w", err)
		}
	}
	return nil
}
