package bootinit_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mkbootfs/mkbootfs/converter"
	"github.com/mkbootfs/mkbootfs/internal/testenv"
	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/httpstore"
	"github.com/mkbootfs/mkbootfs/store/local"
)

// The converted Debian image, made once per test binary.
var (
	bootOnce  sync.Once
	bootImg   string // the boot image in the docker daemon
	bootStore string // its local store on the host
	bootErr   error
	origImg   string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if bootStore != "" {
		os.RemoveAll(filepath.Dir(bootStore))
	}
	if bootImg != "" {
		exec.Command("docker", "rmi", "-f", bootImg).Run()
	}
	if origImg != "" {
		exec.Command("docker", "rmi", "-f", origImg).Run()
	}
	for _, img := range []string{profiledImg, staticImg, staticOrig} {
		if img != "" {
			exec.Command("docker", "rmi", "-f", img).Run()
		}
	}
	os.Exit(code)
}

// suidImage is the Debian image with a setuid-root cat, which shows the
// capabilities a setuid program gets (suidcat /proc/self/status), and a
// null device outside /dev, which the lazy mount must honour (dev).
const suidImage = `FROM %s
RUN cp /bin/cat /usr/local/bin/suidcat && chmod 4755 /usr/local/bin/suidcat && mknod -m 666 /opt/null c 1 3
`

func converted(t *testing.T) (orig, boot, storeDir string) {
	t.Helper()
	testenv.FUSE(t)
	debian := testenv.DebianImage(t)
	bootOnce.Do(func() {
		// Tagged per test process: the boot image records a store in this
		// process's temp dir, which another run must not pick up.
		origImg = fmt.Sprintf("mkbootfs-test/debian:e2e-%d", os.Getpid())
		build := exec.Command("docker", "build", "-q", "-t", origImg, "-")
		build.Stdin = strings.NewReader(fmt.Sprintf(suidImage, debian))
		if out, err := build.CombinedOutput(); err != nil {
			bootErr = fmt.Errorf("docker build: %v\n%s", err, out)
			return
		}
		bootImg, bootStore, bootErr = convertImage(origImg, origImg+"-bootfs")
	})
	if bootErr != nil {
		t.Fatal(bootErr)
	}
	return origImg, bootImg, bootStore
}

// convertImage converts src into a fresh store and loads its boot image into
// the daemon as target.
func convertImage(src, target string) (string, string, error) {
	dir, err := os.MkdirTemp("", "mkbootfs-e2e-")
	if err != nil {
		return "", "", err
	}
	storeDir := filepath.Join(dir, "store")
	return target, storeDir, convertInto(dir, "docker-daemon:"+src, target, storeDir)
}

// convertInto converts source (a converter source) into the store at
// storeDir, which it records, and loads its boot image into the daemon as
// target, with a bootinit built in work.
func convertInto(work, source, target, storeDir string) error {
	bootinit := filepath.Join(work, "bootinit")
	build := exec.Command("go", "build", "-trimpath", "-o", bootinit, "../cmd/bootinit")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return errors.New("building bootinit: " + err.Error() + "\n" + string(out))
	}
	bin, err := os.ReadFile(bootinit)
	if err != nil {
		return err
	}
	s, err := local.Open(storeDir, true)
	if err != nil {
		return err
	}
	ctx := context.Background()
	res, err := converter.Convert(ctx, converter.Options{Source: source, Store: s})
	if err != nil {
		return err
	}
	img, err := converter.BootImage(ctx, res, bin, s, []string{storeDir})
	if err != nil {
		return err
	}
	return converter.WriteImage(ctx, img, "docker-daemon:"+target)
}

type result struct {
	stdout, stderr string
	code           int
}

// docker runs the docker CLI, bounded in time: a wedged container fails
// the test instead of hanging it.
func docker(t *testing.T, args ...string) result {
	t.Helper()
	return run(t, nil, "docker", args...)
}

// run runs a program with stdin, bounded in time as docker is.
func run(t *testing.T, stdin io.Reader, name string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%s %s: timed out\nstderr: %s", name, strings.Join(args, " "), stderr.String())
	}
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return result{stdout.String(), stderr.String(), code}
}

