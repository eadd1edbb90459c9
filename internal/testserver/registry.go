package testserver

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"text/template"

	"golang.org/x/crypto/bcrypt"

	"github.com/mkbootfs/mkbootfs/internal/testenv"
)

// DockerRegistry is a running Debian docker-registry (the CNCF
// distribution registry) with its own config and storage, on a free
// loopback port.
type DockerRegistry struct {
	Addr string
	// Root is the storage root: blobs are under Root/docker/registry/v2/blobs.
	Root string
	// Config is the config file, for `docker-registry garbage-collect`.
	Config string
	// User and Password log in when htpasswd auth is on.
	User, Password string

	bin  string
	stop func()
}

var registryConf = template.Must(template.New("registry").Parse(`version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {{.Root}}
  delete:
    enabled: true
{{if .ReadOnly}}  maintenance:
    readonly:
      enabled: true
{{end}}http:
  addr: {{.Addr}}
{{if .Htpasswd}}auth:
  htpasswd:
    realm: mkbootfs-test
    path: {{.Htpasswd}}
{{end}}`))

// RegistryOptions configure StartDockerRegistry.
type RegistryOptions struct {
	// Auth turns htpasswd basic auth on, with one user.
	Auth bool
	// ReadOnly puts the registry in read-only mode: writes get 405.
	ReadOnly bool
	// Root, if set, is the storage of another registry to serve too.
	Root string
}

// StartDockerRegistry starts docker-registry. There is no blob descriptor
// cache, so a test that rewrites a blob's file sees the registry serve it
// as it is.
func StartDockerRegistry(t testing.TB, opt RegistryOptions) *DockerRegistry {
	t.Helper()
	r := &DockerRegistry{bin: testenv.Command(t, "docker-registry"), Addr: FreePort(t), Root: opt.Root}
	tmp := t.TempDir()
	r.Config = filepath.Join(tmp, "config.yml")
	if r.Root == "" {
		r.Root = filepath.Join(tmp, "data")
	}
	htpasswd := ""
	if opt.Auth {
		r.User, r.Password = "mkbootfs", "test-password"
		hash, err := bcrypt.GenerateFromPassword([]byte(r.Password), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		htpasswd = filepath.Join(tmp, "htpasswd")
		if err := os.WriteFile(htpasswd, []byte(r.User+":"+string(hash)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var b bytes.Buffer
	if err := registryConf.Execute(&b, map[string]any{"Root": r.Root, "Addr": r.Addr, "Htpasswd": htpasswd, "ReadOnly": opt.ReadOnly}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(r.Config, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	r.Start(t)
	return r
}

// Start starts the registry again after Stop, on the same port and storage.
func (r *DockerRegistry) Start(t testing.TB) {
	t.Helper()
	r.stop = start(t, r.Addr, "", r.bin, "serve", r.Config)
}

// Stop stops the registry and waits for it to exit.
func (r *DockerRegistry) Stop() { r.stop() }

// GarbageCollect stops the registry, runs its garbage collector (as its
// documentation requires, with no registry writing the storage), starts
// it again and returns the collector's output.
func (r *DockerRegistry) GarbageCollect(t testing.TB, deleteUntagged bool) string {
	t.Helper()
	r.Stop()
	args := []string{"garbage-collect"}
	if deleteUntagged {
		args = append(args, "--delete-untagged")
	}
	out, err := exec.Command(r.bin, append(args, r.Config)...).CombinedOutput()
	if err != nil {
		t.Fatalf("docker-registry %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	r.Start(t)
	return string(out)
}

// BlobFile returns the file that holds blob digest ("sha256:HEX").
func (r *DockerRegistry) BlobFile(digest string) string {
	hex := strings.TrimPrefix(digest, "sha256:")
	return filepath.Join(r.Root, "docker/registry/v2/blobs/sha256", hex[:2], hex, "data")
}

// String names the registry in messages.
func (r *DockerRegistry) String() string { return fmt.Sprintf("docker-registry at %s", r.Addr) }
