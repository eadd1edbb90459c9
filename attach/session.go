package attach

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/lazyfs"
)

// The session process is the attach command's own binary, started again
// under the name sessionName by a thread of the attach process that has
// joined the container's pid, net, ipc, uts and cgroup namespaces: it runs
// in the container's PID namespace. It builds the session's mount
// namespace, starts the command, reaps, and ends the session. It is not a
// FUSE server, so it may exec binaries that live on the tools mount: the
// attach process, which serves that mount, never does (see bootinit's
// runApp for the deadlock that would be).
const sessionName = "mkbootfs-attach"

// sessionEnv, set to 1, marks the session process, with sessionName.
const sessionEnv = "MKBOOTFS_ATTACH_SESSION"

// Descriptors the session process starts with, after stdin, stdout, stderr.
const (
	fdConn  = 3 + iota // the socket to the attach process
	fdPidfd            // the target process
	fdRoot             // the target's root directory
	fdFuse             // /dev/fuse, for a lazyfs tools tree
)

// ContainerDir is where a session shows the container's own root.
const ContainerDir = "/var/lib/mkbootfs/container"

// What of the container a session binds over the tools tree: the
// container's processes, devices and kernel view, and its DNS, host name
// and users.
var (
	containerDirs  = []string{"/proc", "/dev", "/sys"}
	containerFiles = []string{"/etc/resolv.conf", "/etc/hosts", "/etc/hostname", "/etc/passwd", "/etc/group"}
)

// Exit codes for a session that cannot run its command, as docker's.
const (
	exitSetup    = 125
	exitNotExec  = 126
	exitNotFound = 127
)

// init runs the session process: it must lock its main thread before
// anything else runs on it (the mount namespace it enters is the thread's,
// and the command is forked from that thread), and both the mkbootfs binary
// and test binaries start it, so the package takes it over at init.
func init() {
	if len(os.Args) != 1 || os.Args[0] != sessionName || os.Getenv(sessionEnv) != "1" {
		return
	}
	runtime.LockOSThread()
	os.Exit(sessionMain())
}

type session struct {
	conn     *net.UnixConn
	cfg      *sessionConfig
	warnings []string
	msgs     chan message // from the attach process; closed when it is gone
}

type setupError struct {
	code int
	err  error
}

func (e *setupError) Error() string { return e.err.Error() }

func sessionMain() int {
	// Named in ps as in argv, not "exe" (our binary ran as /proc/self/exe).
	if name, err := unix.BytePtrFromString(sessionName); err == nil {
		unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(name)), 0, 0, 0)
	}
	// Nothing but stdin, stdout and stderr may reach the command: neither
	// what the attach process passed, nor what it had inherited.
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		fmt.Fprintln(os.Stderr, "mkbootfs attach session:", err)
		return exitSetup
	}
	conn, err := fileConn(os.NewFile(fdConn, "attach-socket"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkbootfs attach session:", err)
		return exitSetup
	}
	s := &session{conn: conn}
	code, err := s.run()
	if err != nil {
		se := &setupError{code: exitSetup, err: err}
		errors.As(err, &se)
		send(conn, message{Error: err.Error(), Code: se.code})
		return se.code
	}
	return code
}

func (s *session) run() (int, error) {
	m, _, err := recv(s.conn)
	if err != nil || m.Config == nil {
		return 0, fmt.Errorf("no config from the attach process: %v", err)
	}
	s.cfg = m.Config
	// The attach process forwards the signals meant for the command; the
	// ones that reach this process directly (its process group's) are not
	// for it. Caught, not ignored, so the command starts with them default.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, unix.SIGINT, unix.SIGTERM, unix.SIGHUP, unix.SIGQUIT)
	go func() {
		for range sigs {
		}
	}()
	s.msgs = make(chan message, 8)
	if err := s.enter(); err != nil {
		return 0, err
	}
	// Orphans of the session become ours, to reap and to end with it.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return 0, err
	}
	if err := dropCaps(s.cfg.Caps); err != nil {
		return 0, err
	}
	ns, err := nsID("/proc/thread-self/ns/mnt")
	if err != nil {
		return 0, err
	}
	proc, master, err := s.start()
	if err != nil {
		return 0, err
	}
	var fds []int
	if master != nil {
		fds = []int{int(master.Fd())}
	}
	err = send(s.conn, message{Ready: &ready{MountNS: ns, Warnings: s.warnings}}, fds...)
	if master != nil {
		master.Close()
	}
	go s.read()
	if err != nil {
		proc.Kill()
	}
	return s.supervise(proc, ns), nil
}