// start runs a detached container, removed with its anonymous volumes when
// the test ends.
func start(t *testing.T, name string, args ...string) {
	t.Helper()
	docker(t, "rm", "-f", "-v", name)
	if r := docker(t, append([]string{"run", "-d", "--name", name}, args...)...); r.code != 0 {
		t.Fatalf("docker run %s: %s", name, r.stderr)
	}
	t.Cleanup(func() { docker(t, "rm", "-f", "-v", name) })
}

// keepUpUntil runs start, a docker run of container name whose app waits,
// until done, or for 3 minutes, then removes the container; it returns
// whether done. The boot tree maker runs on idle time alone: on a loaded
// machine a start must stay up until it has made the tree.
func keepUpUntil(t *testing.T, name string, start func(), done func() bool) bool {
	t.Helper()
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		start()
	}()
	ok := false
	for deadline := time.Now().Add(3 * time.Minute); !ok && time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		ok = done()
	}
	exec.Command("docker", "rm", "-f", name).Run()
	<-finished
	return ok
}

// treeMade reports whether the boot tree at dir is in place and sealed
// (its info file is written last).
func treeMade(dir string) bool {
	_, err := os.Stat(dir + ".info")
	return err == nil && isDir(dir)
}

// waitForLog waits until the container's output holds want; the app
// prints it once it is ready for what the test does next.
func waitForLog(t *testing.T, name, want string) {
	t.Helper()
	for i := 0; i < 600; i++ {
		r := docker(t, "logs", name)
		if strings.Contains(r.stdout, want) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	r := docker(t, "logs", name)
	t.Fatalf("%s never printed %q; stdout %q, stderr %q", name, want, r.stdout, r.stderr)
}

// runFlags are what a converted image needs, given to the original too so
// that the two runs differ only in the image.
func runFlags(storeDir string) []string {
	return append([]string{"run", "--rm"}, bootFlags(storeDir)...)
}

// bootFlags are the docker run flags a boot image needs, its store in
// storeDir.
func bootFlags(storeDir string) []string {
	return []string{"--hostname", "e2e", "--device", "/dev/fuse", "--cap-add", "SYS_ADMIN", "-v", storeDir + ":/.bootfs/store:ro"}
}

func TestRunsLikeTheOriginal(t *testing.T) {
	orig, boot, storeDir := converted(t)
	readAll := []string{"sh", "-c", "cat /usr/bin/* /usr/lib/x86_64-linux-gnu/*.so* 2>/dev/null | md5sum"}
	for _, tc := range []struct {
		name  string
		flags []string
		cmd   []string
	}{
		{"file", nil, []string{"cat", "/etc/os-release"}},
		{"exit code", nil, []string{"sh", "-c", "echo out; echo err >&2; exit 3"}},
		// No descriptor of bootinit's or the launcher's reaches the app.
		{"open files", nil, []string{"sh", "-c", "ls /proc/$$/fd"}},
		{"user workdir env", []string{"-u", "nobody", "-w", "/tmp", "-e", "FOO=bar"}, []string{"sh", "-c", "id; pwd; echo $FOO; env | sort"}},
		{"uid:gid", []string{"-u", "1234:5678"}, []string{"id"}},
		// As runc does, a missing working directory is made, root's.
		{"new workdir", []string{"-u", "nobody", "-w", "/srv/new/dir"}, []string{"sh", "-c", "pwd; ls -ld /srv/new /srv/new/dir | cut -d' ' -f1,3,4"}},
		{"init", []string{"--init"}, []string{"sh", "-c", "echo under init; exit 5"}},
		{"tty", []string{"-t"}, []string{"sh", "-c", "test -t 0 && test -t 1 && echo terminal"}},
		// The app is never PID 1 (bootinit is), so it dies of signals that
		// PID 1 would ignore: compare with --init, where the same holds.
		{"signal exit", []string{"--init"}, []string{"sh", "-c", "kill -TERM $$"}},
		{"entrypoint", []string{"--entrypoint", "/bin/sh"}, []string{"-c", "echo $0 $1; id", "x"}},
		{"entrypoint on PATH", []string{"--entrypoint", "apt-get", "-u", "nobody"}, []string{"--version"}},
		{"setuid binary", []string{"-u", "nobody"}, []string{"sh", "-c", "ls -l /usr/bin/passwd | cut -c1-10"}},
		// Every mount docker made, with its options, and the files it
		// writes; the root differs (bootinit's overlay) and the store is
		// bootinit's own.
		{"docker's mounts and files", []string{"--add-host", "x:1.2.3.4", "--dns", "9.9.9.9", "--shm-size", "8m"}, []string{"sh", "-c", `hostname; cat /etc/hostname; grep -w x /etc/hosts; grep -v '^#' /etc/resolv.conf
cut -d' ' -f1-4 /proc/self/mounts | grep -v -e ' / ' -e ' /.bootfs/' | sort
echo shared > /dev/shm/f && cat /dev/shm/f; ls /dev/pts; readlink /proc/self/exe`}},
		// Stores are tried in order: one down or not mounted is passed over.
		{"unreachable first store", []string{"-e", "MKBOOTFS_STORE=http://127.0.0.1:1/store,/.bootfs/store"}, readAll},
		{"missing first store", []string{"-e", "MKBOOTFS_STORE=/.bootfs/none,/.bootfs/store"}, readAll},
		// A cache volume far smaller than what the app reads: full, it
		// keeps no more, and every read is still served.
		{"20 MB tmpfs cache", []string{"--mount", "type=tmpfs,destination=/.bootfs/cache,tmpfs-size=20m"}, readAll},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := append(runFlags(storeDir), tc.flags...)
			want := docker(t, append(append(append([]string{}, base...), orig), tc.cmd...)...)
			got := docker(t, append(append(append([]string{}, base...), boot), tc.cmd...)...)
			if got.stdout != want.stdout || got.code != want.code {
				t.Fatalf("converted: exit %d, stdout:\n%s\nstderr: %s\noriginal: exit %d, stdout:\n%s", got.code, got.stdout, got.stderr, want.code, want.stdout)
			}
		})
	}
}

