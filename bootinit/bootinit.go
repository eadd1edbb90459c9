// Package bootinit is PID 1 of a converted container. It mounts the image
// lazily (lazyfs over the chunk stores, through the node-shared cache),
// stacks a writable overlay on it (with, on a node that has started the
// image before, its boot tree between them: see tree.go), carries over
// every mount docker made, moves the result onto / so that the app and
// `docker exec` see the original image, and runs the original entrypoint
// as docker would have: same argv, env, user, working directory and TTY.
// It then forwards signals, reaps zombies and exits with the app's status.
//
// bootinit (PID 1) serves the lazy mount and never does I/O on it: its
// launcher, a second process, stacks the overlay, carries the mounts,
// switches root and becomes the app (see launch.go); its own root stays the
// boot layer, so no path it opens (cache, stores, DNS files) can resolve
// through its own FUSE mount, which would deadlock the container.
package bootinit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	godebug "runtime/debug"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/bootinit/bootconfig"
	"github.com/mkbootfs/mkbootfs/index"
	"github.com/mkbootfs/mkbootfs/lazyfs"
	"github.com/mkbootfs/mkbootfs/profile"
	"github.com/mkbootfs/mkbootfs/store"
)

// Exit codes for failures of bootinit itself, as docker uses them.
const (
	exitBoot     = 125 // the boot failed
	exitNotExec  = 126 // the command cannot be run
	exitNotFound = 127 // the command does not exist
)

// exitError carries an exit code with a message.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// Main boots the image and runs its command; it returns the exit code.
// args is os.Args: "bootinit -- ENTRYPOINT... CMD..." as the boot image's
// entrypoint runs it.
func Main(args []string) int {
	if premounted() {
		return runPremounted(args)
	}
	debug := os.Getenv(bootconfig.EnvDebug) == "1"
	logw := io.Discard
	if debug {
		logw = os.Stderr
	}
	b := &boot{log: log.New(logw, "bootinit: ", log.Lmicroseconds)}
	// The memory limit alone paces the collector: it keeps the FUSE
	// server's RSS small, and a boot, which decodes a few MB of chunks
	// over a live heap of a few MB, runs no collection at all (GOGC's
	// default ran several, in a warm `apt-get --version` about 15 ms of
	// the 200).
	godebug.SetMemoryLimit(lazyfs.MemoryLimit)
	godebug.SetGCPercent(-1)
	var code int
	var err error
	switch {
	case len(args) == 1 && args[0] == launcherName:
		if err = runLaunch(); errors.Is(err, errNoLaunch) {
			return exitBoot
		}
	case len(args) == 1 && args[0] == warmerName:
		err = runWarm()
	case len(args) > 0 && args[0] == treeMakerName:
		err = runTreeMaker(b.log, args)
	default:
		code, err = b.run(args)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bootinit:", err)
		var ee *exitError
		if errors.As(err, &ee) {
			return ee.code
		}
		return exitBoot
	}
	return code
}

type boot struct {
	log     *log.Logger
	srv     *lazyfs.Server
	profile *profile.Profile // the image's or the node's learned one, unless prefetch is off

	tree      string           // where the image's boot tree is or goes; "": none
	source    string           // the image converted, which a tree made is noted with
	treeInUse bool             // the boot trees stacked hold every file of the profile
	stacked   []string         // the trees stacked over the lazy mount, the top first: b.tree or others of the image's
	treeLacks *profile.Profile // files of the profile that b.tree leaves to the tree below it
	// When the start boots with a profile learned on this node: the
	// image's own tree, of its static profile otherProfile, and the tree
	// of the learned profile's files that it lacks, stacked over it.
	otherTree, deltaTree string
	otherProfile         *profile.Profile
	stopTree             func(wait time.Duration) // stops the tree maker, if one was started
	// The cache holds every chunk of the profile's files: a tree maker
	// can finish (set by the prefetch, once done).
	treeCanFinish bool
}

