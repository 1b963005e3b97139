package workloadapi

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc/credentials"

	"github.com/sigil-id/sigil/attestor/workload"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/procfs"
)

// PeerInfo is the credentials.AuthInfo of a Workload API connection: the
// kernel-reported credentials of the process that connected, pinned at
// handshake time.
type PeerInfo struct {
	credentials.CommonAuthInfo
	// PID, UID and GID are the peer's pid and effective ids at connect
	// time (SO_PEERCRED).
	PID int32
	UID uint32
	GID uint32
	// Groups are the peer's supplementary groups at connect time
	// (SO_PEERGROUPS), or nil when the kernel does not report them.
	Groups []uint32

	// fdMu guards pidfd: checks hold it for reading while they use it,
	// close for writing, so no check ever uses a descriptor number that
	// was closed and reused.
	fdMu sync.RWMutex
	// pidfd refers to the process that connected; -1 once the
	// connection is closed. It is the only descriptor a connection
	// holds besides its socket (idle connections are bounded by
	// descriptors).
	pidfd int
	// exePath and statPath are /proc/<PID>/exe and /proc/<PID>/stat,
	// built once.
	exePath, statPath string

	mu        sync.Mutex
	startTime uint64 // of PID, read at handshake
	exe       exeID  // executable of PID, read at handshake
	release   func() // returns the connection's slot; nil when none
	called    bool   // a call has started on the connection
	conn      *peerConn
	closing   bool // closeAfter was called
}

// closeAfter closes the peer's connection after d (once, however often it
// is called).
func (p *PeerInfo) closeAfter(clk clock.Clock, d time.Duration) {
	p.mu.Lock()
	conn := p.conn
	if conn == nil || p.closing {
		p.mu.Unlock()
		return
	}
	p.closing = true
	p.mu.Unlock()
	timer := clk.After(d)
	go func() {
		<-timer
		conn.Close()
	}()
}

// Caller returns the peer as attestors see it.
func (p *PeerInfo) Caller() workload.Caller {
	return workload.Caller{PID: p.PID, UID: p.UID, GID: p.GID, Groups: p.Groups}
}

// AuthType implements credentials.AuthInfo.
func (*PeerInfo) AuthType() string { return authType }

const authType = "sigil-peercred"

// exeID identifies the executable a process runs: the file that
// /proc/<pid>/exe resolves to (device, inode, size and modification time,
// so that a file rewritten in place is a different executable), or the
// error that kept the agent from inspecting it (a kernel thread has none;
// an unprivileged agent may not look at another user's process). A process
// that exec's another program, or whose program file is modified, gets a
// different exeID.
type exeID struct {
	dev, ino            uint64
	size                int64
	mtimeSec, mtimeNsec int64
	errno               uintptr // 0 when the file was inspected
}

// procReader reads what the Workload API checks about a peer's process.
// Tests replace its functions to simulate pid reuse, exec and credential
// changes.
type procReader struct {
	// startTime returns the start time of the process now under the
	// peer's pid; it fails for a process that has exited (a zombie
	// included). The server's (pinnedStartTime) answers from the pidfd
	// and the start time recorded at handshake.
	startTime func(p *PeerInfo) (uint64, error)
	// exe identifies the executable the process runs now.
	exe func(p *PeerInfo) (exeID, error)
	// status returns the process's current effective user and group
	// (Groups is not filled in).
	status func(p *PeerInfo) (procfs.Status, error)
}

// peerCreds are the grpc transport credentials of the Workload API server.
// They secure nothing (the socket is local); they identify the peer and
// count its connections against the limits.
type peerCreds struct {
	proc   *procReader
	limits *connLimits
}

var _ credentials.TransportCredentials = (*peerCreds)(nil)

func (c *peerCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("workload API credentials are server-only")
}

func (c *peerCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	p, err := peerFromConn(conn, c.proc)
	if err != nil {
		return nil, nil, err
	}
	if c.limits != nil {
		release, err := c.limits.admit(p)
		if err != nil {
			p.close()
			return nil, nil, err
		}
		p.release = release
	}
	p.CommonAuthInfo = credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}
	pc := newPeerConn(conn, p)
	p.conn = pc
	if c.limits != nil {
		c.limits.watchFirstCall(pc)
	}
	return pc, p, nil
}

func (c *peerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: authType}
}

func (c *peerCreds) Clone() credentials.TransportCredentials {
	cp := *c
	return &cp
}

func (c *peerCreds) OverrideServerName(string) error { return nil }

// peerConn releases the peer's pidfd and connection slot when the
// connection closes.
type peerConn struct {
	net.Conn
	peer *PeerInfo
	// closed is closed by the first Close.
	closed    chan struct{}
	closeOnce sync.Once
}

func newPeerConn(conn net.Conn, p *PeerInfo) *peerConn {
	return &peerConn{Conn: conn, peer: p, closed: make(chan struct{})}
}

func (c *peerConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	c.peer.close()
	return c.Conn.Close()
}

// markCalled records that a call started on the connection and reports
// whether it is the first.
func (p *PeerInfo) markCalled() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	first := !p.called
	p.called = true
	return first
}

func (p *PeerInfo) hasCalled() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.called
}