func TestExecAndStop(t *testing.T) {
	_, boot, storeDir := converted(t)
	name := "mkbootfs-e2e-exec"
	// docker exec during the boot finds the boot layer: wait for the app.
	start(t, name, append(bootFlags(storeDir), boot, "sh", "-c", "echo ready && exec sleep 600")...)
	waitForLog(t, name, "ready")
	r := docker(t, "exec", name, "cat", "/etc/debian_version")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "12.") {
		t.Fatalf("docker exec sees %q (exit %d, %s): not the converted image's files", r.stdout, r.code, r.stderr)
	}
	if r := docker(t, "exec", name, "ls", "/.bootfs"); r.code == 0 {
		t.Fatalf("docker exec sees the boot layer: %s", r.stdout)
	}
	if r := docker(t, "stop", name); r.code != 0 {
		t.Fatalf("docker stop: %s", r.stderr)
	}
	if r := docker(t, "inspect", "-f", "{{.State.Running}} {{.State.ExitCode}}", name); r.stdout != "false 143\n" {
		t.Fatalf("after docker stop: %q; want the app killed by the forwarded SIGTERM", r.stdout)
	}
}

func TestSignalsReachTheApp(t *testing.T) {
	orig, boot, storeDir := converted(t)
	signals := []string{"INT", "HUP", "WINCH", "USR1", "USR2", "QUIT"}
	app := `for s in ` + strings.Join(signals, " ") + `; do trap "echo got $s" $s; done
trap 'echo got TERM; exit 7' TERM
echo ready
while :; do sleep 1 & wait $!; done`
	// The original's shell is PID 1, which gets the signals it traps: the
	// app must get them all the same under bootinit.
	for _, img := range []struct{ name, ref string }{{"original", orig}, {"converted", boot}} {
		t.Run(img.name, func(t *testing.T) {
			name := "mkbootfs-e2e-signals"
			start(t, name, append(bootFlags(storeDir), img.ref, "sh", "-c", app)...)
			waitForLog(t, name, "ready\n")
			for _, s := range append(signals, "TERM") {
				if r := docker(t, "kill", "-s", s, name); r.code != 0 {
					t.Fatalf("docker kill -s %s: %s", s, r.stderr)
				}
				waitForLog(t, name, "got "+s+"\n")
			}
			if r := docker(t, "wait", name); r.stdout != "7\n" {
				t.Fatalf("exit %q, want 7 from the app's TERM trap", r.stdout)
			}
		})
	}
}

