package bootinit_test

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mkbootfs/mkbootfs/converter"
	"github.com/mkbootfs/mkbootfs/profile"
	"github.com/mkbootfs/mkbootfs/store/local"
)

// The Debian boot image converted with a profile of `apt-get --version`,
// made once per test binary.
var (
	profiledOnce sync.Once
	profiledImg  string
	profiledProf *profile.Profile
	profiledRes  *converter.Result
	profiledErr  error
)

// profiledImage records the start of `apt-get --version` in the Debian
// boot image and converts again with that profile, into the same store.
func profiledImage(t *testing.T) (img string, prof *profile.Profile, res *converter.Result) {
	t.Helper()
	_, boot, storeDir := converted(t)
	profiledOnce.Do(func() {
		profiledImg = fmt.Sprintf("mkbootfs-test/debian:e2e-profiled-%d", os.Getpid())
		profiledProf, profiledRes, profiledErr = convertProfiled(boot, storeDir, profiledImg)
	})
	if profiledErr != nil {
		t.Fatal(profiledErr)
	}
	return profiledImg, profiledProf, profiledRes
}

func convertProfiled(boot, storeDir, target string) (*profile.Profile, *converter.Result, error) {
	prof, err := profile.Record(context.Background(), profile.RecordOptions{Image: boot, Args: []string{"apt-get", "--version"}, StoreDir: storeDir, Timeout: 2 * time.Minute})
	if err != nil {
		return nil, nil, err
	}
	res, err := convertAgain(storeDir, target, converter.Options{Source: "docker-daemon:" + origImg, Profile: prof})
	return prof, res, err
}

// convertAgain converts as opts say into the store at storeDir, which
// convertImage made, and loads the boot image into the daemon as target.
func convertAgain(storeDir, target string, opts converter.Options) (*converter.Result, error) {
	ctx := context.Background()
	s, err := local.Open(storeDir, false)
	if err != nil {
		return nil, err
	}
	opts.Store = s
	res, err := converter.Convert(ctx, opts)
	if err != nil {
		return nil, err
	}
	// convertImage built bootinit beside the store.
	bin, err := os.ReadFile(filepath.Join(filepath.Dir(storeDir), "bootinit"))
	if err != nil {
		return nil, err
	}
	img, err := converter.BootImage(ctx, res, bin, s, []string{storeDir})
	if err != nil {
		return nil, err
	}
	return res, converter.WriteImage(ctx, img, "docker-daemon:"+target)
}

