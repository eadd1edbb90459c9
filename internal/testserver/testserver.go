// Package testserver starts the real servers that the store tests and
// benchmarks run against (Debian's nginx and OpenSSH sshd, each on a free
// loopback port with a generated config in a temp dir), and a TCP proxy
// that can stall. Every server stops in t.Cleanup.
package testserver

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/template"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/mkbootfs/mkbootfs/internal/testenv"
)

// startLimit bounds how long a server may take to listen.
const startLimit = 20 * time.Second

// FreePort returns a loopback address whose port was free a moment ago,
// for servers that take their port from a config file or a flag.
func FreePort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// start runs a server in the foreground, waits until addr accepts, and
// stops it in t.Cleanup, or earlier with the function it returns. log is
// the file the server writes its errors to, shown when it fails to start.
func start(t testing.TB, addr, log string, name string, args ...string) (stop func()) {
	t.Helper()
	cmd := exec.Command(name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var once sync.Once
	stop = func() { once.Do(func() { stopProcess(cmd, exited) }) }
	t.Cleanup(stop)
	logs := func() string {
		b, _ := os.ReadFile(log)
		return strings.TrimSpace(out.String() + "\n" + string(b))
	}
	deadline := time.Now().Add(startLimit)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return stop
		}
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("%s exited before listening on %s (%v):\n%s", name, addr, err, logs())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not listen on %s within %v:\n%s", name, addr, startLimit, logs())
		}
	}
}

// stopProcess signals a server to stop and waits for it, killing it when
// it takes too long.
func stopProcess(cmd *exec.Cmd, exited chan error) {
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		exited <- err
	case <-time.After(startLimit):
		cmd.Process.Kill()
		exited <- <-exited
	}
}

var nginxConf = template.Must(template.New("nginx").Parse(`
user root;
worker_processes 1;
pid {{.Tmp}}/nginx.pid;
error_log {{.Tmp}}/error.log;
events { worker_connections 1024; }
http {
	access_log off;
	client_body_temp_path {{.Tmp}}/body;
	proxy_temp_path {{.Tmp}}/proxy;
	fastcgi_temp_path {{.Tmp}}/fastcgi;
	uwsgi_temp_path {{.Tmp}}/uwsgi;
	scgi_temp_path {{.Tmp}}/scgi;
	keepalive_requests 1000000;
	server {
		listen {{.Addr}};
		root {{.Dir}};
		location / {
			{{if .Writable}}dav_methods PUT;
			create_full_put_path on;
			dav_access user:rw group:r all:r;
			client_max_body_size 32m;{{end}}
		}
	}
}
`))

// Nginx serves dir with Debian's nginx as a static site, accepting PUT
// (WebDAV) when writable, and returns its base URL.
func Nginx(t testing.TB, dir string, writable bool) string {
	t.Helper()
	bin := testenv.Command(t, "nginx")
	testenv.Root(t) // the generated config runs the workers as root, to read t.TempDir()
	tmp := t.TempDir()
	addr := FreePort(t)
	conf := filepath.Join(tmp, "nginx.conf")
	var b bytes.Buffer
	if err := nginxConf.Execute(&b, map[string]any{"Tmp": tmp, "Addr": addr, "Dir": dir, "Writable": writable}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(conf, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { showLog(t, filepath.Join(tmp, "error.log")) })
	start(t, addr, filepath.Join(tmp, "error.log"), bin, "-e", filepath.Join(tmp, "error.log"), "-c", conf, "-g", "daemon off;")
	return "http://" + addr + "/"
}

// showLog shows a server's log when the test failed.
func showLog(t testing.TB, file string) {
	if b, _ := os.ReadFile(file); t.Failed() && len(b) > 0 {
		t.Logf("%s:\n%s", file, b)
	}
}

// Key is an ed25519 key pair with its private key in an OpenSSH key file.
type Key struct {
	Signer ssh.Signer
	File   string
}

// NewKey generates a key and writes its private half to a file in dir.
func NewKey(t testing.TB, dir, name string) Key {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, name)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, name)
	if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	return Key{Signer: signer, File: file}
}