func TestOrphansAreReaped(t *testing.T) {
	_, boot, storeDir := converted(t)
	// Each subshell exits at once, orphaning its background job to PID 1.
	orphans := `for i in 1 2 3; do (sleep 0 & echo $! >> /tmp/orphans); done`
	// A zombie keeps its /proc entry: wait until every orphan's is gone (or
	// give up), then list every process's state.
	check := `n=0; for p in $(cat /tmp/orphans); do while [ -e /proc/$p ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n+1)); done; done
wc -l < /tmp/orphans
sed -n 's/^\([0-9]*\) (\(.*\)) \(.\) .*/\1 \2 \3/p' /proc/[0-9]*/stat`
	name := "mkbootfs-e2e-orphans"
	start(t, name, append(bootFlags(storeDir), boot, "sh", "-c", orphans+"; echo ready; exec sleep 600")...)
	waitForLog(t, name, "ready\n")
	// Orphans of docker exec's processes are reparented to PID 1 too.
	if r := docker(t, "exec", name, "sh", "-c", orphans); r.code != 0 {
		t.Fatalf("docker exec: %s", r.stderr)
	}
	r := docker(t, "exec", name, "sh", "-c", check)
	if r.code != 0 || !strings.HasPrefix(r.stdout, "6\n") {
		t.Fatalf("exit %d, stdout %q, stderr %s", r.code, r.stdout, r.stderr)
	}
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n")[1:] {
		if strings.HasSuffix(l, " Z") {
			t.Errorf("zombie: %s", l)
		}
	}
}

func TestInteractiveTerminal(t *testing.T) {
	orig, boot, storeDir := converted(t)
	script := testenv.Command(t, "script") // gives docker run -it the terminal it wants on its stdin
	app := `read line; echo "got $line"; tty
test -t 0 && test -t 1 && test -t 2 && echo terminal
set -- $(sed 's/.*) //' /proc/$$/stat)
[ "$5" != 0 ] && echo controlling tty
[ "$3" = "$6" ] && echo foreground`
	for _, img := range []struct{ name, ref string }{{"original", orig}, {"converted", boot}} {
		t.Run(img.name, func(t *testing.T) {
			args := append(append([]string{"docker", "run", "-it", "--rm"}, bootFlags(storeDir)...), img.ref, "sh", "-c", app)
			r := run(t, strings.NewReader("hello\n"), script, "-qec", shellQuote(args), "/dev/null")
			out := strings.ReplaceAll(r.stdout, "\r\n", "\n")
			for _, want := range []string{"got hello\n", "/dev/pts/", "terminal\n", "controlling tty\n", "foreground\n"} {
				if !strings.Contains(out, want) {
					t.Errorf("no %q in the app's output %q (exit %d, stderr %s)", want, out, r.code, r.stderr)
				}
			}
		})
	}
}

