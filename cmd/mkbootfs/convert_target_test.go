package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/daemon"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/mkbootfs/mkbootfs/bootinit/bootconfig"
	"github.com/mkbootfs/mkbootfs/converter"
	"github.com/mkbootfs/mkbootfs/internal/testenv"
)

// TestConvertToFiles converts the busybox image to the targets that are
// files, reads each boot image back as docker and OCI tools would, and
// checks it is a boot image of busybox whose chunks are in the store.
func TestConvertToFiles(t *testing.T) {
	src := busybox(t)
	orig := daemonConfig(t, src)
	// These boot images are only read, never run: any bytes do for bootinit.
	fakeBootinit := filepath.Join(t.TempDir(), "bootinit")
	if err := os.WriteFile(fakeBootinit, []byte("bootinit"), 0o755); err != nil {
		t.Fatal(err)
	}
	loaded := fmt.Sprintf("mkbootfs-test/busybox:archive-%d", os.Getpid())
	for _, tc := range []struct {
		name   string
		target func(dir string) string
		read   func(t *testing.T, dir string) v1.Image
	}{
		{"docker-archive", func(dir string) string { return "docker-archive:" + filepath.Join(dir, "boot.tar") },
			func(t *testing.T, dir string) v1.Image {
				// The tag is the default one when the target names none.
				tag, err := name.NewTag("mkbootfs/boot:latest")
				if err != nil {
					t.Fatal(err)
				}
				img, err := tarball.ImageFromPath(filepath.Join(dir, "boot.tar"), &tag)
				if err != nil {
					t.Fatal(err)
				}
				return img
			}},
		{"docker-archive with a tag, loaded by docker", func(dir string) string { return "docker-archive:" + filepath.Join(dir, "boot.tar") + ":" + loaded },
			func(t *testing.T, dir string) v1.Image {
				t.Cleanup(func() { exec.Command("docker", "rmi", loaded).Run() })
				testenv.Run(t, "docker", "load", "-q", "-i", filepath.Join(dir, "boot.tar"))
				return daemonImage(t, loaded)
			}},
		{"oci with a tag", func(dir string) string { return "oci:" + filepath.Join(dir, "layout") + ":boot" },
			func(t *testing.T, dir string) v1.Image {
				return layoutImage(t, filepath.Join(dir, "layout"), "boot")
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, store := t.TempDir(), t.TempDir()
			convertCLI(t, "--bootinit", fakeBootinit, "--store", store, "docker-daemon:"+src, tc.target(dir))
			checkBootImage(t, tc.read(t, dir), orig, store)
		})
	}
}

// TestDefaultTarget derives the docker daemon target of a SOURCE given
// alone, named as docker lists it; a SOURCE with no tag needs a TARGET.
func TestDefaultTarget(t *testing.T) {
	for _, tc := range []struct {
		source, want, err string
	}{
		{source: "ubuntu", want: "docker-daemon:ubuntu:latest-bootfs"},
		{source: "ubuntu:24.04", want: "docker-daemon:ubuntu:24.04-bootfs"},
		{source: "library/ubuntu:24.04", want: "docker-daemon:library/ubuntu:24.04-bootfs"},
		{source: "127.0.0.1:5000/app", want: "docker-daemon:127.0.0.1:5000/app:latest-bootfs"},
		{source: "127.0.0.1:5000/app:1", want: "docker-daemon:127.0.0.1:5000/app:1-bootfs"},
		{source: "docker-daemon:app:1", want: "docker-daemon:app:1-bootfs"},
		{source: "docker://127.0.0.1:5000/app:1", want: "docker-daemon:127.0.0.1:5000/app:1-bootfs"},
		{source: "app@sha256:" + strings.Repeat("0", 64), err: "has no tag to derive a target from"},
		{source: "docker-archive:app.tar", err: "give a TARGET for docker-archive sources"},
		{source: "oci:layout:1", err: "give a TARGET for oci sources"},
	} {
		got, err := defaultTarget(tc.source)
		if got != tc.want || (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("defaultTarget(%q) = %q, %v; want %q, an error saying %q", tc.source, got, err, tc.want, tc.err)
		}
	}
}

