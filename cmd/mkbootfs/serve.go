package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"

	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sync/errgroup"

	"github.com/mkbootfs/mkbootfs/store/httpstore"
	"github.com/mkbootfs/mkbootfs/store/local"
	"github.com/mkbootfs/mkbootfs/store/sshstore"
)

func newServeCmd() *cobra.Command {
	var httpAddr, sshAddr, hostKey, authKeys string
	var writable, quiet bool
	cmd := &cobra.Command{
		Use:   "serve {--http ADDR | --ssh ADDR --host-key FILE --authorized-keys FILE} [--writable] STORE-DIR",
		Short: "Serve a chunk store over HTTP or SFTP",
		Long: `Serve a local chunk store to other machines, read-only unless --writable.

--http serves GET and HEAD of <4 hex>/<id>.cacnk (PUT with --writable, which
verifies each chunk), and /healthz. --ssh serves SFTP, and nothing else, to the
keys in --authorized-keys. Neither reaches outside STORE-DIR: a symlink in it
that leads out (absolute, or climbing above it) is not followed. Clients use
http://ADDR/ and ssh://ADDR/ as their --store.`,
		Example: `  mkbootfs serve --http 127.0.0.1:8080 /var/lib/mkbootfs/store
  ssh-keygen -t ed25519 -N '' -f host_key
  mkbootfs serve --ssh :2222 --host-key host_key --authorized-keys ~/.ssh/authorized_keys /var/lib/mkbootfs/store`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if httpAddr == "" && sshAddr == "" {
				return errors.New("serve: give --http ADDR, --ssh ADDR or both")
			}
			if sshAddr != "" && (hostKey == "" || authKeys == "") {
				return errors.New("serve: --ssh needs --host-key FILE and --authorized-keys FILE")
			}
			dir := args[0]
			l, err := local.OpenRoot(dir, writable)
			if err != nil {
				return fmt.Errorf("serve: %w", err)
			}
			level := slog.LevelInfo
			if quiet {
				level = slog.LevelWarn
			}
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
			mode := "read-only"
			if writable {
				mode = "writable"
			}
			out := cmd.OutOrStdout()
			var serve []func(context.Context) error // started once everything is bound
			if httpAddr != "" {
				ln, err := net.Listen("tcp", httpAddr)
				if err != nil {
					return fmt.Errorf("serve: %w", err)
				}
				defer ln.Close()
				h := httpstore.NewHandler(l, httpstore.HandlerOptions{Writable: writable, Logger: log})
				fmt.Fprintf(out, "serving %s %s at http://%s/\n", dir, mode, ln.Addr())
				serve = append(serve, func(ctx context.Context) error { return httpstore.Serve(ctx, ln, h, log) })
			}
			if sshAddr != "" {
				srv, pub, err := newSSHServer(hostKey, authKeys, dir, writable, log)
				if err != nil {
					return fmt.Errorf("serve: %w", err)
				}
				defer srv.Close()
				ln, err := net.Listen("tcp", sshAddr)
				if err != nil {
					return fmt.Errorf("serve: %w", err)
				}
				defer ln.Close()
				fmt.Fprintf(out, "serving %s %s at ssh://%s/ (host key %s %s)\n", dir, mode, ln.Addr(), pub.Type(), ssh.FingerprintSHA256(pub))
				serve = append(serve, func(ctx context.Context) error { return srv.Serve(ctx, ln) })
			}
			g, ctx := errgroup.WithContext(cmd.Context())
			for _, fn := range serve {
				g.Go(func() error { return fn(ctx) })
			}
			return g.Wait()
		},
	}
	f := cmd.Flags()
	f.StringVar(&httpAddr, "http", "", "serve over HTTP on `ADDR` (host:port)")
	f.StringVar(&sshAddr, "ssh", "", "serve over SFTP on `ADDR` (host:port)")
	f.StringVar(&hostKey, "host-key", "", "SSH host private key `FILE` (ssh-keygen -t ed25519 -N '' -f FILE)")
	f.StringVar(&authKeys, "authorized-keys", "", "`FILE` of the public keys let in over SSH")
	f.BoolVar(&writable, "writable", false, "accept new chunks (HTTP PUT, SFTP writes); creates STORE-DIR")
	f.BoolVarP(&quiet, "quiet", "q", false, "log only warnings, not every request and login")
	return cmd
}

// newSSHServer loads the keys and makes the SFTP server; it returns the
// host key for the clients' known_hosts.
func newSSHServer(hostKeyFile, authKeysFile, dir string, writable bool, log *slog.Logger) (*sshstore.Server, ssh.PublicKey, error) {
	hk, err := sshstore.LoadHostKey(hostKeyFile)
	if err != nil {
		return nil, nil, err
	}
	keys, err := sshstore.LoadAuthorizedKeys(authKeysFile)
	if err != nil {
		return nil, nil, err
	}
	srv, err := sshstore.NewServer(sshstore.ServerOptions{Dir: dir, HostKey: hk, AuthorizedKeys: keys, Writable: writable, Logger: log})
	if err != nil {
		return nil, nil, err
	}
	return srv, hk.PublicKey(), nil
}