// read passes the attach process's messages on, and closes msgs when it
// is gone.
func (s *session) read() {
	for {
		m, files, err := recv(s.conn)
		for _, f := range files {
			f.Close()
		}
		if err != nil {
			close(s.msgs)
			return
		}
		s.msgs <- m
	}
}

// enter builds the session's mount namespace and moves this thread into
// it: a new child of the container's, with the tools tree as its root.
func (s *session) enter() error {
	// The host's root is cloned while this thread still sees it.
	hostTree := -1
	if !s.cfg.Image {
		var err error
		if hostTree, err = unix.OpenTree(unix.AT_FDCWD, "/", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE); err != nil {
			return fmt.Errorf("cloning the host's root: %w", err)
		}
		defer unix.Close(hostTree)
		ro := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}
		if err := unix.MountSetattr(hostTree, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &ro); err != nil {
			return fmt.Errorf("making the host's root read-only for the session: %w", err)
		}
	}
	// setns into a mount namespace needs a thread that shares its root and
	// working directory with no other.
	if err := unix.Unshare(unix.CLONE_FS); err != nil {
		return fmt.Errorf("unshare(CLONE_FS): %w", err)
	}
	if err := unix.Setns(fdPidfd, unix.CLONE_NEWNS); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return errors.New("the container's process exited while attaching")
		}
		return fmt.Errorf("joining the container's mount namespace: %w", err)
	}
	// The target's root, which need not be its namespace's.
	if err := unix.Fchdir(fdRoot); err != nil {
		return err
	}
	if err := unix.Chroot("."); err != nil {
		return err
	}
	unix.Close(fdRoot)
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("making the session's mount namespace: %w", err)
	}
	// Mounts propagate from the container to the session, never back.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return fmt.Errorf("making the session's mounts slaves: %w", err)
	}
	container, err := unix.OpenTree(unix.AT_FDCWD, "/", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
	if err != nil {
		return fmt.Errorf("cloning the container's root: %w", err)
	}
	defer unix.Close(container)

	// A scratch tmpfs, stacked on the container's root in this namespace
	// only, holds the mount points and the tools tree's writable layer.
	if err := enterScratch(); err != nil {
		return err
	}
	for _, d := range []string{"lower", "upper", "work", "root"} {
		if err := unix.Mkdir("/"+d, 0o755); err != nil {
			return err
		}
	}
	if s.cfg.Image {
		if err := s.mountImage(); err != nil {
			return err
		}
	} else {
		if err := moveMount(hostTree, unix.AT_FDCWD, "/root"); err != nil {
			return fmt.Errorf("mounting the host's root: %w", err)
		}
		// The host's root is read-only; /tmp is the session's own.
		if err := unix.Mount("tmpfs", "/root/tmp", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777"); err != nil {
			return fmt.Errorf("mounting /tmp: %w", err)
		}
	}
	root, err := unix.Open("/root", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(root)
	if err := s.showContainer(root, container); err != nil {
		return err
	}
	// The tools tree becomes /; the scratch tmpfs goes (the overlay keeps
	// its layers).
	if err := unix.Fchdir(root); err != nil {
		return err
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root into the tools tree: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detaching the scratch tree: %w", err)
	}
	return unix.Chdir("/")
}

// enterScratch mounts a new tmpfs over / and makes it this thread's root.
func enterScratch() error {
	fsfd, err := unix.Fsopen("tmpfs", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("scratch tmpfs: %w", err)
	}
	defer unix.Close(fsfd)
	if err := unix.FsconfigSetString(fsfd, "mode", "0755"); err != nil {
		return fmt.Errorf("scratch tmpfs: %w", err)
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return fmt.Errorf("scratch tmpfs: %w", err)
	}
	mnt, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("scratch tmpfs: %w", err)
	}
	defer unix.Close(mnt)
	if err := moveMount(mnt, unix.AT_FDCWD, "/"); err != nil {
		return fmt.Errorf("scratch tmpfs: %w", err)
	}
	if err := unix.Fchdir(mnt); err != nil {
		return err
	}
	return unix.Chroot(".")
}