// shellQuote quotes args into one command line for sh.
func shellQuote(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

func TestMountsAndPrivateWrites(t *testing.T) {
	_, boot, storeDir := converted(t)
	vol := "mkbootfs-e2e-vol"
	docker(t, "volume", "rm", "-f", vol)
	defer docker(t, "volume", "rm", "-f", vol)
	script := `set -e
grep -q ' /var/lib/app ' /proc/mounts && echo volume
grep -q ' /scratch tmpfs ' /proc/mounts && echo tmpfs
echo data > /var/lib/app/f
echo mine > /etc/written && cat /etc/written
rm /etc/debian_version && echo removed`
	r := docker(t, append(runFlags(storeDir), "-v", vol+":/var/lib/app", "--tmpfs", "/scratch", boot, "sh", "-c", script)...)
	if r.code != 0 || r.stdout != "volume\ntmpfs\nmine\nremoved\n" {
		t.Fatalf("exit %d, stdout %q, stderr %s", r.code, r.stdout, r.stderr)
	}
	// A second container sees the image as it was and the volume's data.
	r = docker(t, append(runFlags(storeDir), "-v", vol+":/var/lib/app", boot, "sh", "-c", "cat /var/lib/app/f; test -e /etc/written || echo private; cat /etc/debian_version")...)
	if r.code != 0 || !strings.HasPrefix(r.stdout, "data\nprivate\n12.") {
		t.Fatalf("second container: exit %d, stdout %q, stderr %s", r.code, r.stdout, r.stderr)
	}
}

// volumeImage is the Debian image with files of every kind in a VOLUME
// directory, and a directory of only plain files, whose skeleton is empty.
// perl's syscalls 188 and 191 are x86-64's setxattr and getxattr.
const volumeImage = `FROM %s
RUN mkdir -p /data/sub/empty /plain && echo hello > /data/sub/file && ln -s sub/file /data/link \
 && echo x > /data/a && ln /data/a /data/b && cp /bin/true /data/tool && mkfifo /data/fifo \
 && perl -e '@a = ("/data/tool", "security.capability", pack("V5", 0x2000001, 1 << 10, 0, 0, 0)); syscall(188, @a, 20, 0) == 0 or die "setxattr: $!"' \
 && chown -R 1234:5678 /data/sub && chown -h 1234:5678 /data/link && chown 42:43 /data && chmod 0750 /data \
 && touch -h -d @1000000 /data/link && touch -d @2000000 /data/sub/empty \
 && echo plain > /plain/file && chown 7:8 /plain && chmod 0700 /plain
VOLUME /data
`

func TestVolumesGetTheImageFiles(t *testing.T) {
	debian, _, _ := converted(t)
	orig := fmt.Sprintf("mkbootfs-test/volumes:e2e-%d", os.Getpid())
	if r := run(t, strings.NewReader(fmt.Sprintf(volumeImage, debian)), "docker", "build", "-q", "-t", orig, "-"); r.code != 0 {
		t.Fatalf("docker build: %s", r.stderr)
	}
	defer docker(t, "rmi", "-f", orig)
	boot, storeDir, err := convertImage(orig, orig+"-bootfs")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(filepath.Dir(storeDir))
	defer docker(t, "rmi", "-f", boot)

	// Every entry with its type, mode, owner, size, links, mtime and
	// target; not the mtimes of the directories copied into, which docker's
	// copy dates, nor those of the mount points.
	script := `find /data /plain -maxdepth 0 -printf '%p %y %m %U:%G\n'
find /data /plain -mindepth 1 \( -type d ! -empty -printf '%p %y %m %U:%G\n' \) -o -printf '%p %y %m %U:%G %s %n %T@ %l\n' | sort
[ /data/a -ef /data/b ] && echo hard link
perl -e '@a = ("/data/tool", "security.capability", "\0" x 64); $n = syscall(191, @a, 64); print $n < 0 ? "no capability\n" : unpack("H*", substr($a[2], 0, $n)) . "\n"'
cat /data/sub/file /plain/file`
	vol := func(name string) string { return "mkbootfs-e2e-copyup-" + name }
	removeVolumes := func() { docker(t, "volume", "rm", "-f", vol("data"), vol("plain")) }
	defer removeVolumes()
	bind := t.TempDir()
	for _, tc := range []struct {
		name   string
		flags  []string // @NAME is a fresh named volume
		held   bool     // the named volumes hold a file already
		copies bool     // docker copies the image's files into the volumes
	}{
		{"named volumes", []string{"-v", "@data:/data", "-v", "@plain:/plain"}, false, true},
		{"anonymous volumes", []string{"-v", "/data", "-v", "/plain"}, false, true},
		{"the image's VOLUME", nil, false, true},
		{"read-only volumes", []string{"-v", "@data:/data:ro", "-v", "@plain:/plain:ro"}, false, true},
		{"bind mount", []string{"-v", bind + ":/data"}, false, false},
		{"nocopy volumes", []string{"-v", "@data:/data:nocopy", "-v", "@plain:/plain:nocopy"}, false, false},
		{"volumes in use", []string{"-v", "@data:/data", "-v", "@plain:/plain"}, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var flags []string
			for _, f := range tc.flags {
				if name, ok := strings.CutPrefix(f, "@"); ok {
					f = vol(name)
				}
				flags = append(flags, f)
			}
			runOn := func(img string) result {
				removeVolumes()
				if tc.held {
					// The Debian image has no /seed: docker copies nothing.
					for _, v := range []string{vol("data"), vol("plain")} {
						if r := docker(t, "run", "--rm", "-v", v+":/seed", debian, "sh", "-c", "echo mine > /seed/mine && touch -d @3000000 /seed/mine"); r.code != 0 {
							t.Fatalf("filling the volume %s: %s", v, r.stderr)
						}
					}
				}
				return docker(t, append(append(append(runFlags(storeDir), flags...), img), "sh", "-c", script)...)
			}
			want, got := runOn(orig), runOn(boot)
			if got.stdout != want.stdout || got.code != want.code {
				t.Fatalf("converted: exit %d, stdout:\n%s\nstderr: %s\noriginal: exit %d, stdout:\n%s", got.code, got.stdout, got.stderr, want.code, want.stdout)
			}
			if copied := strings.HasSuffix(want.stdout, "hello\nplain\n"); copied != tc.copies {
				t.Fatalf("docker copied the image's files into the original's volumes: %v, want %v; stdout:\n%s", copied, tc.copies, want.stdout)
			}
			if ents, err := os.ReadDir(bind); err != nil || len(ents) > 0 {
				t.Fatalf("the bind-mounted directory holds %v (%v); docker copies nothing into one", ents, err)
			}
		})
	}
}

