package testserver

import (
	"context"
	"net"
	"net/http/httptest"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/mkbootfs/mkbootfs/store/httpstore"
	"github.com/mkbootfs/mkbootfs/store/local"
	"github.com/mkbootfs/mkbootfs/store/sshstore"
)

// HTTP serves the local store l with httpstore's handler and returns its URL.
func HTTP(t testing.TB, l *local.Store, writable bool) string {
	t.Helper()
	srv := httptest.NewServer(httpstore.NewHandler(l, httpstore.HandlerOptions{Writable: writable}))
	t.Cleanup(srv.Close)
	return srv.URL + "/"
}

// SSH starts sshstore's SFTP server for dir on a free loopback port. The
// store is at the root of the server: ssh://User@Addr/.
func SSH(t testing.TB, dir string, writable bool) *SSHD {
	t.Helper()
	tmp := t.TempDir()
	s := &SSHD{User: "mkbootfs", HostKey: NewKey(t, tmp, "host_key"), ClientKey: NewKey(t, tmp, "client_key")}
	srv, err := sshstore.NewServer(sshstore.ServerOptions{
		Dir:            dir,
		HostKey:        s.HostKey.Signer,
		AuthorizedKeys: []ssh.PublicKey{s.ClientKey.Signer.PublicKey()},
		Writable:       writable,
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.Addr = ln.Addr().String()
	s.KnownHosts = KnownHosts(t, tmp, s.HostKey.Signer.PublicKey(), s.Addr)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ssh server: %v", err)
		}
		srv.Close()
	})
	return s
}
