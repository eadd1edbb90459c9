package sshstore

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/mkbootfs/mkbootfs/store"
)

// Environment variables that choose the client's key and known_hosts file
// when Options leave them empty.
const (
	EnvKey        = "MKBOOTFS_SSH_KEY"
	EnvKnownHosts = "MKBOOTFS_KNOWN_HOSTS"
)

// defaultKeys are tried, in order, when no key file is named.
var defaultKeys = []string{"id_ed25519", "id_ecdsa", "id_rsa"}

// keyring holds the client's keys: one named file, or the agent's keys
// and the default files.
type keyring struct {
	files  []ssh.Signer
	agent  agent.ExtendedAgent
	closer func() error
	// skipped names default key files that could not be used, for the
	// message when the server refuses every key.
	skipped []string
}

func loadKeys(keyFile, home string) (*keyring, error) {
	if keyFile == "" {
		keyFile = os.Getenv(EnvKey)
	}
	if keyFile != "" {
		s, err := readKey(keyFile)
		if err != nil {
			return nil, err
		}
		return &keyring{files: []ssh.Signer{s}, closer: func() error { return nil }}, nil
	}
	k := &keyring{closer: func() error { return nil }}
	if sock := os.Getenv("SSH_AUTH_SOCK"); sock != "" {
		if c, err := net.Dial("unix", sock); err == nil {
			k.agent, k.closer = agent.NewClient(c), c.Close
		} else {
			k.skipped = append(k.skipped, fmt.Sprintf("ssh-agent at %s (%v)", sock, err))
		}
	}
	for _, name := range defaultKeys {
		file := filepath.Join(home, ".ssh", name)
		s, err := readKey(file)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			k.skipped = append(k.skipped, err.Error())
		default:
			k.files = append(k.files, s)
		}
	}
	if len(k.files) == 0 && k.agent == nil {
		k.closer()
		msg := fmt.Sprintf("no SSH key: set %s to a private key file, create ~/.ssh/id_ed25519 (ssh-keygen -t ed25519), or start ssh-agent with a key", EnvKey)
		if len(k.skipped) > 0 {
			msg += " (skipped: " + strings.Join(k.skipped, "; ") + ")"
		}
		return nil, store.Permanent(errors.New(msg))
	}
	return k, nil
}

func readKey(file string) (ssh.Signer, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("SSH key: %w", err)
	}
	s, err := ssh.ParsePrivateKey(b)
	var pp *ssh.PassphraseMissingError
	if errors.As(err, &pp) {
		return nil, store.Permanent(fmt.Errorf("SSH key %s is protected by a passphrase: load it into ssh-agent (ssh-add %s) and leave %s unset", file, file, EnvKey))
	}
	if err != nil {
		return nil, store.Permanent(fmt.Errorf("SSH key %s: %w", file, err))
	}
	return s, nil
}

func (k *keyring) signers() ([]ssh.Signer, error) {
	all := append([]ssh.Signer(nil), k.files...)
	if k.agent != nil {
		if s, err := k.agent.Signers(); err == nil {
			all = append(all, s...)
		}
	}
	return all, nil
}

// describe lists the keys offered, for the message when all are refused.
func (k *keyring) describe() string {
	s, _ := k.signers()
	var fps []string
	for _, sg := range s {
		fps = append(fps, sg.PublicKey().Type()+" "+ssh.FingerprintSHA256(sg.PublicKey()))
	}
	msg := "offered " + strings.Join(fps, ", ")
	if len(fps) == 0 {
		msg = "offered no key (the agent has none)"
	}
	if len(k.skipped) > 0 {
		msg += "; skipped " + strings.Join(k.skipped, "; ")
	}
	return msg
}

// hostKeys checks host keys against a known_hosts file, and says what to do
// when a key is unknown or changed.
type hostKeys struct {
	file  string
	check ssh.HostKeyCallback // nil when the file does not exist
}

func loadKnownHosts(file, home string) (*hostKeys, error) {
	if file == "" {
		file = os.Getenv(EnvKnownHosts)
	}
	if file == "" {
		file = filepath.Join(home, ".ssh", "known_hosts")
	}
	cb, err := knownhosts.New(file)
	if errors.Is(err, fs.ErrNotExist) {
		// Every host is unknown; the error names the host and its key.
		return &hostKeys{file: file}, nil
	}
	if err != nil {
		return nil, store.Permanent(fmt.Errorf("known_hosts: %w (fix the file or set %s)", err, EnvKnownHosts))
	}
	return &hostKeys{file: file, check: cb}, nil
}

func (h *hostKeys) callback(hostname string, remote net.Addr, key ssh.PublicKey) error {
	var err error = &knownhosts.KeyError{} // no file: every host is unknown
	if h.check != nil {
		err = h.check(hostname, remote, key)
	}
	var ke *knownhosts.KeyError
	var re *knownhosts.RevokedError
	host, port, _ := net.SplitHostPort(hostname)
	switch {
	case errors.As(err, &ke) && len(ke.Want) == 0:
		return store.Permanent(fmt.Errorf("host key of %s is not in %s: the server sent %s %s; if that is its key, add it (ssh-keyscan -p %s %s >> %s) or point %s at a known_hosts file that has it",
			hostname, h.file, key.Type(), ssh.FingerprintSHA256(key), port, host, h.file, EnvKnownHosts))
	case errors.As(err, &ke):
		var known []string
		for _, w := range ke.Want {
			known = append(known, fmt.Sprintf("%s %s (%s:%d)", w.Key.Type(), ssh.FingerprintSHA256(w.Key), w.Filename, w.Line))
		}
		return store.Permanent(fmt.Errorf("host key of %s changed: the server sent %s %s, known_hosts has %s; someone may be intercepting the connection. If the key changed on purpose, remove the old one (ssh-keygen -R '%s' -f %s) and add the new one",
			hostname, key.Type(), ssh.FingerprintSHA256(key), strings.Join(known, ", "), knownhosts.Normalize(hostname), h.file))
	case errors.As(err, &re):
		return store.Permanent(fmt.Errorf("host key of %s (%s) is revoked in %s:%d", hostname, ssh.FingerprintSHA256(key), re.Revoked.Filename, re.Revoked.Line))
	case err != nil:
		return store.Permanent(fmt.Errorf("host key of %s: %w", hostname, err))
	}
	return nil
}

// algorithms returns the host key algorithms known_hosts has for
// hostname, so the server is asked for a key we can check rather than one
// it prefers and we do not know.
func (h *hostKeys) algorithms(hostname string) []string {
	if h.check == nil {
		return nil
	}
	probe := ed25519.PublicKey(make([]byte, ed25519.PublicKeySize))
	pk, err := ssh.NewPublicKey(probe)
	if err != nil {
		return nil
	}
	var ke *knownhosts.KeyError
	if !errors.As(h.check(hostname, &net.TCPAddr{}, pk), &ke) {
		return nil
	}
	var algos []string
	seen := map[string]bool{}
	for _, w := range ke.Want {
		t := w.Key.Type()
		list := []string{t}
		if t == ssh.KeyAlgoRSA {
			list = []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
		}
		for _, a := range list {
			if !seen[a] {
				seen[a] = true
				algos = append(algos, a)
			}
		}
	}
	return algos
}
