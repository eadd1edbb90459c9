package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/mkbootfs/mkbootfs/internal/testenv"
	"github.com/mkbootfs/mkbootfs/internal/testserver"
)

// readmeRegistryGC returns the shell recipe of the README's "Collect a
// registry's garbage": its first sh block.
func readmeRegistryGC(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(b), "### Collect a registry's garbage\n")
	if !ok {
		t.Fatal("the README has no section \"Collect a registry's garbage\"")
	}
	_, block, ok := strings.Cut(sec, "```sh\n")
	if !ok {
		t.Fatal("the README's \"Collect a registry's garbage\" has no sh block")
	}
	block, _, _ = strings.Cut(block, "```")
	return block
}

// TestREADMERegistryGC runs the README's recipe to drop a boot image from
// a registry that holds another boot image sharing its chunk manifest,
// then the collector without --delete-untagged: the dropped image's own
// manifests and blobs are gone, the other's chunk manifest, which both
// listed, stays, and the other boot image pulls and runs.
func TestREADMERegistryGC(t *testing.T) {
	testenv.FUSE(t)
	testenv.Command(t, "jq")
	testenv.Command(t, "curl")
	recipe := readmeRegistryGC(t)
	var lines []string
	collects := false
	for _, l := range strings.Split(recipe, "\n") {
		switch {
		case strings.HasPrefix(l, "reg="):
			// The recipe's own values: the test's registry and images.
			continue
		case strings.HasPrefix(l, "docker-registry garbage-collect"):
			// Run by the test, with the registry stopped.
			collects = !strings.Contains(strings.SplitN(l, "#", 2)[0], "--delete-untagged")
			continue
		}
		lines = append(lines, l)
	}
	if !collects {
		t.Fatalf("the README's recipe does not end in docker-registry garbage-collect without --delete-untagged:\n%s", recipe)
	}

	src := busybox(t)
	// The same tree with another config: another boot image (its own
	// config, manifest and index), the same chunks and chunk manifest.
	other := fmt.Sprintf("mkbootfs-test/busybox:gc-%d", os.Getpid())
	build := exec.Command("docker", "build", "-q", "-t", other, "-")
	build.Stdin = strings.NewReader("FROM " + src + "\nLABEL org.mkbootfs.test=other\n")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("docker build: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("docker", "rmi", "-f", other).Run() })
	bootinit := buildBootinit(t)
	r := testserver.StartDockerRegistry(t, testserver.RegistryOptions{})
	repo := "mkbootfs-test/gc"
	drop, keep := r.Addr+"/"+repo+":1-bootfs", r.Addr+"/"+repo+":2-bootfs"
	convertCLI(t, "--bootinit", bootinit, "docker-daemon:"+src, drop)
	convertCLI(t, "--bootinit", bootinit, "docker-daemon:"+other, keep)
	dropRef, _ := name.ParseReference(drop)
	keepRef, _ := name.ParseReference(keep)
	dropImage, dropChunks, _ := bootParts(t, dropRef)
	keepImage, keepChunks, keepBlobs := bootParts(t, keepRef)
	if dropChunks != keepChunks || dropImage == keepImage {
		t.Fatalf("chunk manifests %s and %s, boot images %s and %s: want one chunk manifest, two boot images", dropChunks, keepChunks, dropImage, keepImage)
	}
	dropDesc, err := remote.Get(dropRef)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(dropRef)
	if err != nil {
		t.Fatal(err)
	}
	dropConfig, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}

	script := fmt.Sprintf("set -e\nreg=%s repo=%s tag=1-bootfs\n%s", r.Addr, repo, strings.Join(lines, "\n"))
	if out, err := exec.Command("bash", "-c", script).CombinedOutput(); err != nil {
		t.Fatalf("the README's recipe: %v\n%s\nscript:\n%s", err, out, script)
	}
	r.GarbageCollect(t, false)

	for what, d := range map[string]string{"index": dropDesc.Digest.String(), "boot image": dropImage.String()} {
		h, _ := name.NewDigest(r.Addr + "/" + repo + "@" + d)
		if _, err := remote.Get(h); err == nil {
			t.Errorf("the dropped image's %s %s is still served", what, d)
		}
	}
	if registryHas(t, dropRef.Context(), "blobs", dropConfig) {
		t.Errorf("the dropped boot image's config blob %s is still served after the collection", dropConfig)
	}
	if _, err := remote.Get(dropRef); err == nil {
		t.Errorf("%s still resolves", drop)
	}
	if !registryHas(t, keepRef.Context(), "manifests", keepChunks) {
		t.Fatalf("the chunk manifest %s, which %s lists too, is gone", keepChunks, keep)
	}
	for _, b := range keepBlobs {
		if !registryHas(t, keepRef.Context(), "blobs", b) {
			t.Fatalf("blob %s of the kept image's chunk manifest is gone", b)
		}
	}
	want, err := dockerRun("", src, "cat", "/etc/passwd")
	if err != nil {
		t.Fatalf("the original image: %v\n%s", err, want)
	}
	testenv.Run(t, "docker", "pull", "-q", keep)
	t.Cleanup(func() { exec.Command("docker", "rmi", keep).Run() })
	if got, err := dockerRun("", append(lazily, keep, "cat", "/etc/passwd")...); err != nil || got != want {
		t.Fatalf("the kept boot image after the collection: %v\n%s\nwant:\n%s", err, got, want)
	}
}
