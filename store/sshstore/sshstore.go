// Package sshstore owns chunk stores over SSH: a client that reads and
// writes casync's layout through SFTP on any OpenSSH server (nothing but
// its sftp-server needed), and the SFTP server that `mkbootfs serve --ssh`
// runs, confined to one store directory.
package sshstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"os/user"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"github.com/mkbootfs/mkbootfs/store"
)

// Options tune a Store. Zero fields take the defaults.
type Options struct {
	// KeyFile is the private key to log in with. Empty: $MKBOOTFS_SSH_KEY,
	// else the keys of ssh-agent ($SSH_AUTH_SOCK) and ~/.ssh/id_ed25519,
	// id_ecdsa, id_rsa.
	KeyFile string
	// KnownHosts is the known_hosts file that host keys are checked
	// against. Empty: $MKBOOTFS_KNOWN_HOSTS, else ~/.ssh/known_hosts.
	KnownHosts string
	// Timeout bounds connecting and each request (default 1 minute).
	Timeout time.Duration
	// Parallelism bounds the requests in flight (default 16).
	Parallelism int
	// Sessions is the number of SFTP sessions on the one SSH connection
	// (default 4): OpenSSH's sftp-server answers one request at a time.
	Sessions int
}

// maxStored bounds a stored chunk: zstd may grow an incompressible chunk
// of MaxChunkSize by a little.
const maxStored = store.MaxChunkSize + 1<<20

// maxPacket is the SFTP read and write size.
const maxPacket = 255 << 10

// tmpDir holds chunks being written, as in store/local.
const tmpDir = ".tmp"

// Store is a chunk store at an ssh:// URL.
type Store struct {
	name  string // the URL, for messages
	addr  string // host:port
	user  string
	dir   string // the store's directory on the server
	opt   Options
	keys  *keyring
	hosts *hostKeys
	sem   chan struct{}

	mu      sync.Mutex
	cur     *conn
	dialing *dialCall
	closed  bool
}

// conn is one SSH connection and its SFTP sessions.
type conn struct {
	ssh   *ssh.Client
	sftp  []*sftp.Client
	next  atomic.Uint32
	close sync.Once
}

func (c *conn) pick() *sftp.Client {
	return c.sftp[int(c.next.Add(1))%len(c.sftp)]
}

func (c *conn) Close() { c.close.Do(func() { c.ssh.Close() }) }

type dialCall struct {
	done chan struct{}
	c    *conn
	err  error
}

// Open returns the store at an ssh://[user@]host[:port]/path URL; a path
// that starts with /~/ is relative to the user's home. It reads the keys
// and known_hosts now and connects on first use.
func Open(rawURL string, opt Options) (*Store, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", rawURL, err)
	}
	if u.Scheme != "ssh" || u.Hostname() == "" {
		return nil, fmt.Errorf("store %s: want ssh://[user@]host[:port]/path", u.Redacted())
	}
	if _, ok := u.User.Password(); ok {
		return nil, fmt.Errorf("store %s: SSH stores log in with keys only; drop the password from the URL", u.Redacted())
	}
	if opt.Timeout <= 0 {
		opt.Timeout = time.Minute
	}
	if opt.Parallelism <= 0 {
		opt.Parallelism = 16
	}
	if opt.Sessions <= 0 {
		opt.Sessions = 4
	}
	name := u.User.Username()
	if name == "" {
		if cu, err := user.Current(); err == nil {
			name = cu.Username
		} else {
			name = os.Getenv("USER")
		}
	}
	port := u.Port()
	if port == "" {
		port = "22"
	}
	dir := u.Path
	switch {
	case dir == "" || dir == "/~" || dir == "/~/":
		dir = "."
	case strings.HasPrefix(dir, "/~/"):
		dir = strings.TrimPrefix(dir, "/~/")
	}
	home, _ := os.UserHomeDir()
	keys, err := loadKeys(opt.KeyFile, home)
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", u.Redacted(), err)
	}
	hosts, err := loadKnownHosts(opt.KnownHosts, home)
	if err != nil {
		keys.closer()
		return nil, fmt.Errorf("store %s: %w", u.Redacted(), err)
	}
	return &Store{
		name:  u.Redacted(),
		addr:  net.JoinHostPort(u.Hostname(), port),
		user:  name,
		dir:   path.Clean(dir),
		opt:   opt,
		keys:  keys,
		hosts: hosts,
		sem:   make(chan struct{}, opt.Parallelism),
	}, nil
}

func (s *Store) String() string { return s.name }

// Close closes the connection.
func (s *Store) Close() error {
	s.mu.Lock()
	s.closed = true
	c := s.cur
	s.cur = nil
	s.mu.Unlock()
	if c != nil {
		c.Close()
	}
	return s.keys.closer()
}