func (b *boot) run(args []string) (int, error) {
	// Until the app is launched, a signal that would end it ends the boot.
	fw := newForwarder()
	defer fw.stop()
	// Nothing of bootinit may be read by the container's processes: not
	// its memory, nor its files, root and mounts through /proc/1.
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return 0, fmt.Errorf("prctl: %w", err)
	}
	argv, err := command(args)
	if err != nil {
		return 0, err
	}
	dir, err := os.Getwd() // docker's working directory, to enter in the image
	if err != nil {
		dir = "/"
	}
	// Started as another user (docker run -u), bootinit's setuid and
	// setgid bits made only its effective user and group root: the real
	// ones are the app's, for the launcher to become again without
	// CAP_SETUID and CAP_SETGID.
	if unix.Geteuid() != 0 {
		return 0, errors.New("bootinit runs as root to mount the image, but runs as uid " +
			fmt.Sprint(unix.Geteuid()) + ": is --security-opt no-new-privileges set? It keeps bootinit's setuid bit from working")
	}
	app, err := appIdentity()
	if err != nil {
		return 0, err
	}
	privs, err := appPrivileges()
	if err != nil {
		return 0, err
	}
	if err := checkFUSE(); err != nil {
		return 0, err
	}
	lc, err := startLauncher()
	if err != nil {
		return 0, err
	}
	defer lc.close()
	cfg, err := bootconfig.Load(bootconfig.ConfigFile)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	x, err := index.ReadFile(bootconfig.Index)
	if err != nil {
		return 0, fmt.Errorf("reading the index: %w", err)
	}
	b.log.Printf("read the index (%d entries) in %v", len(x.Entries), time.Since(start).Round(time.Microsecond))
	st, err := openStores(cfg)
	if err != nil {
		return 0, err
	}
	rec, err := newRecording(x)
	if err != nil {
		return 0, err
	}
	prof, learning, err := b.learn(cfg, x, st, imageProfile(), rec != nil)
	if err != nil {
		return 0, err
	}
	tree, err := treePath(cfg)
	if err != nil {
		return 0, err
	}
	var treeChecked chan []string
	// The boot tree lives in the node cache, and a recording must see
	// every read.
	if _, ok := st.(*store.Cache); ok && rec == nil && tree != "" {
		other, _ := treePath(&bootconfig.Config{Tree: b.otherTree})
		delta, _ := treePath(&bootconfig.Config{Tree: b.deltaTree})
		var release func()
		treeChecked, release = b.pickTree(x, cfg.Source, trees{own: tree, other: other, delta: delta}, learning != nil)
		defer release()
	}
	// The profile's chunks are fetched from the start, while bootinit
	// mounts and switches root, before the app asks for them.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	prefetched, err := b.startPrefetch(ctx, x, st, prof)
	if err != nil {
		return 0, err
	}
	opts := lazyfs.Options{Log: log.New(os.Stderr, "bootinit: ", 0), ReadaheadWithinFiles: true}
	if rec != nil {
		opts.OnRead = rec.Read
	} else if learning != nil {
		opts.OnRead = learning.rec.Read
	}
	f := lazyfs.New(x, st, opts)
	b.srv, err = lazyfs.MountDevice(bootconfig.LowerDir, f, lazyfs.MountOptions{AllowOther: true, SUID: true, Dev: true, FsName: "mkbootfs", MaxReadAhead: profile.ReadAround})
	if err != nil {
		return 0, mountHint(err)
	}
	b.log.Printf("mounted %s (%d entries) at %s from %s", cfg.Source, len(x.Entries), bootconfig.LowerDir, st)
	if err := checkStore(x, st, storeURLs(cfg)); err != nil {
		return 0, err
	}
	if treeChecked != nil {
		good := <-treeChecked
		// A tree that failed its check is not stacked; without it, what
		// the profile reads is not all in the others, nor was it
		// prefetched: this start reads it lazily.
		b.treeInUse = b.treeInUse && len(good) == len(b.stacked)
		b.stacked = good
	}
	// Warming starts as soon as the image is mounted, on the spare core,
	// while the launcher switches root and starts the app. Not while
	// recording or learning: the profile would take the warmer's reads
	// for the app's, and miss the app's own; nor over a boot tree, which
	// holds the profile's files.
	stopWarming := func() {}
	if b.profile != nil && rec == nil && learning == nil && len(b.stacked) == 0 {
		stopWarming = b.startWarmer()
	}
	l := launch{Argv: argv, Dir: dir, ID: app, Foreground: isTerminal(0), Privileges: privs, Trees: b.stacked}
	code, err := b.runApp(lc, l, fw)
	if learning != nil {
		learning.stop()
	}
	cancel()
	stopWarming()
	<-prefetched
	// The tree maker and the fetches under way get a moment to end, side
	// by side: what they finish, the next start does not do again.
	treeStopped := make(chan struct{})
	go func() {
		defer close(treeStopped)
		if b.stopTree == nil {
			return
		}
		wait := time.Duration(0) // it would not finish: at once
		if b.treeCanFinish {
			wait = treeFinishWait
		}
		b.stopTree(wait)
	}()
	if rec != nil {
		if werr := rec.save(); werr != nil {
			fmt.Fprintln(os.Stderr, "bootinit:", werr)
		} else {
			b.log.Printf("recorded the boot access profile in %s", rec.path)
		}
	}
	// Chunks fetched but not yet in the node cache are written now: a
	// container that exits at once must not make its neighbours fetch again.
	st.Close()
	<-treeStopped
	b.log.Printf("the app exited (code %d); bootinit exits", code)
	return code, err
}

// command returns the argv to run: after "--" when started as the boot
// image's entrypoint.
//
// Started through one of the boot layer's shims (docker run --entrypoint
// PROGRAM), argv is the program's own and is run as it is.
func command(args []string) ([]string, error) {
	if len(args) > 0 && (args[0] == bootconfig.Bootinit || filepath.Base(args[0]) == "bootinit") {
		args = args[1:]
		if len(args) > 0 && args[0] == "--" {
			args = args[1:]
		}
	}
	if len(args) == 0 {
		return nil, &exitError{exitBoot, errors.New("no command: the image has no entrypoint or cmd; give one after the image name")}
	}
	return args, nil
}

// identity is who the app runs as: the user docker started bootinit as
// (its setuid bit made it root meanwhile).
type identity struct {
	UID    uint32   `json:"uid"`
	GID    uint32   `json:"gid"`
	Groups []uint32 `json:"groups"`
}

func appIdentity() (identity, error) {
	id := identity{UID: uint32(unix.Getuid()), GID: uint32(unix.Getgid())}
	groups, err := unix.Getgroups()
	if err != nil {
		return id, err
	}
	for _, g := range groups {
		id.Groups = append(id.Groups, uint32(g))
	}
	return id, nil
}

func checkFUSE() error {
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("cannot open /dev/fuse (%v): run the container with --device /dev/fuse --cap-add SYS_ADMIN (and --security-opt apparmor=unconfined on AppArmor hosts)", err)
	}
	return unix.Close(fd)
}

func mountHint(err error) error {
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) || strings.Contains(err.Error(), "permission denied") || strings.Contains(err.Error(), "operation not permitted") {
		return fmt.Errorf("%w: mounting needs --cap-add SYS_ADMIN (and --security-opt apparmor=unconfined on AppArmor hosts)", err)
	}
	return err
}
