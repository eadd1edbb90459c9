// Package attach owns `mkbootfs attach`: it finds a running container (by
// docker name or ID, podman or containerd when their CLI is installed, or
// pid:N), pins its main process with a pidfd, and runs a shell or command
// in the container's pid, net, ipc, uts and cgroup namespaces and cgroups,
// with a tools tree as its root: a converted tools image mounted with lazyfs
// (read-only, under a throwaway writable layer on a tmpfs), so only the
// bytes the session reads are fetched, or else the host's root (read-only).
// The container's own root, with its submounts, is at ContainerDir; its
// /proc, /dev, /sys, /etc/resolv.conf, /etc/hosts, /etc/hostname,
// /etc/passwd and /etc/group are bound over the tools tree, so ps, DNS and
// user names are the container's.
//
// # Processes
//
// The attach process serves the tools image (the FUSE server and its chunk
// cache live on the host) and starts a session process: its own binary
// again (see sessionName), forked by a thread that has joined the
// container's namespaces, so that it runs in the container's PID namespace;
// the attach process moves it into the container's cgroups. The session
// process enters the container's mount namespace, makes a new one as its
// child (mounts propagate from the container into the session, never back),
// mounts the tools tree there and pivots into it, then starts the command
// and reaps. The FUSE mount exists only in that namespace.
//
// # Rights
//
// The command runs as root with the container's capability bounding set
// plus CAP_SYS_PTRACE, so `strace -p 1` and `gdb -p 1` work on the
// container's processes. Like nsenter, and unlike `docker exec`, it is not
// under the container's seccomp filter, LSM profile or no_new_privs: it is
// the operator's tool, brought in from outside; ptrace needs the tracer's
// capability, and the tracee's seccomp filter does not apply to being
// traced.
//
// # Nothing left behind
//
// When the command exits, the session process kills whatever it left
// running in the session's mount namespace and reaps it; the namespace,
// and with it every mount of the session, goes with its last process. If
// the attach process dies, its end of the session socket closes and the
// session process ends the session the same way; its FUSE connection dies
// with it, so nothing can hang on the mount. The container's mount table
// and filesystem are never written: writes go to the session's tmpfs.
package attach

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/lazyfs"
	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/local"
	"github.com/mkbootfs/mkbootfs/store/location"
)

// DefaultCacheDir is the node's chunk cache, shared with other mounts.
const DefaultCacheDir = "/var/lib/mkbootfs/cache"

// Options configure a session.
type Options struct {
	// Target names the container: a docker name or ID (prefix), podman:X
	// or containerd:NAMESPACE/ID, or pid:N.
	Target string
	// Tools is the tools tree (see LoadTools); empty: the host's root.
	Tools string
	// Stores override the chunk stores the tools image records.
	Stores []string
	// CacheDir keeps fetched chunks, shared with other mounts; empty: no
	// cache. Stores that are all local directories are read directly.
	CacheDir string
	// Command is what to run; empty: a shell (bash, else sh).
	Command []string
	// NoTTY runs the command on our own stdin, stdout and stderr even when
	// they are terminals; otherwise a terminal is made for it then.
	NoTTY bool
	// Stdin, Stdout and Stderr default to the process's.
	Stdin, Stdout, Stderr *os.File
	// Lazy configures the tools mount. A zero Readahead means none here:
	// a session reads its binaries by page faults, scattered, and reading
	// ahead of them fetched twice the bytes for gdb (115 MB decoded against
	// 58), and made what a session fetches depend on timing.
	Lazy lazyfs.Options
}

// sessionReadAhead is the kernel's readahead on the tools mount: a session
// page-faults its binaries in, scattered, and each fault reads this much
// around it. 32 KiB against the default 128 KiB cut what the ps, strace
// and gdb session of TestAttachFetchesLittle fetches from 19.9 to 17.8 MB.
const sessionReadAhead = 32 << 10

// Result is a finished session.
type Result struct {
	// ExitCode is the command's: its status, or 128+N for signal N.
	ExitCode  int
	Container Container
	Tools     *Tools
	// Stats are the tools mount's; nil for the host's root.
	Stats *lazyfs.Stats
	// ImageBytes is the size of the tools image's file data.
	ImageBytes int64
}

// ExitError is a session whose command could not be run. Code is the exit
// code to give, as docker's: 125 the session failed, 126 the command
// cannot run, 127 it does not exist.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// sessionGrace bounds the wait, after the session process has ended, for
// what it held to go: the terminal's last output, the tools mount.
const sessionGrace = 10 * time.Second