func (s *Store) chunkPath(id store.ID) string {
	h := id.String()
	return path.Join(s.dir, h[:4], h+".cacnk")
}

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, id store.ID) ([]byte, error) {
	return do(ctx, s, id, func(c *sftp.Client) ([]byte, error) {
		f, err := c.Open(s.chunkPath(id))
		if errors.Is(err, fs.ErrNotExist) {
			return nil, store.ErrNotFound
		}
		if err != nil {
			return nil, err
		}
		// Nobody waits for a read handle's close: it saves a round trip.
		defer func() { go f.Close() }()
		return readAll(f)
	})
}

// readAll reads a whole chunk file: its size first, so that the read
// asks for exactly that, in as few requests as the packet size allows.
func readAll(f *sftp.File) ([]byte, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Size() > maxStored {
		return nil, fmt.Errorf("%d bytes, more than any chunk: %w", fi.Size(), store.ErrCorrupt)
	}
	buf := make([]byte, fi.Size())
	n, err := f.ReadAt(buf, 0)
	if err != nil && !(errors.Is(err, io.EOF) && n == len(buf)) {
		return nil, err
	}
	return buf, nil
}

// Has implements store.Store.
func (s *Store) Has(ctx context.Context, id store.ID) (bool, error) {
	return do(ctx, s, id, func(c *sftp.Client) (bool, error) {
		_, err := c.Stat(s.chunkPath(id))
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		return err == nil, err
	})
}

// Put writes the chunk under a temporary name, syncs it where the server
// can (fsync@openssh.com), and renames it into place (posix-rename@openssh.com),
// so that no reader sees half a chunk.
func (s *Store) Put(ctx context.Context, id store.ID, compressed []byte) error {
	_, err := do(ctx, s, id, func(c *sftp.Client) (struct{}, error) {
		err := s.put(c, id, compressed)
		switch {
		case errors.Is(err, fs.ErrPermission):
			err = fmt.Errorf("%w: %v: the server refuses writes to %s (serve it with `mkbootfs serve --ssh --writable`, or fix the directory's permissions)", store.ErrReadOnly, err, s.dir)
		case errors.Is(err, fs.ErrNotExist):
			err = fmt.Errorf("writing into %s: %w (create the store directory on the server)", s.dir, err)
		}
		return struct{}{}, err
	})
	return err
}

func (s *Store) put(c *sftp.Client, id store.ID, data []byte) error {
	var rnd [8]byte
	rand.Read(rnd[:])
	tmp := path.Join(s.dir, tmpDir, id.String()+"."+hex.EncodeToString(rnd[:]))
	f, err := c.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL)
	if errors.Is(err, fs.ErrNotExist) {
		if err = mkdir(c, path.Join(s.dir, tmpDir)); err == nil {
			f, err = c.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL)
		}
	}
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if _, ok := c.HasExtension("fsync@openssh.com"); ok && err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = s.rename(c, tmp, s.chunkPath(id))
	}
	if err != nil {
		c.Remove(tmp)
	}
	return err
}

func (s *Store) rename(c *sftp.Client, tmp, dst string) error {
	mv := c.PosixRename
	if _, ok := c.HasExtension("posix-rename@openssh.com"); !ok {
		// Plain SFTP rename refuses to replace: a chunk already there is
		// the same chunk.
		mv = func(old, new string) error {
			err := c.Rename(old, new)
			if err != nil {
				if _, serr := c.Stat(new); serr == nil {
					c.Remove(old)
					return nil
				}
			}
			return err
		}
	}
	err := mv(tmp, dst)
	if errors.Is(err, fs.ErrNotExist) {
		if err = mkdir(c, path.Dir(dst)); err == nil {
			err = mv(tmp, dst)
		}
	}
	return err
}

// mkdir makes dir, which may exist already (another writer made it).
func mkdir(c *sftp.Client, dir string) error {
	err := c.Mkdir(dir)
	if err != nil {
		if fi, serr := c.Stat(dir); serr == nil && fi.IsDir() {
			return nil
		}
	}
	return err
}

// do runs fn on an SFTP session within the store's timeout and the
// caller's context. pkg/sftp takes no contexts: a request that outlives
// them is abandoned, and the connection is checked for life.
func do[T any](ctx context.Context, s *Store, id store.ID, fn func(*sftp.Client) (T, error)) (T, error) {
	var zero T
	fail := func(err error) (T, error) {
		if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
			err = fmt.Errorf("%w: %v", cerr, err)
		}
		return zero, &store.ChunkError{ID: id, Store: s.name, Err: err}
	}
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return fail(ctx.Err())
	}
	defer func() { <-s.sem }()
	c, err := s.conn(ctx)
	if err != nil {
		return fail(err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.opt.Timeout)
	defer cancel()
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := fn(c.pick())
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return fail(r.err)
		}
		return r.v, nil
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			go s.probe(c)
		} else {
			// The caller gave up, which says nothing of the link, unless
			// the abandoned request never ends.
			go func() {
				t := time.NewTimer(s.opt.Timeout)
				defer t.Stop()
				select {
				case <-done:
				case <-t.C:
					s.probe(c)
				}
			}()
		}
		return fail(ctx.Err())
	}
}

