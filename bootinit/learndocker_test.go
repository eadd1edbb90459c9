package bootinit_test

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/converter"
	"github.com/mkbootfs/mkbootfs/profile"
)

// The e2e image with a command (apt-get --version), converted with only
// the profile the converter finds without running it: an unprofiled image
// other than the e2e one, made once per test binary.
var (
	staticOnce sync.Once
	staticOrig string
	staticImg  string
	staticRes  *converter.Result
	staticErr  error
)

const cmdImage = `FROM %s
CMD ["apt-get", "--version"]
`

func staticImage(t *testing.T) (string, *converter.Result) {
	t.Helper()
	orig, _, storeDir := converted(t)
	staticOnce.Do(func() {
		staticOrig = fmt.Sprintf("mkbootfs-test/debian:e2e-cmd-%d", os.Getpid())
		if r := run(t, strings.NewReader(fmt.Sprintf(cmdImage, orig)), "docker", "build", "-q", "-t", staticOrig, "-"); r.code != 0 {
			staticErr = fmt.Errorf("docker build: %s", r.stderr)
			return
		}
		staticImg = staticOrig + "-bootfs"
		staticRes, staticErr = convertAgain(storeDir, staticImg, converter.Options{Source: "docker-daemon:" + staticOrig, StaticProfile: true})
	})
	if staticErr != nil {
		t.Fatal(staticErr)
	}
	return staticImg, staticRes
}

// learnVolume makes a cache volume, removed when the test ends, and
// returns it and its directory on the host.
func learnVolume(t *testing.T, name string) (vol, dir string) {
	t.Helper()
	vol = fmt.Sprintf("mkbootfs-test-learn-%s-%d", name, os.Getpid())
	docker(t, "volume", "rm", "-f", vol)
	if r := docker(t, "volume", "create", vol); r.code != 0 {
		t.Fatalf("docker volume create: %s", r.stderr)
	}
	t.Cleanup(func() { docker(t, "volume", "rm", "-f", vol) })
	return vol, strings.TrimSpace(docker(t, "volume", "inspect", "-f", "{{.Mountpoint}}", vol).stdout)
}

// learned returns what the profiles directory of the cache at dir holds:
// file names and their text.
func learned(t *testing.T, dir string) map[string]string {
	t.Helper()
	ents, _ := os.ReadDir(filepath.Join(dir, "profiles"))
	m := map[string]string{}
	for _, e := range ents {
		b, _ := os.ReadFile(filepath.Join(dir, "profiles", e.Name()))
		m[e.Name()] = string(b)
	}
	return m
}

// onlyProfile returns the one learned profile of the cache at dir, parsed,
// with its name and text.
func onlyProfile(t *testing.T, dir string) (name, text string, p *profile.Profile) {
	t.Helper()
	ps := learned(t, dir)
	if len(ps) != 1 {
		t.Fatalf("profiles/ holds %d files, want one: %v", len(ps), ps)
	}
	for name, text = range ps {
	}
	p, err := profile.Parse(strings.NewReader(text), name)
	if err != nil || p.Static || len(p.Files) == 0 {
		t.Fatalf("the learned profile %s: %v, %+v", name, err, p)
	}
	return name, text, p
}

// prefetchLine matches bootinit's line for a profile's prefetch.
var prefetchLine = regexp.MustCompile(`prefetched (\d+) chunks \((\d+) of the profile; 0 failed\)`)

// prefetched returns how many chunks of the profile a start prefetched
// (0: it prefetched none).
func prefetched(stderr string) int {
	m := prefetchLine.FindStringSubmatch(stderr)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[2])
	return n
}

