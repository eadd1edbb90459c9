package main

import (
	"encoding/json"
	"net/http"
	"os/exec"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/mkbootfs/mkbootfs/internal/testenv"
	"github.com/mkbootfs/mkbootfs/internal/testserver"
	"github.com/mkbootfs/mkbootfs/store/ocistore"
)

// registryDelete sends DELETE for a manifest or blob of repo ("manifests"
// or "blobs") and fails unless the registry accepts it.
func registryDelete(t *testing.T, repo name.Repository, kind string, d v1.Hash) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodDelete, "http://"+repo.RegistryStr()+"/v2/"+repo.RepositoryStr()+"/"+kind+"/"+d.String(), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("DELETE %s %s: %s", kind, d, resp.Status)
	}
}

// registryHas reports whether the registry serves a manifest or blob of repo.
func registryHas(t *testing.T, repo name.Repository, kind string, d v1.Hash) bool {
	t.Helper()
	req, _ := http.NewRequest(http.MethodHead, "http://"+repo.RegistryStr()+"/v2/"+repo.RepositoryStr()+"/"+kind+"/"+d.String(), nil)
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// bootParts returns the boot image manifest and the chunk manifest that
// a boot image's index lists, and the chunk manifest's blobs.
func bootParts(t *testing.T, ref name.Reference) (image, chunks v1.Hash, blobs []v1.Hash) {
	t.Helper()
	idx, err := remote.Index(ref)
	if err != nil {
		t.Fatal(err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Manifests) != 2 || m.Manifests[1].ArtifactType != ocistore.ChunksArtifactType {
		t.Fatalf("%s lists %+v; want the boot image and its chunk manifest", ref, m.Manifests)
	}
	desc, err := remote.Get(ref.Context().Digest(m.Manifests[1].Digest.String()))
	if err != nil {
		t.Fatal(err)
	}
	var cm v1.Manifest
	if err := json.Unmarshal(desc.Manifest, &cm); err != nil {
		t.Fatal(err)
	}
	for _, l := range cm.Layers {
		blobs = append(blobs, l.Digest)
	}
	return m.Manifests[0].Digest, m.Manifests[1].Digest, append(blobs, cm.Config.Digest)
}

// A registry repository that lost what a boot image's index lists is
// repaired by converting the image into it again: what is missing is
// uploaded, and the boot image runs. The losses: the chunk manifest and
// half the chunks deleted through the API, then the collector run; and
// the collector run with --delete-untagged, which on distribution 2.x
// deletes every tagged index's children (the boot image's manifest and
// its chunk manifest, and a multi-platform image's platform images, which
// the test checks, as the README says) and then their blobs.
func TestConvertRepairsRegistry(t *testing.T) {
	testenv.FUSE(t)
	src := busybox(t)
	bootinit := buildBootinit(t)
	want, err := dockerRun("", src, "cat", "/etc/passwd")
	if err != nil {
		t.Fatalf("the original image: %v\n%s", err, want)
	}
	for _, tc := range []struct {
		name string
		lose func(t *testing.T, r *testserver.DockerRegistry, ref name.Reference)
	}{
		{"chunk manifest and chunks deleted, collected", func(t *testing.T, r *testserver.DockerRegistry, ref name.Reference) {
			_, chunks, blobs := bootParts(t, ref)
			registryDelete(t, ref.Context(), "manifests", chunks)
			for i, b := range blobs {
				if i%2 == 0 {
					registryDelete(t, ref.Context(), "blobs", b)
				}
			}
			r.GarbageCollect(t, false)
		}},
		{"chunks deleted, chunk manifest kept", func(t *testing.T, r *testserver.DockerRegistry, ref name.Reference) {
			_, _, blobs := bootParts(t, ref)
			for i, b := range blobs[:len(blobs)-1] {
				if i%2 == 0 {
					registryDelete(t, ref.Context(), "blobs", b)
				}
			}
		}},
		{"collected with --delete-untagged", func(t *testing.T, r *testserver.DockerRegistry, ref name.Reference) {
			image, chunks, blobs := bootParts(t, ref)
			// A multi-platform image beside it, as docker buildx pushes one.
			multi, err := random.Index(1024, 1, 2)
			if err != nil {
				t.Fatal(err)
			}
			multiRef := ref.Context().Tag("multi-arch")
			if err := remote.WriteIndex(multiRef, multi); err != nil {
				t.Fatal(err)
			}
			mm, err := multi.IndexManifest()
			if err != nil {
				t.Fatal(err)
			}
			r.GarbageCollect(t, true)
			for _, d := range mm.Manifests {
				if registryHas(t, ref.Context(), "manifests", d.Digest) {
					t.Errorf("--delete-untagged kept the platform image %s of the tagged multi-platform index: the README's warning no longer holds for this registry", d.Digest)
				}
			}
			// The claim the README makes: distribution 2.x's collector
			// deletes the children of a tagged index, and their blobs.
			if registryHas(t, ref.Context(), "manifests", image) || registryHas(t, ref.Context(), "manifests", chunks) || registryHas(t, ref.Context(), "blobs", blobs[0]) {
				t.Fatalf("docker-registry garbage-collect --delete-untagged kept the children of the tagged index %s: the README's warning no longer holds for this registry", ref)
			}
			if _, err := remote.Image(ref); err == nil {
				t.Fatalf("%s still pulls after --delete-untagged", ref)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := testserver.StartDockerRegistry(t, testserver.RegistryOptions{})
			target := r.Addr + "/mkbootfs-test/repair:1-bootfs"
			ref, err := name.ParseReference(target)
			if err != nil {
				t.Fatal(err)
			}
			convertCLI(t, "--bootinit", bootinit, "docker-daemon:"+src, target)
			tc.lose(t, r, ref)

			out := convertCLI(t, "--bootinit", bootinit, "docker-daemon:"+src, target)
			t.Logf("converted again: %s", strings.TrimSpace(out))
			image, chunks, blobs := bootParts(t, ref)
			for _, b := range blobs {
				if !registryHas(t, ref.Context(), "blobs", b) {
					t.Errorf("blob %s of the chunk manifest is still missing", b)
				}
			}
			if !registryHas(t, ref.Context(), "manifests", image) || !registryHas(t, ref.Context(), "manifests", chunks) {
				t.Fatal("the boot image's manifest or chunk manifest is still missing")
			}
			testenv.Run(t, "docker", "pull", "-q", target)
			t.Cleanup(func() { exec.Command("docker", "rmi", target).Run() })
			got, err := dockerRun("", append(lazily, target, "cat", "/etc/passwd")...)
			if err != nil || got != want {
				t.Fatalf("the repaired boot image: %v\n%s\nwant:\n%s", err, got, want)
			}
		})
	}
}
