package sshstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path"
	"sync"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
)

// ServerOptions configure a Server.
type ServerOptions struct {
	// Dir is the store directory; no request reaches outside it.
	Dir string
	// HostKey is the server's host key.
	HostKey ssh.Signer
	// AuthorizedKeys are the client keys let in, whatever the user name.
	AuthorizedKeys []ssh.PublicKey
	// Writable lets clients create, rename and remove files; otherwise
	// the store is read-only.
	Writable bool
	// Logger gets connections, logins and refusals; nil logs nothing.
	Logger *slog.Logger
}

// handshakeTimeout bounds a client's login: a connection that says nothing
// does not hold a slot.
const handshakeTimeout = 30 * time.Second

// Server serves a store directory over SFTP, and nothing else: no shell,
// no exec, no forwarding.
type Server struct {
	root   *os.Root
	config *ssh.ServerConfig
	opt    ServerOptions
	log    *slog.Logger

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// LoadHostKey reads a private host key file.
func LoadHostKey(file string) (ssh.Signer, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("host key: %w (generate one with ssh-keygen -t ed25519 -N '' -f %s)", err, file)
	}
	s, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("host key %s: %w (it must be an unencrypted private key)", file, err)
	}
	return s, nil
}

// LoadAuthorizedKeys reads an authorized_keys file; options in it are ignored.
func LoadAuthorizedKeys(file string) ([]ssh.PublicKey, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("authorized keys: %w", err)
	}
	var keys []ssh.PublicKey
	for len(b) > 0 {
		var k ssh.PublicKey
		var rest []byte
		k, _, _, rest, err = ssh.ParseAuthorizedKey(b)
		if err != nil {
			break // ParseAuthorizedKey skips blank and comment lines; the rest is bad
		}
		keys = append(keys, k)
		b = rest
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("authorized keys %s: no public key in the file", file)
	}
	return keys, nil
}

// NewServer returns a server for the store directory opt.Dir.
func NewServer(opt ServerOptions) (*Server, error) {
	if opt.HostKey == nil {
		return nil, errors.New("ssh server: no host key")
	}
	if len(opt.AuthorizedKeys) == 0 {
		return nil, errors.New("ssh server: no authorized keys: nobody could log in")
	}
	root, err := os.OpenRoot(opt.Dir)
	if err != nil {
		return nil, fmt.Errorf("ssh server: store %w", err)
	}
	log := opt.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	allowed := map[string]bool{}
	for _, k := range opt.AuthorizedKeys {
		allowed[string(k.Marshal())] = true
	}
	s := &Server{root: root, opt: opt, log: log, conns: map[net.Conn]struct{}{}}
	s.config = &ssh.ServerConfig{
		PublicKeyCallback: func(md ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			if !allowed[string(key.Marshal())] {
				return nil, fmt.Errorf("key %s not authorized", ssh.FingerprintSHA256(key))
			}
			return &ssh.Permissions{Extensions: map[string]string{"key": ssh.FingerprintSHA256(key)}}, nil
		},
		AuthLogCallback: func(md ssh.ConnMetadata, method string, err error) {
			if err != nil && method != "none" {
				log.Warn("login refused", "remote", md.RemoteAddr(), "user", md.User(), "method", method, "err", err)
			}
		},
	}
	s.config.AddHostKey(opt.HostKey)
	return s, nil
}

// Serve accepts connections on ln until ctx ends, then closes them all
// and returns once their handlers are done.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
	})
	defer stop()
	defer s.wg.Wait()
	for {
		nc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("ssh server on %s: %w", ln.Addr(), err)
		}
		s.mu.Lock()
		if ctx.Err() != nil {
			s.mu.Unlock()
			nc.Close()
			return nil
		}
		s.conns[nc] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			s.serveConn(nc)
			s.mu.Lock()
			delete(s.conns, nc)
			s.mu.Unlock()
		}()
	}
}

// Close releases the store directory; call it after Serve returns.
func (s *Server) Close() error { return s.root.Close() }

func (s *Server) serveConn(nc net.Conn) {
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(handshakeTimeout))
	sc, chans, reqs, err := ssh.NewServerConn(nc, s.config)
	if err != nil {
		s.log.Info("ssh handshake failed", "remote", nc.RemoteAddr(), "err", err)
		return
	}
	nc.SetDeadline(time.Time{})
	log := s.log.With("remote", sc.RemoteAddr(), "user", sc.User(), "key", sc.Permissions.Extensions["key"])
	log.Info("ssh login")
	defer func() { log.Info("ssh logout") }()
	go ssh.DiscardRequests(reqs)
	var wg sync.WaitGroup
	defer wg.Wait()
	for nch := range chans {
		if nch.ChannelType() != "session" {
			nch.Reject(ssh.UnknownChannelType, "only SFTP sessions are served")
			continue
		}
		ch, creqs, err := nch.Accept()
		if err != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.session(ch, creqs, log)
		}()
	}
}