// Run attaches to o.Target, runs the command and returns when the session
// is over and its processes and mounts are gone.
func Run(ctx context.Context, o Options) (*Result, error) {
	if o.Stdin == nil {
		o.Stdin = os.Stdin
	}
	if o.Stdout == nil {
		o.Stdout = os.Stdout
	}
	if o.Stderr == nil {
		o.Stderr = os.Stderr
	}
	c, eng, err := find(ctx, o.Target, engines())
	if err != nil {
		return nil, err
	}
	p, err := pin(ctx, c, eng)
	if err != nil {
		return nil, err
	}
	defer p.close()
	in, err := p.info()
	if err != nil {
		return nil, err
	}
	defer in.root.Close()
	tools, err := LoadTools(ctx, o.Tools)
	if err != nil {
		return nil, err
	}
	a := &attachment{o: o, target: p, info: in, tools: tools, ctty: -1}
	res := &Result{Container: c, Tools: tools}
	defer a.close()
	if err := a.prepare(ctx); err != nil {
		return nil, err
	}
	if err := a.start(ctx); err != nil {
		return nil, err
	}
	res.ExitCode, err = a.session()
	if a.srv != nil {
		st := a.srv.Stats()
		res.Stats = &st
		for _, ch := range tools.Index.Chunks {
			res.ImageBytes += int64(ch.Size)
		}
	}
	return res, err
}

// attachment is one session, seen from the attach process.
type attachment struct {
	o      Options
	target *pinned
	info   *targetInfo
	tools  *Tools

	st   store.Store // the tools image's chunks
	fs   *lazyfs.FS  // the tools image
	fuse *os.File    // its /dev/fuse connection
	srv  *lazyfs.Server

	tty  bool
	ctty int // without tty: our stdio descriptor the command takes the foreground of
	conn *net.UnixConn
	proc *os.Process
	// waited gets the session process's end.
	waited chan error
	// msgs are the session process's messages, once the session runs.
	msgs   chan message
	ns     nsIdent
	master *os.File // the command's terminal
}

// prepare opens what the session needs on the host side.
func (a *attachment) prepare(ctx context.Context) error {
	a.tty = !a.o.NoTTY && isTerminal(a.o.Stdin) && isTerminal(a.o.Stdout)
	if !a.tty {
		a.ctty = foregroundTerminal([3]*os.File{a.o.Stdin, a.o.Stdout, a.o.Stderr})
	}
	if a.tools.Index == nil {
		// The mount point in the host's root, which the session sees read-only.
		return os.MkdirAll(ContainerDir, 0o755)
	}
	var err error
	if a.st, err = openStore(ctx, a.tools, a.o); err != nil {
		return err
	}
	lo := a.o.Lazy
	if lo.Readahead == 0 {
		lo.Readahead = -1
	}
	if lo.Log == nil {
		lo.Log = log.New(a.o.Stderr, "mkbootfs: ", 0)
	}
	a.fs = lazyfs.New(a.tools.Index, a.st, lo)
	if a.fuse, err = os.OpenFile("/dev/fuse", os.O_RDWR, 0); err != nil {
		return fmt.Errorf("opening /dev/fuse to serve the tools image: %w (is the fuse module loaded?)", err)
	}
	return nil
}

// openStore opens the tools image's chunk stores, through the cache.
func openStore(ctx context.Context, t *Tools, o Options) (store.Store, error) {
	urls := o.Stores
	if len(urls) == 0 {
		urls = t.Stores
	}
	if len(urls) == 0 {
		return nil, fmt.Errorf("tools image %s records no chunk store; give one with --store", t.Source)
	}
	remote, err := location.OpenList(ctx, urls, location.Options{Timeout: 30 * time.Second, Parallelism: 8})
	if err != nil {
		return nil, err
	}
	allLocal := true
	for _, u := range urls {
		allLocal = allLocal && (!strings.Contains(u, "://") || strings.HasPrefix(u, "file://"))
	}
	if o.CacheDir == "" || allLocal {
		return remote, nil // already on this node: a cache would only copy it
	}
	dir, err := local.Open(o.CacheDir, true)
	if err != nil {
		remote.Close()
		return nil, fmt.Errorf("chunk cache: %w", err)
	}
	c, err := store.NewCache(dir, remote)
	if err != nil {
		dir.Close()
		remote.Close()
		return nil, err
	}
	return c, nil
}