// TestLearn: a node learns the profile of an image converted without a
// recorded one, keeps it in its cache volume and boots later starts with
// it; nothing else takes it, and what is found there is checked.
func TestLearn(t *testing.T) {
	_, boot, storeDir := converted(t)
	cache := func(vol string, more ...string) []string {
		return append([]string{"-v", vol + ":/.bootfs/cache", "-e", "MKBOOTFS_DEBUG=1"}, more...)
	}

	t.Run("learned and used", func(t *testing.T) {
		vol, dir := learnVolume(t, "used")
		r, _ := runCounting(t, storeDir, boot, cache(vol), "apt-get", "--version")
		if r.code != 0 || !strings.Contains(r.stderr, "learned the boot access profile") {
			t.Fatalf("first start: exit %d, stderr:\n%s", r.code, r.stderr)
		}
		name, text, p := onlyProfile(t, dir)
		if p.Files[0].Path != "/usr/bin/apt-get" {
			t.Errorf("the learned profile's first file is %s, want /usr/bin/apt-get (the first read)", p.Files[0].Path)
		}
		t.Logf("learned %s: %d files, %d bytes read", name, len(p.Files), p.Bytes())

		// The second start boots with it: it prefetches its chunks at once.
		r, _ = runCounting(t, storeDir, boot, cache(vol), "apt-get", "--version")
		if r.code != 0 || !strings.Contains(r.stderr, "booting with the profile learned on this node") || prefetched(r.stderr) == 0 || strings.Contains(r.stderr, "learning") {
			t.Fatalf("second start: exit %d, stderr:\n%s", r.code, r.stderr)
		}
		if _, again, _ := onlyProfile(t, dir); again != text {
			t.Errorf("the second start learned again")
		}
		// Its boot tree is named by the image and the learned profile.
		id, _ := hex.DecodeString(name)
		tree := sha256.Sum256(append(id, text...))
		// (bootinit's subset tree of that name: see subsetName).
		subset := sha256.Sum256([]byte("mkbootfs subset tree\n" + hex.EncodeToString(tree[:])))
		treeDir := filepath.Join(dir, "trees", hex.EncodeToString(subset[:]))
		ctr := "mkbootfs-test-learn-tree"
		if !keepUpUntil(t, ctr, func() {
			r, _ = runCounting(t, storeDir, boot, cache(vol, "--name", ctr), "sh", "-c", "apt-get --version && exec sleep 600")
		}, func() bool { return treeMade(treeDir) }) {
			t.Fatalf("no boot tree %s in 3 minutes of a start; trees: %v; its stderr:\n%s", treeDir, treeDirs(filepath.Join(dir, "trees")), r.stderr)
		}
		r, gets := runCounting(t, storeDir, boot, cache(vol), "apt-get", "--version")
		if r.code != 0 || !strings.Contains(r.stderr, treeDir[len(dir):]) || len(gets) > 0 {
			t.Errorf("start over the tree: exit %d, %d chunks fetched; stderr:\n%s", r.code, len(gets), r.stderr)
		}

		// On a node that lost the chunks but kept the profile, a start
		// that reads nothing of it fetches all of it.
		vol2, dir2 := learnVolume(t, "used-cold")
		os.MkdirAll(filepath.Join(dir2, "profiles"), 0o755)
		if err := os.WriteFile(filepath.Join(dir2, "profiles", name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		r, gets = runCounting(t, storeDir, boot, cache(vol2), "sleep", "5")
		if n := prefetched(r.stderr); r.code != 0 || n == 0 || len(gets) < n {
			t.Errorf("cold start with the learned profile: exit %d, %d of the profile prefetched, %d chunks fetched; stderr:\n%s", r.code, n, len(gets), r.stderr)
		}
	})

	t.Run("another image", func(t *testing.T) {
		// Another unprofiled image on the same volume learns its own,
		// its static profile driving its first start's prefetch.
		static, res := staticImage(t)
		if res.Profile == nil || !res.Profile.Static || len(res.Profile.Files) == 0 {
			t.Fatalf("the image with a command has no static profile: %+v (%v)", res.Profile, res.StaticErr)
		}
		vol, dir := learnVolume(t, "other")
		if r, _ := runCounting(t, storeDir, boot, cache(vol), "apt-get", "--version"); r.code != 0 {
			t.Fatalf("exit %d, stderr:\n%s", r.code, r.stderr)
		}
		name, _, _ := onlyProfile(t, dir)
		r, _ := runCounting(t, storeDir, static, cache(vol))
		if r.code != 0 || !strings.HasPrefix(r.stdout, "apt ") || strings.Contains(r.stderr, "learned on this node") || prefetched(r.stderr) == 0 {
			t.Fatalf("the other image's first start: exit %d, stdout %q, stderr:\n%s", r.code, r.stdout, r.stderr)
		}
		ps := learned(t, dir)
		delete(ps, name)
		if len(ps) != 1 {
			t.Fatalf("profiles/ holds %v beside %s, want the other image's profile", ps, name)
		}
		for other, text := range ps {
			if p, err := profile.Parse(strings.NewReader(text), other); err != nil || p.Static {
				t.Errorf("the other image's learned profile: %v, static %v", err, p != nil && p.Static)
			}
		}
		if r, _ := runCounting(t, storeDir, static, cache(vol)); r.code != 0 || !strings.Contains(r.stderr, "learned on this node") || strings.Contains(r.stderr, name) {
			t.Errorf("the other image's second start: exit %d, stderr:\n%s", r.code, r.stderr)
		}
	})

	t.Run("over the image's own tree", func(t *testing.T) {
		// An image with a static profile: the start that learns makes the
		// image's own tree of it; the next makes a tree of only the
		// learned files that one lacks, and later starts stack both.
		static, _ := staticImage(t)
		vol, dir := learnVolume(t, "over")
		trees := filepath.Join(dir, "trees")
		made := func() []string {
			var names []string
			for _, e := range treeDirs(trees) {
				if treeMade(filepath.Join(trees, e.Name())) {
					names = append(names, e.Name())
				}
			}
			return names
		}
		ctr := "mkbootfs-test-learn-over"
		keep := cache(vol, "--name", ctr, "-e", "MKBOOTFS_LEARN=2s")
		var r result
		if !keepUpUntil(t, ctr, func() {
			r, _ = runCounting(t, storeDir, static, keep, "sh", "-c", "apt-get --version && exec sleep 600")
		}, func() bool { return len(learned(t, dir)) == 1 && len(made()) == 1 }) {
			t.Fatalf("no learned profile and image's tree in 3 minutes; trees %v; stderr:\n%s", made(), r.stderr)
		}
		own := made()[0]
		if !keepUpUntil(t, ctr, func() {
			r, _ = runCounting(t, storeDir, static, keep, "sh", "-c", "apt-get --version && exec sleep 600")
		}, func() bool { return len(made()) == 2 }) {
			t.Fatalf("no second tree in 3 minutes; trees %v; stderr:\n%s", made(), r.stderr)
		}
		delta := slices.DeleteFunc(made(), func(n string) bool { return n == own })[0]
		files := func(name string) map[string]bool {
			m := map[string]bool{}
			root := filepath.Join(trees, name)
			filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
				if err == nil && fi.Mode().IsRegular() {
					m[strings.TrimPrefix(p, root)] = true
				}
				return err
			})
			return m
		}
		ownFiles, deltaFiles := files(own), files(delta)
		if len(deltaFiles) == 0 {
			t.Fatalf("the learned profile's tree %s holds no file", delta)
		}
		for f := range deltaFiles {
			if ownFiles[f] {
				t.Errorf("the learned profile's tree holds %s, which the image's own tree holds", f)
			}
		}
		t.Logf("the image's own tree: %d files; the learned profile's over it: %d", len(ownFiles), len(deltaFiles))
		r, gets := runCounting(t, storeDir, static, cache(vol, "-e", "MKBOOTFS_LEARN=2s"), "sh", "-c", "apt-get --version")
		stacked := regexp.MustCompile(`the boot tree \S*/trees/([0-9a-f]+) is stacked`).FindAllStringSubmatch(r.stderr, -1)
		if r.code != 0 || len(gets) > 0 || len(stacked) != 2 || stacked[0][1] != delta || stacked[1][1] != own {
			t.Errorf("a later start: exit %d, %d chunks fetched, stacked %v, want %s over %s; stderr:\n%s", r.code, len(gets), stacked, delta, own, r.stderr)
		}
	})

	t.Run("killed", func(t *testing.T) {
		// A start killed while it records leaves nothing; one that
		// records for 5 s keeps what it read by then, while it runs.
		vol, dir := learnVolume(t, "killed")
		_, addr := serveCounting(t, storeDir)
		name := "mkbootfs-e2e-learn-killed"
		app := `cat /etc/issue; echo ready; sleep 12; cat /etc/issue.net; echo late; exec sleep 600`
		start(t, name, append(append(httpStore(addr), cache(vol)...), boot, "sh", "-c", app)...)
		waitForLog(t, name, "ready\n")
		docker(t, "kill", name)
		docker(t, "wait", name)
		if ps := learned(t, dir); len(ps) != 0 {
			t.Errorf("a start killed while learning left %v", ps)
		}
		start(t, name, append(append(httpStore(addr), cache(vol, "-e", "MKBOOTFS_LEARN=5s")...), boot, "sh", "-c", app)...)
		waitForLog(t, name, "late\n")
		docker(t, "kill", name)
		docker(t, "wait", name)
		_, _, p := onlyProfile(t, dir)
		paths := map[string]bool{}
		for _, f := range p.Files {
			paths[f.Path] = true
		}
		if !paths["/etc/issue"] || paths["/etc/issue.net"] {
			t.Errorf("learning for 5 s kept %v; want /etc/issue, read at once, and not /etc/issue.net, read 12 s later", paths)
		}
	})

	t.Run("corrupt and hostile", func(t *testing.T) {
		vol, dir := learnVolume(t, "hostile")
		if r, _ := runCounting(t, storeDir, boot, cache(vol), "cat", "/etc/issue"); r.code != 0 {
			t.Fatalf("exit %d, stderr:\n%s", r.code, r.stderr)
		}
		name, _, _ := onlyProfile(t, dir)
		path := filepath.Join(dir, "profiles", name)
		text := func(lines ...string) func() error {
			return func() error {
				return os.WriteFile(path, []byte(strings.Join(append([]string{"mkbootfs profile 1"}, lines...), "\n")+"\n"), 0o644)
			}
		}
		for _, tc := range []struct {
			name  string
			write func() error
			want  string
		}{
			{"binary garbage", func() error {
				b := make([]byte, 1<<20)
				rand.Read(b)
				return os.WriteFile(path, b, 0o644)
			}, "line 1"},
			{"path outside the image", text(`"/../../etc/shadow" 0+10`), "not a path in the image"},
			{"path not in the image", text(`"/etc/issue" 0+10`, `"/etc/no-such-file" 0+10`), `"/etc/no-such-file" is not in the image`},
			{"directory", text(`"/etc" 0+10`), `"/etc" is not a regular file`},
			{"huge range", text(`"/etc/issue" 0+1099511627776`), "ranges of more than"},
			{"past the end", text(`"/etc/issue" 1000000+10`), "past its end"},
			{"millions of lines", func() error {
				var b strings.Builder
				b.WriteString("mkbootfs profile 1\n")
				for i := range 2_000_000 {
					fmt.Fprintf(&b, "\"/etc/issue%d\" 0+1\n", i)
				}
				return os.WriteFile(path, []byte(b.String()), 0o644)
			}, "more than 4096 files"},
			{"millions of empty lines", func() error {
				return os.WriteFile(path, []byte("mkbootfs profile 1\n"+strings.Repeat("\n", 5_000_000)), 0o644)
			}, "longer than"},
			{"static", func() error {
				return os.WriteFile(path, []byte("mkbootfs profile 1 static\n\"/etc/issue\" 0+10\n"), 0o644)
			}, "a static profile"},
			{"symlink", func() error { return os.Symlink("/etc/shadow", path) }, "too many levels of symbolic links"},
			{"fifo", func() error { return unix.Mkfifo(path, 0o644) }, "not a regular file"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				os.Remove(path)
				if err := tc.write(); err != nil {
					t.Fatal(err)
				}
				r, _ := runCounting(t, storeDir, boot, []string{"-v", vol + ":/.bootfs/cache"}, "cat", "/etc/issue")
				lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
				if r.code != 0 || !strings.HasPrefix(r.stdout, "Debian") || len(lines) != 1 ||
					!strings.HasPrefix(lines[0], "bootinit: ignoring profile /.bootfs/cache/profiles/"+name) || !strings.Contains(lines[0], tc.want) {
					t.Fatalf("exit %d, stdout %q, stderr:\n%s\nwant one line ignoring the profile: %s", r.code, r.stdout, r.stderr, tc.want)
				}
				// The start learned the profile again, in place of it.
				if again, _, p := onlyProfile(t, dir); again != name || p.Files[0].Path != "/usr/bin/cat" {
					t.Errorf("learned again: %s, %+v", again, p.Files[0])
				}
			})
		}
	})

	t.Run("learns nothing", func(t *testing.T) {
		profiled, _, _ := profiledImage(t)
		for _, tc := range []struct {
			name string
			run  func(vol string) result
		}{
			{"MKBOOTFS_LEARN=off", func(vol string) result {
				r, _ := runCounting(t, storeDir, boot, cache(vol, "-e", "MKBOOTFS_LEARN=off"), "apt-get", "--version")
				return r
			}},
			{"a profiled image", func(vol string) result {
				r, _ := runCounting(t, storeDir, profiled, cache(vol), "apt-get", "--version")
				return r
			}},
			// No cache over a store on the node: nowhere to keep one.
			{"a bare store", func(vol string) result {
				return docker(t, append(append(runFlags(storeDir), cache(vol)...), boot, "apt-get", "--version")...)
			}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				vol, dir := learnVolume(t, "nothing")
				if r := tc.run(vol); r.code != 0 || strings.Contains(r.stderr, "learn") {
					t.Errorf("exit %d, stderr:\n%s", r.code, r.stderr)
				}
				if ps := learned(t, dir); len(ps) != 0 {
					t.Errorf("learned %v", ps)
				}
			})
		}
		// Nor does a start with no cache volume, whose cache goes with it.
		if r, _ := runCounting(t, storeDir, boot, []string{"-e", "MKBOOTFS_DEBUG=1"}, "true"); r.code != 0 || strings.Contains(r.stderr, "learn") {
			t.Errorf("no cache volume: exit %d, stderr:\n%s", r.code, r.stderr)
		}
		// MKBOOTFS_LEARN=off does not use a profile learned before.
		vol, _ := learnVolume(t, "off")
		runCounting(t, storeDir, boot, cache(vol), "true")
		if r, _ := runCounting(t, storeDir, boot, cache(vol, "-e", "MKBOOTFS_LEARN=off"), "true"); r.code != 0 || strings.Contains(r.stderr, "learn") {
			t.Errorf("MKBOOTFS_LEARN=off after a start learned: exit %d, stderr:\n%s", r.code, r.stderr)
		}
	})
}

// isDir reports whether p is a directory.
func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}
