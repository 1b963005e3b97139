package workloadapi

import (
	"context"
	"errors"
	"net"
	"sync"

	"google.golang.org/grpc/credentials"
)

// PeerInfo is the credentials.AuthInfo of a Workload API connection: the
// kernel-reported credentials of the process that connected, pinned at
// handshake time.
type PeerInfo struct {
	credentials.CommonAuthInfo
	// PID, UID and GID are the peer's credentials at connect time
	// (SO_PEERCRED).
	PID int32
	UID uint32
	GID uint32

	mu        sync.Mutex
	pidfd     int    // -1 once the connection is closed
	startTime uint64 // of PID, read at handshake
}

// AuthType implements credentials.AuthInfo.
func (*PeerInfo) AuthType() string { return authType }

const authType = "sigil-peercred"

// peerCreds are the grpc transport credentials of the Workload API server.
// They secure nothing (the socket is local); they identify the peer.
type peerCreds struct {
	startTime func(int32) (uint64, error)
}

var _ credentials.TransportCredentials = (*peerCreds)(nil)

func (c *peerCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("workload API credentials are server-only")
}

func (c *peerCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	p, err := peerFromConn(conn, c.startTime)
	if err != nil {
		return nil, nil, err
	}
	p.CommonAuthInfo = credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}
	return &peerConn{Conn: conn, peer: p}, p, nil
}

func (c *peerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: authType}
}

func (c *peerCreds) Clone() credentials.TransportCredentials {
	cp := *c
	return &cp
}

func (c *peerCreds) OverrideServerName(string) error { return nil }

// peerConn releases the peer's pidfd when the connection closes.
type peerConn struct {
	net.Conn
	peer *PeerInfo
}

func (c *peerConn) Close() error {
	c.peer.close()
	return c.Conn.Close()
}