func TestHeavyReadsNeverWedge(t *testing.T) {
	_, boot, storeDir := converted(t)
	alive := func(r result) bool { return r.code == 0 && strings.HasSuffix(r.stdout, "alive\n") }
	for _, tc := range []struct {
		name  string
		flags []string
		ends  func(r result) bool
	}{
		// PID 1 is immune to kill -9 -1: bootinit lives on and serves.
		{"bootinit as PID 1", nil, alive},
		// Under docker-init, kill -9 -1 kills bootinit and with it the
		// image's mount: the container must end, killed (137), not hang.
		{"under --init", []string{"--init"}, func(r result) bool { return r.code == 137 || alive(r) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// GOGC=1 makes bootinit collect garbage all the time, the case in
			// which starting a process from the FUSE server's own process
			// deadlocked.
			for i := 0; i < 3; i++ {
				r := docker(t, append(append(runFlags(storeDir), tc.flags...), "-e", "GOGC=1", boot, "sh", "-c", "tar -cf - /usr /etc 2>/dev/null | wc -c; kill -9 -1; echo alive")...)
				if !tc.ends(r) {
					t.Fatalf("run %d: exit %d, stdout %q, stderr %s", i, r.code, r.stdout, r.stderr)
				}
			}
		})
	}
}

func TestWritableLayerOnAVolume(t *testing.T) {
	orig, boot, storeDir := converted(t)
	name := "mkbootfs-e2e-rw"
	start(t, name, append(bootFlags(storeDir), "-v", "/.bootfs/rw", boot, "sh", "-c",
		"echo mine > /etc/written && cat /etc/written && rm /etc/debian_version && echo removed")...)
	if r := docker(t, "wait", name); r.stdout != "0\n" {
		t.Fatalf("exit %q: %s", r.stdout, docker(t, "logs", name).stderr)
	}
	if r := docker(t, "logs", name); r.stdout != "mine\nremoved\n" {
		t.Fatalf("stdout %q, stderr %s", r.stdout, r.stderr)
	}
	vol := strings.TrimSpace(docker(t, "inspect", "-f", `{{range .Mounts}}{{if eq .Destination "/.bootfs/rw"}}{{.Name}}{{end}}{{end}}`, name).stdout)
	// The write and the deletion (a whiteout) are in the volume, not in a
	// tmpfs gone with the container.
	r := docker(t, "run", "--rm", "-v", vol+":/rw:ro", orig, "sh", "-c", "cat /rw/upper/etc/written && test -c /rw/upper/etc/debian_version && echo whiteout")
	if r.code != 0 || r.stdout != "mine\nwhiteout\n" {
		t.Fatalf("volume %q holds: exit %d, stdout %q, stderr %s", vol, r.code, r.stdout, r.stderr)
	}
}