// TestProfile boots the Debian image converted with a profile of
// `apt-get --version`: bootinit prefetches the profile's chunks, and the
// start reads little else.
func TestProfile(t *testing.T) {
	_, _, storeDir := converted(t)
	profiled, prof, res := profiledImage(t)
	paths := map[string]bool{}
	for _, f := range prof.Files {
		paths[f.Path] = true
	}
	for _, want := range []string{"/usr/bin/apt-get", "/usr/lib/x86_64-linux-gnu/libapt-pkg.so.6.0.0", "/usr/lib/x86_64-linux-gnu/libc.so.6"} {
		if !paths[want] {
			t.Errorf("the profile lacks %s; it has %d files: %v", want, len(prof.Files), paths)
		}
	}
	if prof.Files[0].Path != "/usr/bin/apt-get" {
		t.Errorf("the profile's first file is %s, want /usr/bin/apt-get (the first read)", prof.Files[0].Path)
	}

	inProfile := map[string]bool{}
	for _, i := range prof.Chunks(res.Index) {
		inProfile[hex.EncodeToString(res.Index.Chunks[i].ID[:])] = true
	}
	t.Logf("profile: %d files, %d bytes read, %d chunks (%d in the image)", len(prof.Files), prof.Bytes(), len(inProfile), len(res.Index.Chunks))

	// run runs cmd in the profiled image with more docker run options, and
	// returns the chunks it fetched from the store.
	run := func(opts []string, cmd ...string) (result, map[string]int) {
		return runCounting(t, storeDir, profiled, append([]string{"-e", "MKBOOTFS_DEBUG=1"}, opts...), cmd...)
	}

	t.Run("prefetch", func(t *testing.T) {
		// The app reads nothing the profile holds: every profile chunk
		// is fetched in the background all the same.
		r, gets := run(nil, "sleep", "5")
		if r.code != 0 || !strings.Contains(r.stderr, "of the profile; 0 failed") {
			t.Fatalf("exit %d, stderr:\n%s", r.code, r.stderr)
		}
		for id := range inProfile {
			if gets[id] == 0 {
				t.Errorf("profile chunk %s not prefetched", id)
			}
		}
	})
	t.Run("start", func(t *testing.T) {
		r, gets := run(nil, "apt-get", "--version")
		if r.code != 0 || !strings.HasPrefix(r.stdout, "apt ") {
			t.Fatalf("exit %d, stdout %q, stderr:\n%s", r.code, r.stdout, r.stderr)
		}
		outside := 0
		for id := range gets {
			if !inProfile[id] {
				outside++
			}
		}
		t.Logf("apt-get --version: %d chunks fetched, %d of them outside the profile", len(gets), outside)
		if outside*10 > len(inProfile) {
			t.Errorf("the start fetched %d chunks outside the profile's %d", outside, len(inProfile))
		}
	})
	t.Run("quick exits", func(t *testing.T) {
		// The app exits while the prefetch, and the warming of the page
		// cache through bootinit's own mount, are under way: bootinit
		// stops both and exits, rather than hang flushing a file of its
		// mount to itself.
		for range 5 {
			if r, _ := run(nil, "true"); r.code != 0 {
				t.Fatalf("exit %d, stderr:\n%s", r.code, r.stderr)
			}
		}
	})
	t.Run("warm", func(t *testing.T) {
		// bootinit reads the profile's ranges into the page cache, also
		// past the 128 KiB the kernel reads ahead for one fadvise on a
		// FUSE mount: fincore counts them resident though the app never
		// reads the file. Warming is best effort and a busy machine may
		// be slow at it, so the app polls, and the test asks for half of
		// what the long ranges hold past their first 128 KiB: one fadvise
		// per range reads none of it.
		var file string
		var want int64
		for _, f := range prof.Files {
			var head, tail int64
			for _, r := range f.Ranges {
				head += min(r.Len, 128<<10)
				tail += max(r.Len-128<<10, 0)
			}
			if tail > 0 && file == "" {
				file, want = f.Path, head+tail/2
			}
		}
		if file == "" {
			t.Fatal("no range of the profile is longer than 128 KiB")
		}
		poll := fmt.Sprintf(`for i in $(seq 100); do r=$(fincore --bytes --noheadings --output RES %s); [ "$r" -ge %d ] && break; sleep 0.2; done; echo "$r"`, file, want)
		r, _ := run(nil, "sh", "-c", poll)
		res, err := strconv.ParseInt(strings.TrimSpace(r.stdout), 10, 64)
		if r.code != 0 || err != nil {
			t.Fatalf("exit %d, stdout %q, stderr:\n%s", r.code, r.stdout, r.stderr)
		}
		if res < want {
			t.Errorf("%s: %d bytes in the page cache, want at least %d", file, res, want)
		}
	})
	t.Run("warm node", func(t *testing.T) {
		// Once a start has filled the node's cache, the next ones fetch
		// nothing: the warming reads only the profile's ranges, and
		// starts no readahead past them. (Without the boot tree, which
		// the second start would fetch the rest of the files for.)
		vol := fmt.Sprintf("mkbootfs-test-profile-%d", os.Getpid())
		defer exec.Command("docker", "volume", "rm", "-f", vol).Run()
		cache := []string{"-v", vol + ":/.bootfs/cache", "-e", "MKBOOTFS_TREE=off"}
		if r, _ := run(cache, "apt-get", "--version"); r.code != 0 {
			t.Fatalf("exit %d, stderr:\n%s", r.code, r.stderr)
		}
		for i := range 4 {
			r, gets := run(cache, "apt-get", "--version")
			if r.code != 0 || len(gets) > 0 {
				t.Errorf("warm start %d: exit %d, %d chunks fetched, want none", i+1, r.code, len(gets))
			}
		}
	})
	t.Run("boot tree", func(t *testing.T) {
		// Starts on a fresh cache volume: the first fetches the profile;
		// the tree maker makes the tree of what the cache holds, in the
		// starts' spare time, going on from start to start, and fetches
		// nothing: no later start fetches a chunk. Once it is sealed, a
		// start stacks it, and reads the image's files, attributes and
		// all. The maker runs on idle time alone: on a loaded machine
		// the second start stays up until the tree is made.
		vol := fmt.Sprintf("mkbootfs-test-tree-%d", os.Getpid())
		defer exec.Command("docker", "volume", "rm", "-f", vol).Run()
		cache := []string{"-v", vol + ":/.bootfs/cache"}
		// The first start reads what the second will: sh and sleep too.
		if r, _ := run(cache, "sh", "-c", "apt-get --version && exec sleep 0"); r.code != 0 || !strings.HasPrefix(r.stdout, "apt ") {
			t.Fatalf("first start: exit %d; stderr:\n%s", r.code, r.stderr)
		}
		mnt := strings.TrimSpace(docker(t, "volume", "inspect", "-f", "{{.Mountpoint}}", vol).stdout)
		name := fmt.Sprintf("mkbootfs-test-tree-%d", os.Getpid())
		var gets map[string]int
		made := keepUpUntil(t, name, func() {
			_, gets = run(append(cache, "--name", name), "sh", "-c", "apt-get --version && exec sleep 600")
		}, func() bool {
			dirs := treeDirs(filepath.Join(mnt, "trees"))
			return len(dirs) == 1 && treeMade(filepath.Join(mnt, "trees", dirs[0].Name()))
		})
		// It fetched the rest of the profile's files, which the tree
		// holds whole, and nothing else: the tree is made of the cache.
		whole := map[string]bool{}
		for _, f := range prof.Files {
			if e, err := res.Index.Resolve(f.Path); err == nil {
				if first, last, ok := res.Index.ChunkSpan(res.Index.Entries[e].Inode); ok {
					for c := first; c <= last; c++ {
						whole[hex.EncodeToString(res.Index.Chunks[c].ID[:])] = true
					}
				}
			}
		}
		for id := range gets {
			if !whole[id] {
				t.Errorf("the second start fetched chunk %s, not of the profile's files", id)
			}
		}
		if !made {
			t.Fatal("no boot tree made in 3 minutes of the second start")
		}
		if r, gets := run(cache, "apt-get", "--version"); r.code != 0 || len(gets) > 0 || !strings.Contains(r.stderr, "is stacked over the lazy mount") {
			t.Fatalf("third start: exit %d, %d chunks fetched; stderr:\n%s", r.code, len(gets), r.stderr)
		}
		trees := filepath.Join(mnt, "trees")
		ents := treeDirs(trees)
		if len(ents) != 1 {
			t.Fatalf("trees holds %v, want one tree", ents)
		}
		tree := filepath.Join(trees, ents[0].Name())
		for _, p := range []string{"usr/bin/apt-get", "usr/lib/x86_64-linux-gnu/libapt-pkg.so.6.0.0"} {
			if _, err := os.Lstat(filepath.Join(tree, p)); err != nil {
				t.Errorf("the tree lacks %s: %v", p, err)
			}
		}

		var files []string
		for _, f := range prof.Files {
			files = append(files, f.Path)
		}
		// The profiled files with their data; the rest of /usr and
		// /var/lib, stubs whose data comes from the lazy mount. Not the
		// link counts of directories: docker's overlay2 gives 1 to those
		// the original's two layers both hold.
		others := " /usr/bin/dpkg /usr/lib/x86_64-linux-gnu/libselinux.so.1"
		look := "stat -c '%N %F %a %u %g %s %Y %h' " + strings.Join(files, " ") + " && sha256sum " + strings.Join(files, " ") + others +
			` && find /usr /var/lib -xdev \( -type d -printf '%p dir %m %U %G %T@\n' \) -o \( ! -type d -printf '%p %y %m %U %G %s %T@ %n %l\n' \) | sort`
		r, _ := run(cache, "sh", "-c", look)
		if r.code != 0 || !strings.Contains(r.stderr, "is stacked over the lazy mount") {
			t.Fatalf("exit %d, stderr:\n%s", r.code, r.stderr)
		}
		want := docker(t, "run", "--rm", origImg, "sh", "-c", look)
		if want.code != 0 || r.stdout != want.stdout {
			t.Errorf("the profiled files through the boot tree:\n%s\nin the original image:\n%s", r.stdout, want.stdout)
		}
		if r, _ = run(append(cache, "-e", "MKBOOTFS_TREE=off"), "true"); r.code != 0 || strings.Contains(r.stderr, "boot tree") {
			t.Errorf("MKBOOTFS_TREE=off: exit %d, stderr:\n%s", r.code, r.stderr)
		}

		// A neighbour given the cache volume rewrites apt-get in the tree
		// and plants a setuid-root shell: the next start, as nobody, sets
		// the tree aside and runs neither.
		plant := "cp /bin/sh /c/trees/" + ents[0].Name() + "/usr/bin/evil && chmod 4755 /c/trees/" + ents[0].Name() + "/usr/bin/evil" +
			" && printf '#!/bin/sh\\necho pwned\\n' > /c/trees/" + ents[0].Name() + "/usr/bin/apt-get"
		if n := docker(t, "run", "--rm", "-v", vol+":/c", origImg, "sh", "-c", plant); n.code != 0 {
			t.Fatalf("planting: exit %d: %s", n.code, n.stderr)
		}
		r, _ = run(append(cache, "-u", "nobody"), "sh", "-c", "apt-get --version | head -1; test -e /usr/bin/evil && /usr/bin/evil -pc 'id -u'; true")
		if r.code != 0 || !strings.HasPrefix(r.stdout, "apt ") || strings.Contains(r.stdout, "pwned") || strings.Contains(r.stdout, "\n0\n") ||
			!strings.Contains(r.stderr, "set aside") || strings.Contains(r.stderr, "is stacked over the lazy mount") {
			t.Fatalf("start after the tree was tampered with: exit %d, stdout %q, stderr:\n%s", r.code, r.stdout, r.stderr)
		}
		if aside, _ := filepath.Glob(filepath.Join(trees, ".aside-*", "usr/bin/evil")); len(aside) != 1 {
			t.Errorf("the tampered tree is not set aside whole: %v", aside)
		}
	})
	t.Run("none", func(t *testing.T) {
		r, gets := run([]string{"-e", "MKBOOTFS_PREFETCH=none"}, "true")
		if r.code != 0 || len(gets) >= len(inProfile)/2 {
			t.Fatalf("exit %d, %d chunks fetched with no prefetch for `true`; stderr:\n%s", r.code, len(gets), r.stderr)
		}
	})
	t.Run("bad env", func(t *testing.T) {
		for env, want := range map[string]string{
			"MKBOOTFS_PREFETCH=some":                "MKBOOTFS_PREFETCH=\"some\": want profile (the default), all or none",
			"MKBOOTFS_TREE=no":                      "MKBOOTFS_TREE=\"no\": want on (the default) or off",
			"MKBOOTFS_LEARN=11m":                    "MKBOOTFS_LEARN=\"11m\": want on (the default: record the first 20s of a start), off, or how long",
			"MKBOOTFS_PROFILE=/no/such/dir/profile": "MKBOOTFS_PROFILE=/no/such/dir/profile: open /no/such/dir: no such file or directory (mount a directory there",
		} {
			r, _ := run([]string{"-e", env}, "true")
			if r.code != 125 || !strings.Contains(r.stderr, want) {
				t.Errorf("%s: exit %d, stderr %q; want 125 and %q", env, r.code, r.stderr, want)
			}
		}
	})
}

// treeDirs lists the trees, made or half made, in a cache's trees
// directory: its directories (beside them are the trees' lock files).
func treeDirs(trees string) []os.DirEntry {
	ents, _ := os.ReadDir(trees)
	var dirs []os.DirEntry
	for _, e := range ents {
		if e.IsDir() {
			dirs = append(dirs, e)
		}
	}
	return dirs
}