// session answers the one request a session may make, the sftp subsystem.
func (s *Server) session(ch ssh.Channel, reqs <-chan *ssh.Request, log *slog.Logger) {
	defer ch.Close()
	for req := range reqs {
		if req.Type != "subsystem" || string(req.Payload) != "\x00\x00\x00\x04sftp" {
			req.Reply(false, nil)
			continue
		}
		req.Reply(true, nil)
		go ssh.DiscardRequests(reqs)
		h := &files{root: s.root, writable: s.opt.Writable}
		rs := sftp.NewRequestServer(ch, sftp.Handlers{FileGet: h, FilePut: h, FileCmd: h, FileList: h}, sftp.WithRSMaxTxPacket(maxPacket))
		if err := rs.Serve(); err != nil && !errors.Is(err, io.EOF) {
			log.Warn("sftp session ended", "err", err)
		}
		ch.SendRequest("exit-status", false, []byte{0, 0, 0, 0})
		rs.Close()
		return
	}
}

// files implements the SFTP handlers on an os.Root: the kernel, not path
// checks, keeps `..` and symlinks from leaving the store.
type files struct {
	root     *os.Root
	writable bool
}

// rel turns an SFTP path (absolute, cleaned by pkg/sftp) into one within the root.
func rel(p string) string {
	p = path.Clean("/" + p)
	if p == "/" {
		return "."
	}
	return p[1:]
}

var errReadOnly = fmt.Errorf("%w: the store is served read-only", sftp.ErrSSHFxPermissionDenied)

func (f *files) Fileread(r *sftp.Request) (io.ReaderAt, error) {
	return f.root.Open(rel(r.Filepath))
}

func (f *files) Filewrite(r *sftp.Request) (io.WriterAt, error) {
	if !f.writable {
		return nil, errReadOnly
	}
	pf := r.Pflags()
	flag := os.O_WRONLY
	if pf.Creat {
		flag |= os.O_CREATE
	}
	if pf.Trunc {
		flag |= os.O_TRUNC
	}
	if pf.Excl {
		flag |= os.O_EXCL
	}
	file, err := f.root.OpenFile(rel(r.Filepath), flag, 0o644)
	if err != nil {
		return nil, err
	}
	return syncOnClose{file}, nil
}

// syncOnClose makes a written file durable before the client, which
// renames it into place next, hears that it is closed.
type syncOnClose struct{ *os.File }

func (f syncOnClose) Close() error {
	err := f.File.Sync()
	if cerr := f.File.Close(); err == nil {
		err = cerr
	}
	return err
}

func (f *files) Filecmd(r *sftp.Request) error {
	if !f.writable {
		return errReadOnly
	}
	p := rel(r.Filepath)
	switch r.Method {
	case "Mkdir":
		return f.root.Mkdir(p, 0o755)
	case "Remove", "Rmdir":
		return f.root.Remove(p)
	case "Rename": // SFTP's rename does not replace
		if _, err := f.root.Lstat(rel(r.Target)); err == nil {
			return fmt.Errorf("%w: %s exists", sftp.ErrSSHFxFailure, r.Target)
		}
		return f.root.Rename(p, rel(r.Target))
	case "Setstat":
		return nil // modes and times of chunks do not matter
	}
	return sftp.ErrSSHFxOpUnsupported // links: the store has none
}

func (f *files) PosixRename(r *sftp.Request) error {
	if !f.writable {
		return errReadOnly
	}
	return f.root.Rename(rel(r.Filepath), rel(r.Target))
}

func (f *files) Filelist(r *sftp.Request) (sftp.ListerAt, error) {
	p := rel(r.Filepath)
	switch r.Method {
	case "List":
		d, err := f.root.Open(p)
		if err != nil {
			return nil, err
		}
		defer d.Close()
		entries, err := d.ReadDir(-1)
		if err != nil {
			return nil, err
		}
		var infos listing
		for _, e := range entries {
			if fi, err := e.Info(); err == nil {
				infos = append(infos, fi)
			}
		}
		return infos, nil
	case "Stat":
		fi, err := f.root.Stat(p)
		if err != nil {
			return nil, err
		}
		return listing{fi}, nil
	}
	return nil, sftp.ErrSSHFxOpUnsupported // Readlink: the store has no links to read
}

func (f *files) Lstat(r *sftp.Request) (sftp.ListerAt, error) {
	fi, err := f.root.Lstat(rel(r.Filepath))
	if err != nil {
		return nil, err
	}
	return listing{fi}, nil
}

type listing []fs.FileInfo

func (l listing) ListAt(dst []fs.FileInfo, off int64) (int, error) {
	if off >= int64(len(l)) {
		return 0, io.EOF
	}
	n := copy(dst, l[off:])
	if n < len(dst) {
		return n, io.EOF
	}
	return n, nil
}