func TestClearFailures(t *testing.T) {
	_, boot, storeDir := converted(t)
	for _, tc := range []struct {
		name  string
		args  []string
		wants []string
	}{
		{"no fuse", []string{"run", "--rm", boot, "true"}, []string{"--device /dev/fuse", "--cap-add SYS_ADMIN", "apparmor=unconfined"}},
		// bootinit must not fall back to a fusermount3, whose absence would
		// hide why the mount was refused.
		{"no CAP_SYS_ADMIN", []string{"run", "--rm", "--device", "/dev/fuse", boot, "true"}, []string{"operation not permitted", "--cap-add SYS_ADMIN", "apparmor=unconfined"}},
		{"no store mounted", []string{"run", "--rm", "--device", "/dev/fuse", "--cap-add", "SYS_ADMIN", boot, "true"}, []string{"/.bootfs/store"}},
		{"loopback store", []string{"run", "--rm", "--device", "/dev/fuse", "--cap-add", "SYS_ADMIN", "-e", "MKBOOTFS_STORE=http://127.0.0.1:1/store", boot, "true"}, []string{"127.0.0.1", "--network host"}},
		// bootinit needs more than CAP_SYS_ADMIN once docker gives nothing
		// else; the line names all it needs, which the app then loses.
		{"--cap-drop ALL, SYS_ADMIN alone", []string{"run", "--rm", "--cap-drop", "ALL", "--device", "/dev/fuse", "--cap-add", "SYS_ADMIN", "-v", storeDir + ":/.bootfs/store:ro", boot, "true"},
			[]string{"--cap-drop ALL", "--cap-add SYS_ADMIN --cap-add DAC_OVERRIDE --cap-add SYS_CHROOT --cap-add SETPCAP", "the app gets none of them"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := docker(t, tc.args...)
			if r.code != 125 {
				t.Errorf("exit %d, want 125", r.code)
			}
			for _, w := range tc.wants {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr %q does not mention %q", r.stderr, w)
				}
			}
			if n := strings.Count(strings.TrimSpace(r.stderr), "\n"); n > 0 {
				t.Errorf("stderr has %d lines, want one: %q", n+1, r.stderr)
			}
		})
	}
}

// countingHandler counts GETs per chunk path, and answers each after
// delay.
type countingHandler struct {
	h     http.Handler
	mu    sync.Mutex
	gets  map[string]int
	delay atomic.Int64 // a time.Duration
	// inFlight counts the requests being answered.
	inFlight atomic.Int64
}

func (c *countingHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.inFlight.Add(1)
	defer c.inFlight.Add(-1)
	if r.Method == http.MethodGet {
		c.mu.Lock()
		c.gets[r.URL.Path]++
		c.mu.Unlock()
	}
	select {
	case <-time.After(time.Duration(c.delay.Load())):
	case <-r.Context().Done():
		return
	}
	c.h.ServeHTTP(w, r)
}

// requests returns the number of GETs so far.
func (c *countingHandler) requests() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, k := range c.gets {
		n += k
	}
	return n
}

