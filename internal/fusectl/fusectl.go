// Package fusectl lets tests see and end the kernel's FUSE connections
// (the fusectl filesystem, /sys/fs/fuse/connections): which connections
// a process's mounts use, whether a connection outlives its mounts, and
// aborting one that wedged, which ends every request waiting on it.
package fusectl

import (
	"bufio"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// hostDir is where fusectl is mounted on most hosts.
const hostDir = "/sys/fs/fuse/connections"

// fusectlMagic is fusectl's statfs type.
const fusectlMagic = 0x65735543

var (
	dirOnce sync.Once
	dir     string
	dirErr  error
)

// Dir returns a directory that shows every FUSE connection of the
// kernel: the host's fusectl, or, where the host has none mounted, one
// that a process of this package keeps mounted in a mount namespace of
// its own for as long as the calling process lives. The one directory
// for the whole process keeps a connection's directory the same while it
// lives (each mount of fusectl makes them anew).
func Dir() (string, error) {
	dirOnce.Do(func() {
		var fs unix.Statfs_t
		if unix.Statfs(hostDir, &fs) == nil && fs.Type == fusectlMagic {
			dir = hostDir
			return
		}
		cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
			"mount -t fusectl fusectl "+hostDir+" && echo mounted && exec sleep infinity")
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		out, err := cmd.StdoutPipe()
		if err != nil {
			dirErr = err
			return
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			dirErr = fmt.Errorf("mounting fusectl: %w", err)
			return
		}
		line, _ := bufio.NewReader(out).ReadString('\n')
		if line != "mounted\n" {
			cmd.Process.Kill()
			cmd.Wait()
			dirErr = fmt.Errorf("mounting fusectl in a mount namespace of its own failed")
			return
		}
		dir = fmt.Sprintf("/proc/%d/root%s", cmd.Process.Pid, hostDir)
	})
	return dir, dirErr
}

// Conn is one FUSE connection: its name in fusectl (the minor number of
// its mounts' device) and the inode of its directory there, which tells
// it from a later connection that took the same number.
type Conn struct {
	Name  string
	Inode uint64
}

func (c Conn) String() string { return "FUSE connection " + c.Name }

// Mounted returns the names of the FUSE connections that the mounts in
// the mount namespace of process pid use; none once it is gone.
func Mounted(pid int) []string {
	return mountedWhere(pid, func(string) bool { return true })
}

// MountedAt returns the name of the FUSE connection mounted at mnt in the
// mount namespace of process pid, "" if none is.
func MountedAt(pid int, mnt string) string {
	names := mountedWhere(pid, func(at string) bool { return at == mnt })
	if len(names) == 0 {
		return ""
	}
	return names[len(names)-1]
}

func mountedWhere(pid int, at func(string) bool) []string {
	f, err := os.Open(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		return nil
	}
	defer f.Close()
	var names []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 || !at(fields[4]) {
			continue
		}
		for i, fl := range fields {
			if fl == "-" && i+1 < len(fields) && strings.HasPrefix(fields[i+1], "fuse") {
				if _, minor, ok := strings.Cut(fields[2], ":"); ok {
					names = append(names, minor)
				}
			}
		}
	}
	return names
}

// Lookup returns the live connection named name; ok is false when the
// kernel has none by that name.
func Lookup(name string) (c Conn, ok bool, err error) {
	if name == "" {
		return Conn{}, false, nil
	}
	d, err := Dir()
	if err != nil {
		return Conn{}, false, err
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(d, name), &st); err != nil {
		if err == unix.ENOENT {
			return Conn{}, false, nil
		}
		return Conn{}, false, err
	}
	return Conn{Name: name, Inode: st.Ino}, true, nil
}

// Alive reports whether c still exists: the same connection, not a later
// one that took its number.
func Alive(c Conn) (bool, error) {
	now, ok, err := Lookup(c.Name)
	return ok && now.Inode == c.Inode, err
}

// Reused reports whether c is gone and a later connection has its number.
func Reused(c Conn) bool {
	now, ok, _ := Lookup(c.Name)
	return ok && now.Inode != c.Inode
}

// Abort ends connection c if it still exists: every request waiting on
// it fails, and its mounts answer ENOTCONN.
func Abort(c Conn) error {
	if alive, err := Alive(c); err != nil || !alive {
		return err
	}
	d, err := Dir()
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(d, c.Name, "abort"), []byte("1"), 0)
}

// Leaked returns those of conns that still exist, after grace, though no
// process's mount namespace mounts them: something keeps them, a process
// that holds /dev/fuse open or a file of theirs. For each, it says what
// holds it, as far as /proc tells.
func Leaked(conns []Conn, grace time.Duration) ([]string, error) {
	deadline := time.Now().Add(grace)
	for {
		var leaks []Conn
		for _, c := range conns {
			alive, err := Alive(c)
			if err != nil {
				return nil, err
			}
			if alive && !mountedAnywhere(c.Name) {
				leaks = append(leaks, c)
			}
		}
		if len(leaks) == 0 {
			return nil, nil
		}
		if time.Now().After(deadline) {
			var out []string
			for _, c := range leaks {
				out = append(out, fmt.Sprintf("%v (held by: %s)", c, holders(c.Name)))
			}
			return out, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// mountedAnywhere reports whether a process's mount namespace mounts the
// connection named name.
func mountedAnywhere(name string) bool {
	pids, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range pids {
		pid := 0
		fmt.Sscan(filepath.Base(p), &pid)
		for _, n := range Mounted(pid) {
			if n == name {
				return true
			}
		}
	}
	return false
}

// holders describes the processes that have a file, a working directory,
// a root or a mapping on the connection's device, or /dev/fuse open.
func holders(name string) string {
	var minor uint32
	fmt.Sscan(name, &minor)
	dev := unix.Mkdev(0, minor)
	var found []string
	pids, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range pids {
		comm, _ := os.ReadFile(p + "/comm")
		what := map[string]bool{}
		for _, l := range []string{"cwd", "root", "exe"} {
			var st unix.Stat_t
			if unix.Stat(p+"/"+l, &st) == nil && st.Dev == dev {
				what[l] = true
			}
		}
		fds, _ := filepath.Glob(p + "/fd/*")
		for _, fd := range fds {
			if target, _ := os.Readlink(fd); target == "/dev/fuse" {
				what["/dev/fuse"] = true
				continue
			}
			var st unix.Stat_t
			if unix.Stat(fd, &st) == nil && st.Dev == dev {
				what["fd "+filepath.Base(fd)] = true
			}
		}
		if maps, err := os.ReadFile(p + "/maps"); err == nil && strings.Contains(string(maps), fmt.Sprintf(" 00:%02x ", minor)) {
			what["mapping"] = true
		}
		if len(what) > 0 {
			found = append(found, fmt.Sprintf("%s %s [%s]", filepath.Base(p), strings.TrimSpace(string(comm)), strings.Join(slices.Sorted(maps.Keys(what)), " ")))
		}
	}
	if len(found) == 0 {
		return "no process"
	}
	return strings.Join(found, "; ")
}