// mountImage mounts the attach process's FUSE connection at /lower, waits
// for it to serve, and stacks the writable layer on it at /root.
func (s *session) mountImage() error {
	if err := unix.Mount(s.cfg.Source, "/lower", "fuse.mkbootfs", unix.MS_RDONLY, lazyfs.DeviceOptions(fdFuse)); err != nil {
		return fmt.Errorf("mounting the tools image: %w", err)
	}
	// Only the attach process may hold the connection: its death must
	// end the mount.
	unix.Close(fdFuse)
	if err := send(s.conn, message{Mounted: true}); err != nil {
		return err
	}
	m, _, err := recv(s.conn)
	if err != nil || !m.Serving {
		return fmt.Errorf("the attach process did not serve the tools image: %v", err)
	}
	if err := unix.Mount("overlay", "/root", "overlay", 0, "lowerdir=/lower,upperdir=/upper,workdir=/work"); err != nil {
		return fmt.Errorf("mounting the writable layer over the tools image: %w", err)
	}
	return nil
}

// showContainer mounts the container's root (a clone, with its submounts)
// at ContainerDir in the tools tree, and binds its /proc, /dev, /sys and
// identity files over the tools tree's.
func (s *session) showContainer(root, container int) error {
	dir, err := mountPoint(root, ContainerDir, true)
	if err != nil {
		return fmt.Errorf("making %s in the tools tree: %w", ContainerDir, err)
	}
	err = moveMount(container, dir, "")
	unix.Close(dir)
	if err != nil {
		return fmt.Errorf("mounting the container's root at %s: %w", ContainerDir, err)
	}
	// Opened again: the descriptor of the mount point is below the mount.
	ctr, err := openIn(root, ContainerDir, unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return err
	}
	defer unix.Close(ctr)
	for _, p := range containerDirs {
		if err := s.bind(ctr, root, p, true); err != nil {
			return err
		}
	}
	for _, p := range containerFiles {
		if err := s.bind(ctr, root, p, false); err != nil {
			return err
		}
	}
	return nil
}

// bind mounts the container's p, with its submounts, over p in the tools
// tree. Symlinks resolve inside each tree. What the container lacks is
// left alone; what the tools tree cannot take is a warning.
func (s *session) bind(ctr, root int, p string, dir bool) error {
	flags := unix.O_PATH
	if dir {
		flags |= unix.O_DIRECTORY
	}
	src, err := openIn(ctr, p, flags)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("the container's %s: %w", p, err)
	}
	defer unix.Close(src)
	clone, err := unix.OpenTree(src, "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE|unix.AT_EMPTY_PATH)
	if err != nil {
		return fmt.Errorf("cloning the container's %s: %w", p, err)
	}
	defer unix.Close(clone)
	dst, err := mountPoint(root, p, dir)
	if err != nil {
		s.warnings = append(s.warnings, fmt.Sprintf("the session shows the tools image's %s, not the container's: %v", p, err))
		return nil
	}
	defer unix.Close(dst)
	if err := moveMount(clone, dst, ""); err != nil {
		return fmt.Errorf("mounting the container's %s: %w", p, err)
	}
	return nil
}

// moveMount attaches the detached mount tree mnt at dirfd/p ("" for dirfd itself).
func moveMount(mnt, dirfd int, p string) error {
	flags := unix.MOVE_MOUNT_F_EMPTY_PATH
	if p == "" {
		flags |= unix.MOVE_MOUNT_T_EMPTY_PATH
	}
	return unix.MoveMount(mnt, "", dirfd, p, flags)
}

// openIn opens p resolving every component, symlinks included, inside the
// tree of root, as if it were /.
func openIn(root int, p string, flags int) (int, error) {
	how := &unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC), Resolve: unix.RESOLVE_IN_ROOT}
	if flags&unix.O_CREAT != 0 {
		how.Mode = 0o644 // openat2 takes a mode only to create
	}
	return unix.Openat2(root, strings.TrimPrefix(p, "/"), how)
}