// daemonImage reads an image from the docker daemon.
func daemonImage(t *testing.T, ref string) v1.Image {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	img, err := daemon.Image(r)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// daemonConfig returns the config of an image in the docker daemon.
func daemonConfig(t *testing.T, ref string) *v1.ConfigFile {
	t.Helper()
	cfg, err := daemonImage(t, ref).ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// layoutImage reads the image tagged tag in the OCI layout at dir.
func layoutImage(t *testing.T, dir, tag string) v1.Image {
	t.Helper()
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range m.Manifests {
		if d.Annotations["org.opencontainers.image.ref.name"] == tag {
			img, err := idx.Image(d.Digest)
			if err != nil {
				t.Fatal(err)
			}
			return img
		}
	}
	t.Fatalf("no image tagged %q in the OCI layout %s: %+v", tag, dir, m.Manifests)
	return nil
}

// checkBootImage checks that img is a boot image of the image configured
// by orig, with its chunks in store.
func checkBootImage(t *testing.T, img v1.Image, orig *v1.ConfigFile, store string) {
	t.Helper()
	if layers, err := img.Layers(); err != nil || len(layers) != 2 {
		t.Errorf("the boot image has %d layers (%v), want bootinit's and its own", len(layers), err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.Config
	if want := append([]string{bootconfig.Bootinit, "--"}, orig.Config.Entrypoint...); !reflect.DeepEqual(c.Entrypoint, want) {
		t.Errorf("entrypoint %q, want %q", c.Entrypoint, want)
	}
	if !reflect.DeepEqual(c.Cmd, orig.Config.Cmd) || !reflect.DeepEqual(c.Env, orig.Config.Env) {
		t.Errorf("cmd %q and env %q, want the original's %q and %q", c.Cmd, c.Env, orig.Config.Cmd, orig.Config.Env)
	}
	if c.Labels[converter.LabelStores] != store {
		t.Errorf("the boot image says its chunks are in %q, want %q", c.Labels[converter.LabelStores], store)
	}
}

// entrypointImage is a Dockerfile of an image that has its own settings
// and prints what they make of its process.
const entrypointImage = `FROM ` + busyboxImage + `
ENV FOO="from the image"
WORKDIR /srv/app
USER nobody
VOLUME /data
EXPOSE 8080/tcp 53/udp
STOPSIGNAL SIGINT
LABEL org.example.role=test
ENTRYPOINT ["sh", "-c", "echo $FOO; id -u; pwd; grep -q ' /data ' /proc/mounts && echo volume; echo \"$@\"; exit 7", "--"]
CMD ["a", "b c"]
`

// TestConvertToDaemonRunsLikeTheOriginal builds an image with its own
// entrypoint, cmd, env, user, workdir and volume, converts it with no
// TARGET, and checks the docker daemon got IMAGE:TAG-bootfs with the same
// settings, and that it runs as the original does: with no arguments,
// and with arguments that replace the cmd.
func TestConvertToDaemonRunsLikeTheOriginal(t *testing.T) {
	testenv.FUSE(t)
	busybox(t)
	src := fmt.Sprintf("mkbootfs-test/entrypoint:%d", os.Getpid())
	boot := src + "-bootfs"
	t.Cleanup(func() { exec.Command("docker", "rmi", src, boot).Run() })
	build := exec.Command("docker", "build", "-q", "-t", src, "-")
	build.Stdin = strings.NewReader(entrypointImage)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("docker build:\n%s\n%v\n%s", entrypointImage, err, out)
	}
	store := t.TempDir()
	out := convertCLI(t, "--bootinit", buildBootinit(t), "--store", store, src)
	if !strings.Contains(out, "boot image docker-daemon:"+boot+":") {
		t.Errorf("convert does not name the boot image docker-daemon:%s:\n%s", boot, out)
	}

	// The daemon shows the original's config, bootinit in front of its
	// entrypoint and the mkbootfs labels aside.
	want, got := inspectConfig(t, src), inspectConfig(t, boot)
	if entrypoint := fmt.Sprint(got["Entrypoint"]); !strings.HasPrefix(entrypoint, "["+bootconfig.Bootinit+" -- sh -c ") {
		t.Errorf("the boot image's entrypoint is %s, want bootinit's followed by the original's", entrypoint)
	}
	labels, _ := got["Labels"].(map[string]any)
	delete(labels, converter.LabelSource)
	delete(labels, converter.LabelStores)
	got["Entrypoint"] = want["Entrypoint"]
	if !reflect.DeepEqual(got, want) {
		t.Errorf("docker image inspect %s:\n%v\nwant the original's:\n%v", boot, got, want)
	}

	run := []string{"--device", "/dev/fuse", "--cap-add", "SYS_ADMIN", "-v", store + ":/.bootfs/store:ro"}
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"no arguments", nil},
		{"arguments replace the cmd", []string{"x", "y z"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantOut, wantCode := dockerRunExit(t, append(append(append([]string{}, run...), src), tc.args...)...)
			gotOut, gotCode := dockerRunExit(t, append(append(append([]string{}, run...), boot), tc.args...)...)
			if gotOut != wantOut || gotCode != wantCode || wantCode != 7 {
				t.Errorf("the boot image: exit %d, output:\n%s\nthe original: exit %d, output:\n%s", gotCode, gotOut, wantCode, wantOut)
			}
		})
	}
}

// inspectConfig returns the config of an image as the docker daemon
// shows it.
func inspectConfig(t *testing.T, image string) map[string]any {
	t.Helper()
	var cfg map[string]any
	out := testenv.Run(t, "docker", "image", "inspect", "-f", "{{json .Config}}", image)
	if err := json.Unmarshal([]byte(out), &cfg); err != nil {
		t.Fatalf("docker image inspect %s: %v\n%s", image, err, out)
	}
	return cfg
}

// dockerRunExit runs a container and returns its output and exit code.
func dockerRunExit(t *testing.T, args ...string) (string, int) {
	t.Helper()
	out, err := dockerRun("", args...)
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		return out, exit.ExitCode()
	case err != nil:
		t.Fatalf("docker run %s: %v", strings.Join(args, " "), err)
	}
	return out, 0
}