// start starts the session process and takes it through the setup, until
// the command runs.
func (a *attachment) start(ctx context.Context) error {
	conn, theirs, err := socketPair()
	if err != nil {
		return err
	}
	a.conn = conn
	defer theirs.Close()
	pidfd, err := unix.FcntlInt(uintptr(a.target.pidfd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return err
	}
	pidf := os.NewFile(uintptr(pidfd), "pidfd")
	defer pidf.Close()
	stdio := []*os.File{a.o.Stdin, a.o.Stdout, a.o.Stderr}
	if a.tty {
		// The command gets a terminal of its own; the session process
		// needs none of ours.
		null, err := os.Open(os.DevNull)
		if err != nil {
			return err
		}
		defer null.Close()
		stdio = []*os.File{null, null, null}
	}
	files := append(stdio, theirs, pidf, a.info.root)
	if a.fuse != nil {
		files = append(files, a.fuse)
	}
	if a.proc, err = startSession(a.target, files); err != nil {
		return fmt.Errorf("starting the session in %s: %w", a.target.what, err)
	}
	a.waited = make(chan error, 1)
	go func() {
		st, err := a.proc.Wait()
		if err == nil && !st.Success() {
			err = errors.New(st.String())
		}
		a.waited <- err
	}()
	// Until the command runs, a cancelled ctx (an interrupt) ends the setup.
	stop := context.AfterFunc(ctx, func() { a.conn.SetDeadline(time.Now()) })
	defer stop()
	if err := joinCgroups(a.proc.Pid, a.info.cgroupProcs); err != nil {
		return err
	}
	cfg := &sessionConfig{
		Source: a.tools.Source,
		Image:  a.tools.Index != nil,
		Argv:   a.o.Command,
		Env:    sessionEnviron(a.info.env, a.tools.Path, a.tty),
		Path:   a.tools.Path,
		Caps:   a.info.capBnd | 1<<unix.CAP_SYS_PTRACE,
		TTY:    a.tty,
		Ctty:   a.ctty,
	}
	if a.tty {
		cfg.Winsize = winsize(a.o.Stdout)
	}
	if err := send(a.conn, message{Config: cfg}); err != nil {
		return a.setupErr(ctx, err)
	}
	if cfg.Image {
		if _, err := a.expect(ctx, func(m message) bool { return m.Mounted }); err != nil {
			return err
		}
		// The session process mounted our connection in its namespace:
		// serve it, on a descriptor of the server's own.
		fd, err := unix.FcntlInt(a.fuse.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return err
		}
		a.fuse.Close()
		a.fuse = nil
		if a.srv, err = lazyfs.Mount(fmt.Sprintf("/dev/fd/%d", fd), a.fs, lazyfs.MountOptions{AllowOther: true, MaxReadAhead: sessionReadAhead}); err != nil {
			return fmt.Errorf("serving the tools image: %w", err)
		}
		if err := send(a.conn, message{Serving: true}); err != nil {
			return a.setupErr(ctx, err)
		}
	}
	files, err = a.expect(ctx, func(m message) bool {
		if m.Ready == nil {
			return false
		}
		a.ns = m.Ready.MountNS
		for _, w := range m.Ready.Warnings {
			fmt.Fprintln(a.o.Stderr, "mkbootfs:", w)
		}
		return true
	})
	if err != nil {
		return err
	}
	if a.tty {
		if len(files) != 1 {
			return errors.New("the session process sent no terminal")
		}
		a.master = files[0]
	}
	if !stop() {
		return a.setupErr(ctx, ctx.Err())
	}
	a.msgs = make(chan message, 8)
	go func() {
		defer close(a.msgs)
		for {
			m, files, err := recv(a.conn)
			for _, f := range files {
				f.Close()
			}
			if err != nil {
				return
			}
			a.msgs <- m
		}
	}()
	return nil
}

// startSession forks the session process from a thread that has joined
// the target's namespaces (those of joined that differ, through its
// pidfd); the thread is never given back, and ends with its goroutine.
func startSession(target *pinned, files []*os.File) (*os.Process, error) {
	type started struct {
		p   *os.Process
		err error
	}
	ch := make(chan started, 1)
	go func() {
		runtime.LockOSThread()
		flags := 0
		for _, ns := range joined {
			same, err := sameNS(ns.name, target.pid)
			if err != nil {
				ch <- started{nil, target.procErr(err)}
				return
			}
			if !same {
				flags |= ns.flag
			}
		}
		if flags != 0 {
			if err := unix.Setns(target.pidfd, flags); err != nil {
				if errors.Is(err, unix.ESRCH) {
					err = target.alive()
				} else {
					err = fmt.Errorf("joining the container's namespaces: %w", err)
				}
				ch <- started{nil, err}
				return
			}
		}
		// Our own binary, from the host's filesystem: this thread did not
		// join the container's mount namespace.
		p, err := os.StartProcess("/proc/self/exe", []string{sessionName}, &os.ProcAttr{
			Files: files,
			Env:   []string{sessionEnv + "=1"},
		})
		ch <- started{p, err}
	}()
	s := <-ch
	return s.p, s.err
}

// expect waits for a message that ok accepts; an error message, the
// session process's end or ctx's end is an error.
func (a *attachment) expect(ctx context.Context, ok func(message) bool) ([]*os.File, error) {
	m, files, err := recv(a.conn)
	if err != nil {
		return nil, a.setupErr(ctx, err)
	}
	if m.Error != "" {
		<-a.waited
		return nil, &ExitError{Code: m.Code, Err: fmt.Errorf("attaching to %s: %s", a.target.what, m.Error)}
	}
	if !ok(m) {
		return nil, fmt.Errorf("attaching to %s: unexpected message from the session process: %+v", a.target.what, m)
	}
	return files, nil
}

// setupErr explains a broken conversation with the session process.
func (a *attachment) setupErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("attaching to %s: %w", a.target.what, ctx.Err())
	}
	if werr := <-a.waited; werr != nil {
		err = fmt.Errorf("the session process ended (%v)", werr)
	}
	if aerr := a.target.alive(); aerr != nil {
		return aerr
	}
	return fmt.Errorf("attaching to %s: %w", a.target.what, err)
}

