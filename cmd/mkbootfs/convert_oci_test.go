package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/mkbootfs/mkbootfs/internal/testenv"
	"github.com/mkbootfs/mkbootfs/internal/testserver"
)

const busyboxImage = "mkbootfs-test/busybox:latest"

// The binaries `make build` makes, built once for every test of this
// test binary (TestMain removes them).
var (
	binOnce sync.Once
	binDir  string
	binErr  error
)

// built returns the program name (mkbootfs or bootinit) built as `make
// build` does: without the race detector.
func built(t *testing.T, name string) string {
	t.Helper()
	binOnce.Do(func() {
		if binDir, binErr = os.MkdirTemp("", "mkbootfs-test-bin-"); binErr != nil {
			return
		}
		build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", binDir, ".", "../bootinit")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("building mkbootfs and bootinit: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return filepath.Join(binDir, name)
}

// buildBootinit returns bootinit, built as `make build` does.
func buildBootinit(t *testing.T) string { return built(t, "bootinit") }

// runBuilt runs `mkbootfs ARGS...` built without the race detector, which
// slows a conversion or an extraction of the Debian tree 5 to 10 times: for
// trees a test only needs converted, and extractions that only check a
// result (the converter's and extract's own tests, and convertCLI and
// runCLI, run them under it).
func runBuilt(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(built(t, "mkbootfs"), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("mkbootfs %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// convertCLI runs `mkbootfs convert ARGS...` and returns its output.
func convertCLI(t *testing.T, args ...string) string {
	t.Helper()
	return runCLI(t, append([]string{"convert"}, args...)...)
}

// runCLI runs `mkbootfs ARGS...` and returns its output.
func runCLI(t *testing.T, args ...string) string {
	t.Helper()
	cmd := newRootCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	if err := cmd.Execute(); err != nil {
		t.Fatalf("mkbootfs %s: %v\n%s", strings.Join(args, " "), err, &out)
	}
	return out.String()
}

// dockerRun runs a container and returns its output and error.
func dockerRun(dockerConfig string, args ...string) (string, error) {
	var pre []string
	if dockerConfig != "" {
		pre = []string{"--config", dockerConfig}
	}
	out, err := exec.Command("docker", append(append(pre, "run", "--rm"), args...)...).CombinedOutput()
	return string(out), err
}

// lazily are the docker run flags of a boot image that reads a registry
// on this host.
var lazily = []string{"--network", "host", "--device", "/dev/fuse", "--cap-add", "SYS_ADMIN"}

func busybox(t *testing.T) string {
	t.Helper()
	testenv.Docker(t)
	if exec.Command("docker", "image", "inspect", busyboxImage).Run() != nil {
		testenv.Missing(t, "the docker image "+busyboxImage, "scripts/busybox-image.sh imports it")
	}
	return busyboxImage
}

// TestConvertToRegistry converts the busybox image to a registry target
// with no --store: the chunks go to the target's repository, docker pulls
// the boot image from the index, and the container reads its files from
// the registry.
func TestConvertToRegistry(t *testing.T) {
	testenv.FUSE(t)
	src := busybox(t)
	reg := testenv.Registry(t)
	bootinit := buildBootinit(t)
	target := reg + "/mkbootfs-test/busybox-oci:e2e-bootfs"
	out := convertCLI(t, "--bootinit", bootinit, "docker-daemon:"+src, target)
	pinned := regexp.MustCompile(`chunks from oci://` + regexp.QuoteMeta(reg) + `/mkbootfs-test/busybox-oci@(sha256:[0-9a-f]{64})`).FindStringSubmatch(out)
	if pinned == nil {
		t.Fatalf("convert does not say it pinned the chunks in the target's repository:\n%s", out)
	}
	testenv.Run(t, "docker", "pull", "-q", target)
	want, err := dockerRun("", src, "cat", "/etc/passwd")
	if err != nil {
		t.Fatalf("the original image: %v\n%s", err, want)
	}
	got, err := dockerRun("", append(lazily, target, "cat", "/etc/passwd")...)
	if err != nil || got != want {
		t.Fatalf("the boot image: %v\n%s\nwant:\n%s", err, got, want)
	}

	// Again through a counting proxy, with the cache on the host: a boot
	// reads the chunk table once, then one blob a chunk it reads.
	proxy, reqs := countRequests(t, reg)
	cache := t.TempDir()
	got, err = dockerRun("", append(lazily, "-v", cache+":/.bootfs/cache",
		"-e", "MKBOOTFS_STORE=oci://"+proxy+"/mkbootfs-test/busybox-oci@"+pinned[1], target, "cat", "/etc/passwd")...)
	if err != nil || got != want {
		t.Fatalf("the boot image through the proxy: %v\n%s", err, got)
	}
	chunks, _ := filepath.Glob(filepath.Join(cache, "*", "*.cacnk"))
	blobs, other, size := reqs.count()
	if blobs != len(chunks)+1 || other > 1 {
		t.Errorf("the boot made %d blob requests and %d others for %d chunks; want the table, one a chunk, and a ping", blobs, other, len(chunks))
	}
	t.Logf("boot: %d chunks, %d blob requests, %d others, %d bytes", len(chunks), blobs, other, size)
}

// requests counts what a client asks a registry for.
type requests struct {
	mu                 sync.Mutex
	blobs, other, size int
}

func (r *requests) count() (blobs, other, size int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.blobs, r.other, r.size
}

// countRequests starts a proxy to a registry that counts requests.
func countRequests(t *testing.T, registry string) (string, *requests) {
	r := &requests{}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: registry})
	rp.ModifyResponse = func(resp *http.Response) error {
		r.mu.Lock()
		defer r.mu.Unlock()
		if strings.Contains(resp.Request.URL.Path, "/blobs/") {
			r.blobs++
		} else {
			r.other++
		}
		r.size += int(resp.ContentLength)
		return nil
	}
	srv := httptest.NewServer(rp)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), r
}

// TestConvertToRegistryWithAuth does the same against a registry with
// htpasswd auth: convert and docker use a docker config, and the
// container reads it mounted at /.bootfs/auth.json.
func TestConvertToRegistryWithAuth(t *testing.T) {
	testenv.FUSE(t)
	src := busybox(t)
	r := testserver.StartDockerRegistry(t, testserver.RegistryOptions{Auth: true})
	bootinit := buildBootinit(t)
	cfgDir := t.TempDir()
	cfg, err := json.Marshal(map[string]any{"auths": map[string]any{r.Addr: map[string]string{
		"auth": base64.StdEncoding.EncodeToString([]byte(r.User + ":" + r.Password)),
	}}})
	if err != nil {
		t.Fatal(err)
	}
	authFile := filepath.Join(cfgDir, "config.json")
	if err := os.WriteFile(authFile, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", cfgDir) // convert's credentials, as after docker login
	target := r.Addr + "/busybox:e2e-bootfs"
	convertCLI(t, "--bootinit", bootinit, "docker-daemon:"+src, target)
	testenv.Run(t, "docker", "--config", cfgDir, "pull", "-q", target)
	t.Cleanup(func() { exec.Command("docker", "rmi", target).Run() })

	got, err := dockerRun("", append(lazily, "-v", authFile+":/.bootfs/auth.json:ro", target, "busybox", "echo", "lazy hello")...)
	if err != nil || got != "lazy hello\n" {
		t.Fatalf("the boot image with credentials: %v\n%s", err, got)
	}
	got, err = dockerRun("", append(lazily, target, "busybox", "echo", "lazy hello")...)
	if err == nil || !strings.Contains(got, "/.bootfs/auth.json") {
		t.Fatalf("the boot image without credentials: %v\n%s\nwant a failure that says to mount a docker config", err, got)
	}
}