// mountPoint opens p in the tree of root (O_PATH) to mount on, making it
// and its parents when missing: a directory, or an empty file.
func mountPoint(root int, p string, dir bool) (int, error) {
	flags := unix.O_PATH
	if dir {
		flags |= unix.O_DIRECTORY
	}
	fd, err := openIn(root, p, flags)
	if err == nil {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return -1, err
		}
		if !dir && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			unix.Close(fd)
			return -1, errors.New("a directory there")
		}
		return fd, nil
	}
	if !errors.Is(err, unix.ENOENT) {
		return -1, err
	}
	parent, err := mkdirAllIn(root, path.Dir(p))
	if err != nil {
		return -1, err
	}
	defer unix.Close(parent)
	if dir {
		if err := unix.Mkdirat(parent, path.Base(p), 0o755); err != nil {
			return -1, err
		}
	} else {
		// Through root again: a dangling symlink there is made to point
		// at the new file, inside the tree.
		f, err := openIn(root, p, unix.O_CREAT|unix.O_WRONLY)
		if err != nil {
			return -1, err
		}
		unix.Close(f)
	}
	return openIn(root, p, flags)
}

// mkdirAllIn makes directory p and its parents in the tree of root and
// returns it opened (O_PATH).
func mkdirAllIn(root int, p string) (int, error) {
	fd, err := unix.Dup(root)
	if err != nil {
		return -1, err
	}
	sofar := "/"
	for _, name := range strings.Split(strings.Trim(p, "/"), "/") {
		if name == "" {
			continue
		}
		next := path.Join(sofar, name)
		nfd, err := openIn(root, next, unix.O_PATH|unix.O_DIRECTORY)
		if errors.Is(err, unix.ENOENT) {
			if err = unix.Mkdirat(fd, name, 0o755); err == nil || errors.Is(err, unix.EEXIST) {
				nfd, err = openIn(root, next, unix.O_PATH|unix.O_DIRECTORY)
			}
		}
		unix.Close(fd)
		if err != nil {
			return -1, fmt.Errorf("%s: %w", next, err)
		}
		fd, sofar = nfd, next
	}
	return fd, nil
}

// dropCaps limits the capability bounding set of this thread, and so the
// capabilities of the root command forked from it, to keep; and clears the
// inheritable set, which would add to them.
func dropCaps(keep uint64) error {
	for c := 0; c < 64; c++ {
		if keep&(1<<c) != 0 {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
			if errors.Is(err, unix.EINVAL) {
				break // past the last capability this kernel knows
			}
			return fmt.Errorf("dropping capability %d: %w", c, err)
		}
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return err
	}
	data[0].Inheritable, data[1].Inheritable = 0, 0
	return unix.Capset(&hdr, &data[0])
}

// start starts the command in the tools tree, as root with the
// container's environment; with a TTY, on a new terminal of the
// container's devpts, whose master it returns.
func (s *session) start() (*os.Process, *os.File, error) {
	argv := s.cfg.Argv
	if len(argv) == 0 {
		argv = []string{"/bin/sh"}
		if _, err := os.Stat("/bin/bash"); err == nil {
			argv = []string{"/bin/bash"}
		}
	}
	// LookPath runs on this thread: it looks in the tools tree.
	os.Setenv("PATH", s.cfg.Path)
	exe, err := exec.LookPath(argv[0])
	if err != nil {
		code := exitNotFound
		if errors.Is(err, os.ErrPermission) {
			code = exitNotExec
		}
		return nil, nil, &setupError{code, fmt.Errorf("%s: not found in the tools tree %s (PATH %s): %w", argv[0], s.cfg.Source, s.cfg.Path, err)}
	}
	attr := &os.ProcAttr{
		Dir: "/",
		Env: s.cfg.Env,
		Sys: &syscall.SysProcAttr{
			Credential: &syscall.Credential{Uid: 0, Gid: 0},
			Pdeathsig:  syscall.SIGKILL, // this thread gone: the command goes too
		},
	}
	var master *os.File
	if s.cfg.TTY {
		var slave *os.File
		if master, slave, err = openPTY(s.cfg.Winsize); err != nil {
			return nil, nil, err
		}
		defer slave.Close()
		attr.Files = []*os.File{slave, slave, slave}
		attr.Sys.Setsid, attr.Sys.Setctty, attr.Sys.Ctty = true, true, 0
	} else {
		attr.Files = []*os.File{os.Stdin, os.Stdout, os.Stderr}
		// Its own process group: signals for the attach process's group
		// reach it once, through the attach process.
		attr.Sys.Setpgid = true
		if s.cfg.Ctty >= 0 {
			attr.Sys.Foreground, attr.Sys.Ctty = true, s.cfg.Ctty
		}
	}
	proc, err := os.StartProcess(exe, argv, attr)
	if err != nil {
		if master != nil {
			master.Close()
		}
		return nil, nil, &setupError{exitNotExec, fmt.Errorf("starting %s: %w", exe, err)}
	}
	return proc, master, nil
}