// AuthorizedKeys writes an authorized_keys file with the keys' public halves.
func AuthorizedKeys(t testing.TB, file string, keys ...Key) {
	t.Helper()
	var b []byte
	for _, k := range keys {
		b = append(b, ssh.MarshalAuthorizedKey(k.Signer.PublicKey())...)
	}
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// KnownHosts writes a known_hosts file in which host key key belongs to
// every address in addrs, and returns its path.
func KnownHosts(t testing.TB, dir string, key ssh.PublicKey, addrs ...string) string {
	t.Helper()
	file := filepath.Join(dir, "known_hosts")
	line := knownhosts.Line(addrs, key) + "\n"
	if err := os.WriteFile(file, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// SSHD is a running OpenSSH sshd that lets User in with ClientKey.
type SSHD struct {
	Addr      string
	User      string
	HostKey   Key
	ClientKey Key
	// KnownHosts is a known_hosts file that lists HostKey for Addr.
	KnownHosts string
}

var sshdConf = template.Must(template.New("sshd").Parse(`
ListenAddress {{.Addr}}
HostKey {{.Tmp}}/host_key
PidFile {{.Tmp}}/sshd.pid
AuthorizedKeysFile {{.Tmp}}/authorized_keys
StrictModes no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
X11Forwarding no
AllowTcpForwarding no
MaxStartups 100
MaxSessions 100
LogLevel ERROR
Subsystem sftp {{.SFTPServer}}
`))

// StartSSHD starts Debian's sshd on a free loopback port with a new host
// key and a new authorized client key; its SFTP subsystem is the stock
// sftp-server.
func StartSSHD(t testing.TB) *SSHD {
	t.Helper()
	testenv.Root(t) // sshd wants root to switch to the logged-in user
	bin := testenv.Command(t, "sshd")
	sftpServer := "/usr/lib/openssh/sftp-server"
	if _, err := os.Stat(sftpServer); err != nil {
		testenv.Missing(t, sftpServer, "apt-get install openssh-server")
	}
	// sshd insists on its privilege separation directory.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	s := &SSHD{
		Addr:      FreePort(t),
		User:      "root",
		HostKey:   NewKey(t, tmp, "host_key"),
		ClientKey: NewKey(t, tmp, "client_key"),
	}
	AuthorizedKeys(t, filepath.Join(tmp, "authorized_keys"), s.ClientKey)
	s.KnownHosts = KnownHosts(t, tmp, s.HostKey.Signer.PublicKey(), s.Addr)
	conf := filepath.Join(tmp, "sshd_config")
	var b bytes.Buffer
	if err := sshdConf.Execute(&b, map[string]any{"Tmp": tmp, "Addr": s.Addr, "SFTPServer": sftpServer}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(conf, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(tmp, "sshd.log")
	start(t, s.Addr, log, bin, "-D", "-f", conf, "-E", log)
	return s
}

// Proxy forwards TCP connections to a target until Stall is called; then
// it holds every connection open and forwards nothing, like a server that
// hangs. It stops in t.Cleanup.
type Proxy struct {
	Addr string

	ln      net.Listener
	target  string
	stalled chan struct{} // closed by Stall
	stall   sync.Once
	done    chan struct{} // closed by cleanup
	mu      sync.Mutex
	conns   []net.Conn
}

// NewProxy starts a proxy to target on a free loopback port.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{Addr: ln.Addr().String(), ln: ln, target: target, stalled: make(chan struct{}), done: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); p.accept(&wg) }()
	t.Cleanup(func() {
		close(p.done)
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		wg.Wait()
	})
	return p
}

// Stall stops all forwarding, on open and new connections.
func (p *Proxy) Stall() { p.stall.Do(func() { close(p.stalled) }) }

// CloseAll drops every open connection, like a server that restarts; new
// connections are forwarded as before.
func (p *Proxy) CloseAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.done:
		c.Close()
		return false
	default:
	}
	p.conns = append(p.conns, c)
	return true
}

func (p *Proxy) accept(wg *sync.WaitGroup) {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-p.stalled:
				<-p.done
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), startLimit)
			up, err := (&net.Dialer{}).DialContext(ctx, "tcp", p.target)
			cancel()
			if err != nil {
				c.Close()
				return
			}
			if !p.track(up) {
				c.Close()
				return
			}
			wg.Add(2)
			go func() { defer wg.Done(); p.pipe(up, c) }()
			go func() { defer wg.Done(); p.pipe(c, up) }()
		}()
	}
}

// pipe copies src to dst until either ends or the proxy stalls.
func (p *Proxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		select {
		case <-p.stalled:
			<-p.done
			return
		default:
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				if cw, ok := dst.(interface{ CloseWrite() error }); ok {
					cw.CloseWrite()
				}
			}
			return
		}
	}
}

// String names the proxy in messages.
func (p *Proxy) String() string { return fmt.Sprintf("proxy %s -> %s", p.Addr, p.target) }
