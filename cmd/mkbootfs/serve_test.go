package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/mkbootfs/mkbootfs/internal/testenv"
	"github.com/mkbootfs/mkbootfs/internal/testserver"
	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/local"
	"github.com/mkbootfs/mkbootfs/store/location"
)

// TestServe runs `mkbootfs serve --http --ssh` and reads a chunk back
// through each, with the addresses and host key it prints.
func TestServe(t *testing.T) {
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "store")
	l, err := local.Open(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("a chunk served by mkbootfs serve")
	id, _, err := store.Save(context.Background(), l, data)
	if err != nil {
		t.Fatal(err)
	}
	host := testserver.NewKey(t, tmp, "host_key")
	client := testserver.NewKey(t, tmp, "client_key")
	testserver.AuthorizedKeys(t, filepath.Join(tmp, "authorized_keys"), client)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	var logs bytes.Buffer
	cmd := newRootCmd()
	cmd.SetArgs([]string{"serve", "--http", "127.0.0.1:0", "--ssh", "127.0.0.1:0",
		"--host-key", host.File, "--authorized-keys", filepath.Join(tmp, "authorized_keys"), dir})
	cmd.SetOut(pw)
	cmd.SetErr(&serveLogs{b: &logs})
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx); pw.Close() }()

	lines := bufio.NewScanner(pr)
	next := func() string {
		if !lines.Scan() {
			t.Fatalf("serve printed no address; it returned %v", <-done)
		}
		return lines.Text()
	}
	httpLine, sshLine := next(), next()
	go io.Copy(io.Discard, pr)
	httpURL := regexp.MustCompile(`http://\S+`).FindString(httpLine)
	sshAddr := regexp.MustCompile(`ssh://(\S+)/`).FindStringSubmatch(sshLine)
	if httpURL == "" || sshAddr == nil || !strings.Contains(sshLine, ssh.FingerprintSHA256(host.Signer.PublicKey())) {
		t.Fatalf("serve printed %q and %q; want the URLs and the host key", httpLine, sshLine)
	}

	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(httpURL + "healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("healthz: %s", resp.Status)
	}
	known := testserver.KnownHosts(t, tmp, host.Signer.PublicKey(), sshAddr[1])
	for _, u := range []string{httpURL, "ssh://me@" + sshAddr[1] + "/"} {
		s, err := location.Open(ctx, u, location.Options{SSHKey: client.File, KnownHosts: known, Timeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		got, err := store.Load(ctx, s, id)
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("Load through %s: %v", u, err)
		}
		// Read-only: a write is refused.
		if err := s.Put(ctx, store.Sum([]byte("new")), store.Encode([]byte("new"))); !errors.Is(err, store.ErrReadOnly) {
			t.Errorf("Put through %s on a read-only serve: %v", u, err)
		}
		s.Close()
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve after its context ended: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("serve did not stop when its context ended")
	}
	if l := logs.String(); !strings.Contains(l, "path=/healthz") || !strings.Contains(l, "ssh login") {
		t.Errorf("logs lack the requests and logins:\n%s", l)
	}
}

