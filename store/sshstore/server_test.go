package sshstore_test

import (
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/mkbootfs/mkbootfs/internal/testserver"
)

// escapeTree makes tmp/secret, tmp/store and, inside the store, links
// that point out of it. It returns tmp and the store directory.
func escapeTree(t *testing.T) (string, string) {
	t.Helper()
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "store")
	for _, d := range []string{dir, filepath.Join(dir, "0000")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(tmp, "secret"), []byte("secret"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "0000", "chunk"), []byte("chunk"), 0o644))
	must(os.Symlink("..", filepath.Join(dir, "up")))                          // relative, out
	must(os.Symlink(filepath.Join(tmp, "secret"), filepath.Join(dir, "abs"))) // absolute, out
	must(os.Symlink(tmp, filepath.Join(dir, "absdir")))                       // absolute directory, out
	must(os.Symlink("0000/chunk", filepath.Join(dir, "inner")))               // stays inside
	return tmp, dir
}

func sftpClient(t *testing.T, srv *testserver.SSHD) *sftp.Client {
	t.Helper()
	hk, err := knownhosts.New(srv.KnownHosts)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ssh.Dial("tcp", srv.Addr, &ssh.ClientConfig{
		User: srv.User, Auth: []ssh.AuthMethod{ssh.PublicKeys(srv.ClientKey.Signer)},
		HostKeyCallback: hk, Timeout: 10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	sc, err := sftp.NewClient(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sc.Close() })
	return sc
}

// TestServerConfined: no path, however spelled, reads or writes outside
// the store directory, through `..` or a symlink.
func TestServerConfined(t *testing.T) {
	tmp, dir := escapeTree(t)
	c := sftpClient(t, testserver.SSH(t, dir, true))
	read := func(p string) (string, error) {
		f, err := c.Open(p)
		if err != nil {
			return "", err
		}
		defer f.Close()
		b, err := io.ReadAll(f)
		return string(b), err
	}
	for _, p := range []string{"/../secret", "../secret", "/../../../" + tmp + "/secret", "/up/secret", "up/store/../secret", "/abs", "/absdir/secret", tmp + "/secret"} {
		if got, err := read(p); err == nil || got == "secret" {
			t.Errorf("read %s = %q, %v; want refused", p, got, err)
		}
		if _, err := c.Stat(p); err == nil {
			t.Errorf("stat %s: no error", p)
		}
	}
	for _, p := range []string{"/0000/chunk", "0000/chunk", "/../0000/chunk", "/inner"} {
		if got, err := read(p); err != nil || got != "chunk" {
			t.Errorf("read %s = %q, %v; want the chunk", p, got, err)
		}
	}
	names := func(p string) []string {
		infos, err := c.ReadDir(p)
		if err != nil {
			return []string{err.Error()}
		}
		var n []string
		for _, fi := range infos {
			n = append(n, fi.Name())
		}
		return n
	}
	if n := names("/.."); !slices.Contains(n, "0000") || slices.Contains(n, "secret") {
		t.Errorf("ls /.. = %v; want the store's root", n)
	}
	if n := names("/up"); slices.Contains(n, "secret") {
		t.Errorf("ls /up = %v; want refused", n)
	}

	// Writes that try to leave land inside or fail.
	for _, p := range []string{"/up/evil", "/absdir/evil", "/up/store/../evil"} {
		if f, err := c.Create(p); err == nil {
			f.Close()
			t.Errorf("create %s: no error", p)
		}
	}
	if err := c.Mkdir("/up/evildir"); err == nil {
		t.Error("mkdir through a link out: no error")
	}
	if err := c.PosixRename("/0000/chunk", "/up/evil"); err == nil {
		t.Error("rename through a link out: no error")
	}
	if err := c.Symlink("/etc", "/etc-link"); err == nil {
		t.Error("symlink: no error")
	}
	if err := c.Remove("/up/secret"); err == nil {
		t.Error("remove through a link out: no error")
	}
	if f, err := c.Create("/../../evil"); err == nil {
		f.Close() // cleaned to the store's root: allowed, and inside
	}
	if _, err := os.Stat(filepath.Join(tmp, "secret")); err != nil {
		t.Errorf("the file outside is gone: %v", err)
	}
	for _, p := range []string{"evil", "evildir", "../evil"} {
		if _, err := os.Lstat(filepath.Join(tmp, p)); err == nil {
			t.Errorf("%s was created outside the store", filepath.Join(tmp, p))
		}
	}
}

// TestServerReadOnly: a read-only server reads and refuses every change.
func TestServerReadOnly(t *testing.T) {
	_, dir := escapeTree(t)
	c := sftpClient(t, testserver.SSH(t, dir, false))
	if _, err := c.Stat("/0000/chunk"); err != nil {
		t.Fatal(err)
	}
	for name, op := range map[string]func() error{
		"create": func() error {
			f, err := c.Create("/new")
			if err == nil {
				f.Close()
			}
			return err
		},
		"write existing": func() error {
			f, err := c.OpenFile("/0000/chunk", os.O_WRONLY)
			if err == nil {
				f.Close()
			}
			return err
		},
		"mkdir":        func() error { return c.Mkdir("/newdir") },
		"remove":       func() error { return c.Remove("/0000/chunk") },
		"rename":       func() error { return c.Rename("/0000/chunk", "/moved") },
		"posix rename": func() error { return c.PosixRename("/0000/chunk", "/moved") },
		"chmod":        func() error { return c.Chmod("/0000/chunk", 0o777) },
	} {
		if err := op(); !os.IsPermission(err) {
			t.Errorf("%s on a read-only server: %v; want permission denied", name, err)
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "0000", "chunk")); err != nil || string(b) != "chunk" {
		t.Errorf("the chunk changed: %q, %v", b, err)
	}
}

// TestServerOnlySFTP: no shell, no command, no forwarding.
func TestServerOnlySFTP(t *testing.T) {
	_, dir := escapeTree(t)
	srv := testserver.SSH(t, dir, true)
	hk, _ := knownhosts.New(srv.KnownHosts)
	c, err := ssh.Dial("tcp", srv.Addr, &ssh.ClientConfig{
		User: srv.User, Auth: []ssh.AuthMethod{ssh.PublicKeys(srv.ClientKey.Signer)}, HostKeyCallback: hk, Timeout: 10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := sess.CombinedOutput("cat /etc/passwd"); err == nil {
		t.Errorf("exec ran: %q", out)
	}
	if conn, err := c.Dial("tcp", srv.Addr); err == nil {
		conn.Close()
		t.Error("port forwarding works")
	}
}
