package attach

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// The attach process and its session process talk over a SOCK_SEQPACKET
// socket pair: one JSON message per packet, descriptors alongside. The
// session process sees the attach process die as the end of the socket.
//
//	attach → session: config
//	session → attach: mounted        (a lazyfs tools tree: serve it now)
//	attach → session: serving
//	session → attach: ready          (the command runs; its terminal's master attached)
//	attach → session: signal ...     (signals the attach process gets)
//	session → attach: exit           (the session is over; its processes are gone)
//
// or, at any point, session → attach: error.
type message struct {
	Config  *sessionConfig `json:"config,omitempty"`
	Mounted bool           `json:"mounted,omitempty"`
	Serving bool           `json:"serving,omitempty"`
	Ready   *ready         `json:"ready,omitempty"`
	Signal  int            `json:"signal,omitempty"`
	Exit    *int           `json:"exit,omitempty"`
	Error   string         `json:"error,omitempty"`
	Code    int            `json:"code,omitempty"` // with Error: the exit code to give
}

// sessionConfig is what the session process needs to build the session.
type sessionConfig struct {
	Source string   `json:"source"` // the tools tree, for messages and the mount's name
	Image  bool     `json:"image"`  // a lazyfs tree mounted from fdFuse; else the host's root
	Argv   []string `json:"argv"`   // empty: a shell
	Env    []string `json:"env"`
	Path   string   `json:"path"` // PATH in the tools tree, to find Argv[0]
	Caps   uint64   `json:"caps"` // the command's capability bounding set
	// TTY gives the command a new terminal of the container's devpts,
	// whose master goes to the attach process.
	TTY     bool          `json:"tty"`
	Winsize *unix.Winsize `json:"winsize,omitempty"`
	// Ctty, without TTY, is the descriptor (0-2) of the terminal whose
	// foreground the command takes, as a shell's job would; -1: none.
	Ctty int `json:"ctty"`
}

// ready says the command runs.
type ready struct {
	MountNS  nsIdent  `json:"mount_ns"` // the session's mount namespace
	Warnings []string `json:"warnings,omitempty"`
}

// maxMessage bounds a packet; the config carries the container's
// environment.
const maxMessage = 1 << 20

func send(c *net.UnixConn, m message, fds ...int) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	_, _, err = c.WriteMsgUnix(b, oob, nil)
	return err
}

// recv returns the next message and the descriptors sent with it; io.EOF
// once the other side is gone.
func recv(c *net.UnixConn) (message, []*os.File, error) {
	buf := make([]byte, maxMessage)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return message{}, nil, err
	}
	var files []*os.File
	if oobn > 0 {
		cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return message{}, nil, err
		}
		for _, cm := range cmsgs {
			fds, err := unix.ParseUnixRights(&cm)
			if err != nil {
				return message{}, nil, err
			}
			for _, fd := range fds {
				unix.CloseOnExec(fd)
				files = append(files, os.NewFile(uintptr(fd), "attach-fd"))
			}
		}
	}
	if n == 0 {
		return message{}, files, io.EOF
	}
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		return message{}, files, fmt.Errorf("attach: message over %d bytes", maxMessage)
	}
	var m message
	if err := json.Unmarshal(buf[:n], &m); err != nil {
		return message{}, files, fmt.Errorf("attach: bad message: %w", err)
	}
	return m, files, nil
}

// socketPair returns the two ends of a SOCK_SEQPACKET pair: ours, and the
// file to pass to the session process.
func socketPair() (*net.UnixConn, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	ours, err := fileConn(os.NewFile(uintptr(fds[0]), "attach-socket"))
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, err
	}
	return ours, os.NewFile(uintptr(fds[1]), "attach-socket"), nil
}

func fileConn(f *os.File) (*net.UnixConn, error) {
	defer f.Close() // FileConn made its own copy
	c, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("attach: %s is not a unix socket", f.Name())
	}
	return uc, nil
}