// sessionEnviron is the container's environment with the tools tree's
// PATH, and a TERM for a new terminal.
func sessionEnviron(env []string, path string, tty bool) []string {
	out := []string{"PATH=" + path}
	hasTerm := false
	for _, e := range env {
		if strings.HasPrefix(e, "PATH=") {
			continue
		}
		hasTerm = hasTerm || strings.HasPrefix(e, "TERM=")
		out = append(out, e)
	}
	if tty && !hasTerm {
		term := os.Getenv("TERM")
		if term == "" {
			term = "xterm"
		}
		out = append(out, "TERM="+term)
	}
	return out
}

// session relays signals and the terminal until the session is over, and
// returns the command's exit code.
func (a *attachment) session() (int, error) {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, unix.SIGINT, unix.SIGTERM, unix.SIGHUP, unix.SIGQUIT, unix.SIGWINCH)
	defer signal.Stop(sigs)
	var output chan struct{}
	if a.tty {
		restore, err := makeRaw(a.o.Stdin)
		if err != nil {
			return 0, fmt.Errorf("terminal: %w", err)
		}
		defer restore()
		go io.Copy(a.master, a.o.Stdin)
		output = make(chan struct{})
		go func() {
			io.Copy(a.o.Stdout, a.master) // until EIO: every holder of the terminal is gone
			close(output)
		}()
	}
	code := -1
	msgs := a.msgs
	for msgs != nil {
		select {
		case s := <-sigs:
			if s == unix.SIGWINCH {
				if a.tty {
					if ws := winsize(a.o.Stdout); ws != nil {
						unix.IoctlSetWinsize(int(a.master.Fd()), unix.TIOCSWINSZ, ws)
					}
				}
				continue
			}
			send(a.conn, message{Signal: int(s.(syscall.Signal))})
		case m, ok := <-msgs:
			if !ok {
				msgs = nil
			} else if m.Exit != nil {
				code = *m.Exit
			}
		}
	}
	werr := <-a.waited
	// Should the session process have died before ending the session,
	// whatever is left of it goes now.
	killNS("/proc", -1, a.ns)
	if output != nil {
		select {
		case <-output:
		case <-time.After(sessionGrace):
		}
	}
	if a.ctty >= 0 {
		takeForeground([3]*os.File{a.o.Stdin, a.o.Stdout, a.o.Stderr}[a.ctty])
	}
	if a.srv != nil {
		// The mount went with the session's namespace.
		done := make(chan struct{})
		go func() { a.srv.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(sessionGrace):
			fmt.Fprintln(a.o.Stderr, "mkbootfs: the session's mount namespace outlives the session (a process outside it holds it); its tools mount ends with this process")
		}
	}
	if code < 0 {
		return exitSetup, &ExitError{Code: exitSetup, Err: fmt.Errorf("the session process in %s died: %v", a.target.what, werr)}
	}
	return code, nil
}

func (a *attachment) close() {
	if a.proc != nil {
		// Still running only when the setup failed: nothing of the
		// session runs yet, and its namespace goes with it.
		a.proc.Kill()
	}
	if a.conn != nil {
		a.conn.Close()
	}
	if a.master != nil {
		a.master.Close()
	}
	if a.fuse != nil {
		a.fuse.Close()
	}
	if a.st != nil {
		a.st.Close()
	}
}