// TestServeHTTPConfined runs a real `mkbootfs serve --http --writable`
// over a store where chunk names are symlinks out of it: to /etc/shadow,
// and a chunk directory to another directory (which Open would read from
// and write to). Nothing outside is served or written; the store's own
// chunks are, and a path that climbs out is not a chunk.
func TestServeHTTPConfined(t *testing.T) {
	testenv.Root(t) // to read /etc/shadow, as a server run by root could
	ctx := context.Background()
	dir, outside := t.TempDir(), t.TempDir()
	l, err := local.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("a chunk inside the store")
	id, _, err := store.Save(ctx, l, data)
	if err != nil {
		t.Fatal(err)
	}
	shadow, err := os.ReadFile("/etc/shadow")
	if err != nil {
		t.Fatal(err)
	}
	chunkPath := func(id store.ID) string { h := id.String(); return h[:4] + "/" + h + ".cacnk" }
	toShadow := store.Sum([]byte("shadow"))
	os.MkdirAll(filepath.Join(dir, filepath.Dir(chunkPath(toShadow))), 0o755)
	if err := os.Symlink("/etc/shadow", filepath.Join(dir, chunkPath(toShadow))); err != nil {
		t.Fatal(err)
	}
	// A valid chunk outside, so that following the symlink would pass even a
	// client's verification.
	outData := []byte("a chunk outside the store")
	outID := store.Sum(outData)
	os.MkdirAll(filepath.Join(outside, filepath.Dir(chunkPath(outID))), 0o755)
	os.WriteFile(filepath.Join(outside, chunkPath(outID)), store.Encode(outData), 0o644)
	if err := os.Symlink(filepath.Join(outside, filepath.Dir(chunkPath(outID))), filepath.Join(dir, filepath.Dir(chunkPath(outID)))); err != nil {
		t.Fatal(err)
	}
	newData := []byte("a chunk put through a directory that leads out")
	newID := store.Sum(newData)
	if err := os.Symlink(outside, filepath.Join(dir, filepath.Dir(chunkPath(newID)))); err != nil {
		t.Fatal(err) // the data is fixed: its prefix is none of the others'
	}

	srv := startServe(t, "--http", "127.0.0.1:0", "--writable", dir)
	c := &http.Client{Timeout: 10 * time.Second}
	do := func(method, path string, body []byte) (int, []byte) {
		t.Helper()
		req, err := http.NewRequest(method, srv+path, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	if code, b := do("GET", chunkPath(id), nil); code != 200 || !bytes.Equal(b, store.Encode(data)) {
		t.Errorf("GET of a chunk in the store: %d, %d bytes", code, len(b))
	}
	for _, path := range []string{chunkPath(toShadow), chunkPath(outID)} {
		for _, method := range []string{"GET", "HEAD"} {
			if code, b := do(method, path, nil); code == 200 || (len(shadow) > 0 && bytes.Contains(b, shadow[:min(len(shadow), 20)])) || bytes.Equal(b, store.Encode(outData)) {
				t.Errorf("%s %s (a symlink out of the store): %d %q; want it refused", method, path, code, b)
			}
		}
	}
	for _, path := range []string{"../../etc/shadow", chunkPath(id)[:5] + "..%2f..%2fetc%2fshadow"} {
		if code, b := do("GET", path, nil); code != 404 {
			t.Errorf("GET %s: %d %q; want 404", path, code, b)
		}
	}
	if code, b := do("PUT", chunkPath(newID), store.Encode(newData)); code == 201 {
		t.Errorf("PUT through a directory symlinked out of the store: %d %q; want it refused", code, b)
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 1 {
		t.Errorf("PUT wrote outside the store: %d entries there, want 1", len(ents))
	}
}

// startServe runs a real `mkbootfs serve ARGS...` and returns the URL it
// prints first; the process is stopped when the test ends.
func startServe(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"serve"}, args...)...)
	cmd.Env = append(os.Environ(), envRunMain+"=1")
	var stderr bytes.Buffer
	cmd.Stderr = &serveLogs{b: &stderr}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	line := make(chan string, 1)
	go func() {
		r := bufio.NewReader(out)
		l, _ := r.ReadString('\n')
		line <- l
		io.Copy(io.Discard, r)
	}()
	select {
	case l := <-line:
		u := regexp.MustCompile(`http://\S+`).FindString(l)
		if u == "" {
			t.Fatalf("serve printed %q, no URL\n%s", l, stderr.String())
		}
		return u
	case <-time.After(30 * time.Second):
		t.Fatalf("serve printed nothing in 30 s\n%s", stderr.String())
	}
	return ""
}

func TestServeUsage(t *testing.T) {
	dir := t.TempDir()
	checkUsage(t, []usage{
		{[]string{"serve", dir}, "--http ADDR, --ssh ADDR"},
		{[]string{"serve", "--ssh", "127.0.0.1:0", dir}, "--host-key"},
		{[]string{"serve", "--http", "127.0.0.1:0", filepath.Join(dir, "missing")}, "missing"},
		{[]string{"serve", "--ssh", "127.0.0.1:0", "--host-key", filepath.Join(dir, "nokey"), "--authorized-keys", filepath.Join(dir, "nokeys"), dir}, "ssh-keygen"},
		{[]string{"serve", "--http", "256.0.0.1:0", dir}, "256.0.0.1"},
	})
}

// serveLogs is a buffer that the servers' goroutines write to at once.
type serveLogs struct {
	mu sync.Mutex
	b  *bytes.Buffer
}

func (w *serveLogs) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}