// probe drops the connection unless the server answers a keepalive
// within the timeout: a request that timed out may mean a dead link.
func (s *Store) probe(c *conn) {
	answered := make(chan struct{})
	go func() {
		if _, _, err := c.ssh.SendRequest("keepalive@openssh.com", true, nil); err == nil {
			close(answered)
		}
	}()
	t := time.NewTimer(min(s.opt.Timeout, 15*time.Second))
	defer t.Stop()
	select {
	case <-answered:
	case <-t.C:
		s.drop(c)
	}
}

// conn returns the live connection, dialing one if there is none; callers
// that arrive while a dial is on its way share its result.
func (s *Store) conn(ctx context.Context) (*conn, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, errors.New("store closed")
	}
	if c := s.cur; c != nil {
		s.mu.Unlock()
		return c, nil
	}
	call := s.dialing
	if call == nil {
		call = &dialCall{done: make(chan struct{})}
		s.dialing = call
		// The dial outlives the caller that started it: others wait on it.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opt.Timeout)
		go func() {
			defer cancel()
			c, err := s.dial(dctx)
			s.mu.Lock()
			s.dialing = nil
			if err == nil && s.closed {
				c.Close()
				err = errors.New("store closed")
			}
			if err == nil {
				s.cur = c
			}
			s.mu.Unlock()
			call.c, call.err = c, err
			close(call.done)
		}()
	}
	s.mu.Unlock()
	select {
	case <-call.done:
		return call.c, call.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// drop forgets c, if it is the live connection, and closes it.
func (s *Store) drop(c *conn) {
	s.mu.Lock()
	if s.cur == c {
		s.cur = nil
	}
	s.mu.Unlock()
	c.Close()
}

func (s *Store) dial(ctx context.Context) (*conn, error) {
	who := s.user + "@" + s.addr
	nc, err := (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext(ctx, "tcp", s.addr)
	if err != nil {
		return nil, fmt.Errorf("ssh %s: %w", who, err)
	}
	// The deadline covers the handshake and opening the SFTP sessions: a
	// server that accepts and says nothing must not hang us.
	deadline, _ := ctx.Deadline()
	nc.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	cfg := &ssh.ClientConfig{
		User:              s.user,
		Auth:              []ssh.AuthMethod{ssh.PublicKeysCallback(s.keys.signers)},
		HostKeyCallback:   s.hosts.callback,
		HostKeyAlgorithms: s.hosts.algorithms(s.addr),
	}
	cc, chans, reqs, err := ssh.NewClientConn(nc, s.addr, cfg)
	if err != nil {
		nc.Close()
		return nil, s.dialErr(ctx, who, err)
	}
	c := &conn{ssh: ssh.NewClient(cc, chans, reqs)}
	// Packets of 255 KiB carry most chunks in one read: OpenSSH's
	// sftp-server (limits@openssh.com) and ours take them; a server that
	// reads less answers short, and the client asks for the rest.
	for range s.opt.Sessions {
		sc, err := sftp.NewClient(c.ssh, sftp.UseConcurrentWrites(true), sftp.MaxPacketUnchecked(maxPacket))
		if err != nil {
			c.Close()
			return nil, s.dialErr(ctx, who, fmt.Errorf("starting the SFTP subsystem: %w (does the server have sftp-server or internal-sftp as its sftp Subsystem?)", err))
		}
		c.sftp = append(c.sftp, sc)
	}
	if !stop() { // the deadline fired as the sessions came up
		c.Close()
		return nil, s.dialErr(ctx, who, ctx.Err())
	}
	nc.SetDeadline(time.Time{})
	// A connection or session that ends for any reason is replaced on next use.
	go func() { c.ssh.Wait(); s.drop(c) }()
	for _, sc := range c.sftp {
		go func() { sc.Wait(); s.drop(c) }()
	}
	return c, nil
}

func (s *Store) dialErr(ctx context.Context, who string, err error) error {
	cerr := ctx.Err()
	if cerr == nil && errors.Is(err, os.ErrDeadlineExceeded) {
		cerr = context.DeadlineExceeded // the connection's deadline is the context's, and may fire first
	}
	if cerr != nil && !errors.Is(err, cerr) {
		return fmt.Errorf("ssh %s: %w: %v", who, cerr, err)
	}
	if strings.Contains(err.Error(), "unable to authenticate") {
		return store.Permanent(fmt.Errorf("ssh %s: the server refused our keys (%s): add the public key to %s's authorized_keys on the server, or name the right key with %s: %w",
			who, s.keys.describe(), s.user, EnvKey, err))
	}
	return fmt.Errorf("ssh %s: %w", who, err)
}
