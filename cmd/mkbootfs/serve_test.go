package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

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
