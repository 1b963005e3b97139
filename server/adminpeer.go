package server

import (
	"context"
	"net"

	"google.golang.org/grpc/credentials"
)

// unixPeerInfo is the AuthInfo of an admin socket connection: the peer's
// uid as the kernel reported it when it connected (SO_PEERCRED), -1 when
// unknown.
type unixPeerInfo struct {
	credentials.CommonAuthInfo
	uid int
}

// AuthType names the credentials.
func (unixPeerInfo) AuthType() string { return "unix-peer" }

// unixPeerCreds are the admin socket's transport credentials: no
// encryption and no authentication (the socket's directory is the access
// control), only the peer's uid, for the audit.
type unixPeerCreds struct{}

func (unixPeerCreds) ClientHandshake(_ context.Context, _ string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return conn, unixPeerInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}, uid: -1}, nil
}

func (unixPeerCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return conn, unixPeerInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}, uid: peerUID(conn)}, nil
}

func (unixPeerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "unix-peer"}
}

func (c unixPeerCreds) Clone() credentials.TransportCredentials { return c }

func (unixPeerCreds) OverrideServerName(string) error { return nil }