// serveCounting serves the store in storeDir over HTTP on loopback,
// counting GETs per chunk, until the test ends.
func serveCounting(t *testing.T, storeDir string) (*countingHandler, string) {
	t.Helper()
	s, err := local.Open(storeDir, false)
	if err != nil {
		t.Fatal(err)
	}
	ch := &countingHandler{h: httpstore.NewHandler(s, httpstore.HandlerOptions{}), gets: map[string]int{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: ch}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ch, ln.Addr().String()
}

// httpStore are the docker run flags of a boot image whose chunks come
// from the HTTP store at addr on loopback (serveCounting's), through the
// node cache.
func httpStore(addr string) []string {
	return []string{"--network", "host", "--device", "/dev/fuse", "--cap-add", "SYS_ADMIN", "-e", "MKBOOTFS_STORE=http://" + addr}
}

// runCounting runs cmd in img with more docker run options, the image's
// chunks served over HTTP from storeDir, and returns the chunks it fetched.
func runCounting(t *testing.T, storeDir, img string, opts []string, cmd ...string) (result, map[string]int) {
	t.Helper()
	ch, addr := serveCounting(t, storeDir)
	args := append(append(append([]string{"run", "--rm"}, httpStore(addr)...), opts...), img)
	r := docker(t, append(args, cmd...)...)
	ch.mu.Lock()
	defer ch.mu.Unlock()
	gets := map[string]int{}
	for p, n := range ch.gets {
		gets[strings.TrimSuffix(path.Base(p), ".cacnk")] = n
	}
	return r, gets
}

// TestSharedCacheFetchesEachChunkOnce starts ten, then twenty containers
// at once on one empty cache volume, each with 64 MiB of memory: each
// reads right, and together they fetch each chunk once.
func TestSharedCacheFetchesEachChunkOnce(t *testing.T) {
	_, boot, storeDir := converted(t)
	for _, n := range []int{10, 20} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			ch, addr := serveCounting(t, storeDir)
			vol := "mkbootfs-e2e-cache"
			docker(t, "volume", "rm", "-f", vol)
			defer docker(t, "volume", "rm", "-f", vol)

			var wg sync.WaitGroup
			results := make([]result, n)
			for i := range results {
				wg.Add(1)
				go func() {
					defer wg.Done()
					results[i] = docker(t, "run", "--rm", "--network", "host", "--device", "/dev/fuse", "--cap-add", "SYS_ADMIN", "--memory", "64m",
						"-e", "MKBOOTFS_STORE=http://"+addr, "-v", vol+":/.bootfs/cache",
						boot, "sh", "-c", "cat /usr/bin/* /usr/lib/x86_64-linux-gnu/*.so* 2>/dev/null | md5sum")
				}()
			}
			wg.Wait()
			for i, r := range results {
				if r.code != 0 || r.stdout != results[0].stdout {
					t.Fatalf("container %d: exit %d, %q (first: %q), stderr %s", i, r.code, r.stdout, results[0].stdout, r.stderr)
				}
			}
			ch.mu.Lock()
			defer ch.mu.Unlock()
			if len(ch.gets) == 0 {
				t.Fatal("no chunk was fetched from the HTTP store")
			}
			for p, n := range ch.gets {
				if n > 1 {
					t.Errorf("%s fetched %d times by containers sharing one cache", p, n)
				}
			}
			t.Logf("%d chunks fetched once each by %d containers sharing a cache volume", len(ch.gets), len(results))
		})
	}
}

func TestPrefetchAll(t *testing.T) {
	_, boot, storeDir := converted(t)
	ch, addr := serveCounting(t, storeDir)
	s, err := local.Open(storeDir, false)
	if err != nil {
		t.Fatal(err)
	}
	want := 0
	s.Walk(func(store.ID) error { want++; return nil })
	// The app does nothing for a while; prefetching fills the cache meanwhile.
	r := docker(t, "run", "--rm", "--network", "host", "--device", "/dev/fuse", "--cap-add", "SYS_ADMIN",
		"-e", "MKBOOTFS_STORE=http://"+addr, "-e", "MKBOOTFS_PREFETCH=all", boot, "sleep", "15")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if len(ch.gets) != want {
		t.Fatalf("prefetch fetched %d of the image's %d chunks", len(ch.gets), want)
	}
}