// openPTY opens a new terminal pair on the container's devpts.
func openPTY(ws *unix.Winsize) (master, slave *os.File, err error) {
	m, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("opening the container's /dev/ptmx for a terminal (%w); run with --no-tty", err)
	}
	master = os.NewFile(uintptr(m), "/dev/ptmx")
	if err := unix.IoctlSetPointerInt(m, unix.TIOCSPTLCK, 0); err != nil {
		master.Close()
		return nil, nil, fmt.Errorf("unlocking the terminal: %w", err)
	}
	if ws != nil {
		unix.IoctlSetWinsize(m, unix.TIOCSWINSZ, ws)
	}
	// TIOCGPTPEER opens the slave through the master, not by a path that
	// could be swapped.
	sfd, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(m), unix.TIOCGPTPEER, uintptr(unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC))
	if errno != 0 {
		master.Close()
		return nil, nil, fmt.Errorf("opening the terminal: %w", errno)
	}
	return master, os.NewFile(sfd, "pty"), nil
}

// supervise waits for the command, forwarding the signals the attach
// process sends and reaping orphans. When the command exits, or the attach
// process dies, it ends every process of the session and returns the
// command's exit code.
func (s *session) supervise(proc *os.Process, ns nsIdent) int {
	type exit struct {
		pid int
		ws  unix.WaitStatus
	}
	exits := make(chan exit, 16)
	go func() {
		defer close(exits)
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, 0, nil)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil { // ECHILD: every process of the session is gone
				return
			}
			exits <- exit{pid, ws}
		}
	}()
	code := exitSetup
	ending := false
	end := func() {
		ending = true
		killNS("/proc", os.Getpid(), ns)
	}
	msgs := s.msgs
	for {
		select {
		case m, ok := <-msgs:
			if !ok {
				msgs = nil // the attach process is gone: no one to report to
				s.conn = nil
				end()
				continue
			}
			if m.Signal != 0 {
				proc.Signal(syscall.Signal(m.Signal))
			}
		case e, ok := <-exits:
			if !ok {
				if s.conn != nil {
					send(s.conn, message{Exit: &code})
				}
				return code
			}
			if e.pid == proc.Pid {
				code = exitCode(e.ws)
				if !ending {
					end()
				}
			} else if ending {
				// A process that forked while the session ended.
				killNS("/proc", os.Getpid(), ns)
			}
		}
	}
}

// exitCode is a shell's $? for a wait status.
func exitCode(ws unix.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// killNS kills every process whose mount namespace is ns, found in the
// proc filesystem at procDir, except the one with PID self, until none is
// left. It returns how many it killed.
func killNS(procDir string, self int, ns nsIdent) int {
	killed := 0
	for pass := 0; pass < 1000; pass++ {
		found := 0
		entries, err := os.ReadDir(procDir)
		if err != nil {
			return killed
		}
		for _, e := range entries {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || pid == self {
				continue
			}
			if id, err := nsID(procDir + "/" + e.Name() + "/ns/mnt"); err == nil && id == ns {
				if unix.Kill(pid, unix.SIGKILL) == nil {
					found++
				}
			}
		}
		if found == 0 {
			return killed
		}
		killed += found
		// A killed process shows until it has exited; a next pass also
		// finds those that forked meanwhile.
		time.Sleep(10 * time.Millisecond)
	}
	return killed
}
