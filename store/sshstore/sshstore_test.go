package sshstore_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/mkbootfs/mkbootfs/internal/testserver"
	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/local"
	"github.com/mkbootfs/mkbootfs/store/sshstore"
	"github.com/mkbootfs/mkbootfs/store/storetest"
)

func openLocal(t *testing.T) *local.Store {
	t.Helper()
	l, err := local.Open(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// server starts an SSH server for the local store and returns it with the
// store's path on it.
type server func(t *testing.T, l *local.Store, writable bool) (*testserver.SSHD, string)

func openssh(t *testing.T, l *local.Store, _ bool) (*testserver.SSHD, string) {
	return testserver.StartSSHD(t), l.Dir()
}

func ours(t *testing.T, l *local.Store, writable bool) (*testserver.SSHD, string) {
	return testserver.SSH(t, l.Dir(), writable), "/"
}

var servers = []struct {
	name  string
	start server
}{{"openssh", openssh}, {"ours", ours}}

func TestConformance(t *testing.T) {
	for _, tc := range []struct {
		name     string
		start    server
		writable bool
	}{
		{"openssh", openssh, true},
		{"ours", ours, true},
		{"ours read-only", ours, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			storetest.Run(t, func(t *testing.T) *storetest.Backend {
				l := openLocal(t)
				srv, dir := tc.start(t, l, tc.writable)
				p := testserver.NewProxy(t, srv.Addr)
				known := testserver.KnownHosts(t, t.TempDir(), srv.HostKey.Signer.PublicKey(), p.Addr)
				s, err := sshstore.Open("ssh://"+srv.User+"@"+p.Addr+dir, sshstore.Options{KeyFile: srv.ClientKey.File, KnownHosts: known})
				if err != nil {
					t.Fatal(err)
				}
				b := &storetest.Backend{Store: s, Corrupt: storetest.CorruptLocal(l), Stall: p.Stall}
				if !tc.writable {
					b.Writer, b.ReadOnly = l, true
				}
				return b
			})
		})
	}
}

// TestRefused: every way a connection can be refused gives an error that
// says what to do, at once, and Retry does not try again.
func TestRefused(t *testing.T) {
	for _, srvc := range servers {
		t.Run(srvc.name, func(t *testing.T) {
			l := openLocal(t)
			srv, dir := srvc.start(t, l, true)
			tmp := t.TempDir()
			other := testserver.NewKey(t, tmp, "other")
			for _, tc := range []struct {
				name       string
				key        string
				knownHosts string
				want       []string
			}{
				{"wrong host key", srv.ClientKey.File, testserver.KnownHosts(t, t.TempDir(), other.Signer.PublicKey(), srv.Addr),
					[]string{"host key of", "changed", ssh.FingerprintSHA256(srv.HostKey.Signer.PublicKey()), "ssh-keygen -R"}},
				{"unknown host", srv.ClientKey.File, testserver.KnownHosts(t, t.TempDir(), srv.HostKey.Signer.PublicKey(), "127.0.0.2:22"),
					[]string{"is not in", ssh.FingerprintSHA256(srv.HostKey.Signer.PublicKey()), "ssh-keyscan"}},
				{"no known_hosts file", srv.ClientKey.File, filepath.Join(tmp, "nonexistent"),
					[]string{"is not in", filepath.Join(tmp, "nonexistent"), "MKBOOTFS_KNOWN_HOSTS"}},
				{"wrong user key", other.File, srv.KnownHosts,
					[]string{"refused our keys", ssh.FingerprintSHA256(other.Signer.PublicKey()), "authorized_keys"}},
			} {
				t.Run(tc.name, func(t *testing.T) {
					s, err := sshstore.Open("ssh://"+srv.User+"@"+srv.Addr+dir, sshstore.Options{KeyFile: tc.key, KnownHosts: tc.knownHosts, Timeout: time.Minute})
					if err != nil {
						t.Fatal(err)
					}
					defer s.Close()
					calls := 0
					counted := countingStore{s, &calls}
					_, err = store.Retry(counted, store.RetryOptions{MinDelay: time.Millisecond}).Get(context.Background(), store.Sum([]byte("x")))
					if err == nil || errors.Is(err, store.ErrNotFound) {
						t.Fatalf("Get: %v; want a refusal", err)
					}
					t.Log(err)
					for _, w := range tc.want {
						if !strings.Contains(err.Error(), w) {
							t.Errorf("error %q does not say %q", err, w)
						}
					}
					if calls != 1 {
						t.Errorf("Retry tried %d times; a refusal is final", calls)
					}
				})
			}
		})
	}
}

type countingStore struct {
	store.Store
	n *int
}

func (c countingStore) Get(ctx context.Context, id store.ID) ([]byte, error) {
	*c.n++
	return c.Store.Get(ctx, id)
}

// TestDeadServer: nothing listens, or a server accepts and says nothing:
// each ends with a clear error within the store's timeout.
func TestDeadServer(t *testing.T) {
	tmp := t.TempDir()
	key := testserver.NewKey(t, tmp, "key")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	silent := testserver.NewProxy(t, dead)
	silent.Stall()
	for _, tc := range []struct {
		name, addr string
		want       error
		says       string
	}{
		{"nothing listens", dead, nil, "connection refused"},
		{"silent", silent.Addr, context.DeadlineExceeded, "deadline"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			known := testserver.KnownHosts(t, t.TempDir(), key.Signer.PublicKey(), tc.addr)
			s, err := sshstore.Open("ssh://root@"+tc.addr+"/store", sshstore.Options{KeyFile: key.File, KnownHosts: known, Timeout: 300 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			for range 2 { // and again, on a fresh dial
				_, err = s.Has(context.Background(), store.Sum([]byte("x")))
				if err == nil || tc.want != nil && !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.says) || !strings.Contains(err.Error(), tc.addr) {
					t.Fatalf("Has: %v; want an error naming %s that says %q", err, tc.addr, tc.says)
				}
			}
		})
	}
}

// TestReconnect: the server drops the connection; the next request dials again.
func TestReconnect(t *testing.T) {
	l := openLocal(t)
	srv := testserver.SSH(t, l.Dir(), false)
	id, _, err := store.Save(context.Background(), l, []byte("chunk"))
	if err != nil {
		t.Fatal(err)
	}
	p := testserver.NewProxy(t, srv.Addr)
	known := testserver.KnownHosts(t, t.TempDir(), srv.HostKey.Signer.PublicKey(), p.Addr)
	s, err := sshstore.Open("ssh://x@"+p.Addr+"/", sshstore.Options{KeyFile: srv.ClientKey.File, KnownHosts: known})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range 3 {
		if _, err := store.Load(context.Background(), s, id); err != nil {
			t.Fatalf("Load %d: %v", i, err)
		}
		p.CloseAll()
		// The drop is noticed when the SSH connection's reader ends; a
		// request racing with it fails, and Retry tries again.
		if _, err := store.Load(context.Background(), store.Retry(s, store.RetryOptions{MinDelay: 10 * time.Millisecond}), id); err != nil {
			t.Fatalf("Load after a drop %d: %v", i, err)
		}
	}
}

func TestOpenErrors(t *testing.T) {
	tmp := t.TempDir()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	block, err := ssh.MarshalPrivateKeyWithPassphrase(priv, "", []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	locked := filepath.Join(tmp, "locked")
	os.WriteFile(locked, pem.EncodeToMemory(block), 0o600)
	garbage := filepath.Join(tmp, "garbage")
	os.WriteFile(garbage, []byte("not a key"), 0o600)
	badKnown := filepath.Join(tmp, "bad_known_hosts")
	os.WriteFile(badKnown, []byte("127.0.0.1 ssh-ed25519 !!!\n"), 0o600)
	good := testserver.NewKey(t, tmp, "good").File
	for _, tc := range []struct {
		name, url string
		opt       sshstore.Options
		want      string
	}{
		{"passphrase", "ssh://h/s", sshstore.Options{KeyFile: locked}, "ssh-add"},
		{"not a key", "ssh://h/s", sshstore.Options{KeyFile: garbage}, garbage},
		{"missing key", "ssh://h/s", sshstore.Options{KeyFile: filepath.Join(tmp, "nope")}, "nope"},
		{"bad known_hosts", "ssh://h/s", sshstore.Options{KeyFile: good, KnownHosts: badKnown}, "known_hosts"},
		{"password", "ssh://u:pw@h/s", sshstore.Options{KeyFile: good}, "keys only"},
		{"scheme", "http://h/s", sshstore.Options{KeyFile: good}, "ssh://"},
		{"no host", "ssh:///s", sshstore.Options{KeyFile: good}, "ssh://"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := sshstore.Open(tc.url, tc.opt)
			if err == nil {
				s.Close()
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
		})
	}
}

// TestKeySources: with no key named, the store uses $MKBOOTFS_SSH_KEY,
// then ssh-agent and ~/.ssh/id_*; with none of them it says what to do.
func TestKeySources(t *testing.T) {
	l := openLocal(t)
	srv := testserver.SSH(t, l.Dir(), false)
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("SSH_AUTH_SOCK", "")
	t.Setenv(sshstore.EnvKey, "")
	t.Setenv(sshstore.EnvKnownHosts, srv.KnownHosts)
	url := "ssh://x@" + srv.Addr + "/"
	works := func(t *testing.T) {
		t.Helper()
		s, err := sshstore.Open(url, sshstore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if _, err := s.Has(context.Background(), store.ID{}); err != nil {
			t.Fatal(err)
		}
	}

	if _, err := sshstore.Open(url, sshstore.Options{}); err == nil || !strings.Contains(err.Error(), "no SSH key") {
		t.Fatalf("Open with no key anywhere: %v", err)
	}
	t.Run("env", func(t *testing.T) {
		t.Setenv(sshstore.EnvKey, srv.ClientKey.File)
		works(t)
	})
	t.Run("agent", func(t *testing.T) {
		sock := filepath.Join(t.TempDir(), "agent.sock")
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		keyring := agent.NewKeyring()
		b, _ := os.ReadFile(srv.ClientKey.File)
		raw, err := ssh.ParseRawPrivateKey(b)
		if err != nil {
			t.Fatal(err)
		}
		if err := keyring.Add(agent.AddedKey{PrivateKey: raw}); err != nil {
			t.Fatal(err)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { agent.ServeAgent(keyring, c); c.Close() }()
			}
		}()
		t.Setenv("SSH_AUTH_SOCK", sock)
		works(t)
	})
	t.Run("home", func(t *testing.T) {
		os.MkdirAll(filepath.Join(home, ".ssh"), 0o700)
		b, _ := os.ReadFile(srv.ClientKey.File)
		os.WriteFile(filepath.Join(home, ".ssh", "id_ed25519"), b, 0o600)
		works(t)
	})
}
