package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/mkbootfs/mkbootfs/internal/testenv"
	"github.com/mkbootfs/mkbootfs/internal/testserver"
	"github.com/mkbootfs/mkbootfs/store/local"
)

// TestConvertProfile converts busybox with `--profile -- CMD`: convert runs
// the image once, lays the read files first, the boot image holds the
// profile, it runs, and the temporary image of the profiling run is gone.
func TestConvertProfile(t *testing.T) {
	testenv.FUSE(t)
	src := busybox(t)
	store := t.TempDir()
	target := fmt.Sprintf("mkbootfs-test/busybox:profiled-%d", os.Getpid())
	t.Cleanup(func() { exec.Command("docker", "rmi", "-f", target).Run() })
	out := convertCLI(t, "--bootinit", buildBootinit(t), "--store", store, "--profile",
		"docker-daemon:"+src, "docker-daemon:"+target, "--", "sh", "-c", "cat /etc/passwd >/dev/null; echo profiled")
	m := regexp.MustCompile(`profile: (\d+) files, [0-9.]+ MB read at start, laid out first: (\d+) chunks`).FindStringSubmatch(out)
	if m == nil || m[1] == "0" || m[2] == "0" || !strings.Contains(out, "profiled\n") {
		t.Fatalf("convert --profile does not report a profile, or the run's output:\n%s", out)
	}
	if m := regexp.MustCompile(`profiling: running \S+ once, as (mkbootfs-profile:[0-9a-f]+) `).FindStringSubmatch(out); m == nil {
		t.Errorf("convert --profile does not name the profiling run's image:\n%s", out)
	} else if err := exec.Command("docker", "image", "inspect", m[1]).Run(); err == nil {
		t.Errorf("the profiling run's image %s stayed", m[1])
	}
	// Over HTTP, so through a cache, which the profile is prefetched into.
	l, err := local.Open(store, false)
	if err != nil {
		t.Fatal(err)
	}
	got, err := dockerRun("", append(lazily, "-e", "MKBOOTFS_STORE="+testserver.HTTP(t, l, false),
		"-e", "MKBOOTFS_DEBUG=1", target, "cat", "/etc/passwd")...)
	if err != nil || !strings.Contains(got, "root:") || !regexp.MustCompile(`prefetched \d+ chunks \(\d+ of the profile; 0 failed\)`).MatchString(got) {
		t.Fatalf("the profiled boot image: %v\n%s", err, got)
	}
	// The boot image holds the profile, as text: busybox first.
	cid := strings.TrimSpace(testenv.Run(t, "docker", "create", target))
	defer exec.Command("docker", "rm", cid).Run()
	dir := t.TempDir()
	testenv.Run(t, "docker", "cp", cid+":/.bootfs/profile", dir)
	text, err := os.ReadFile(filepath.Join(dir, "profile"))
	if err != nil || !strings.HasPrefix(string(text), "mkbootfs profile 1\n\"/bin/busybox\" 0+") {
		t.Errorf("the boot image's profile: %v\n%s", err, text)
	}
}

func TestConvertUsage(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte("not a profile\n"), 0o644)
	checkUsage(t, []usage{
		{[]string{"convert", "--index", "x", "dir:" + dir, "--", "true"}, "a command after -- is for --profile"},
		{[]string{"convert", "--profile", "--index", "x", "dir:" + dir}, "--profile runs the boot image, so it needs a TARGET"},
		{[]string{"convert", "--profile", "--profile-from", bad, "dir:" + dir, "docker-daemon:x:y"}, "give one of them"},
		{[]string{"convert", "--profile-from", bad, "--index", "x", "dir:" + dir}, "profile " + bad + ", line 1: starts with \"not a profile\""},
		{[]string{"convert", "--profile-from", filepath.Join(dir, "none"), "--index", "x", "dir:" + dir}, "--profile-from: open " + filepath.Join(dir, "none")},
		{[]string{"convert", "--profile", "--profile-timeout", "0s", "dir:" + dir, "docker-daemon:x:y"}, "--profile-timeout 0s: want a positive duration"},
		{[]string{"convert", "--chunk-size", "64K:1K", "--index", "x", "dir:" + dir}, "--chunk-size: chunk size \"64K:1K\": want AVG or MIN:AVG:MAX"},
	})
}
