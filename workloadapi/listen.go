package workloadapi

import (
	"fmt"
	"net"

	"github.com/sigil-id/sigil/internal/unixsock"
)

// socketOptions are how the Workload API socket is created: in a 0755
// directory and world-writable, since any local process may connect (its
// identity comes from attestation, not from file permissions).
func socketOptions(dataDir string) unixsock.Options {
	return unixsock.Options{
		Name:       "Workload API socket",
		DirMode:    0o755,
		SocketMode: 0o777,
		DataDir:    dataDir,
	}
}

// Listen listens on the unix socket path for Serve; it is ListenFor
// without a data directory to name in the lock file.
func Listen(sockPath string) (net.Listener, error) {
	return ListenFor(sockPath, "")
}

// ListenFor listens on the unix socket path for Serve, with the checks of
// package unixsock: every directory on the path must be writable only by
// root or the current user, missing ones are created (the socket's own
// with mode 0755), and a socket that another process holds is never
// replaced; the error then names that process and its data directory
// (dataDir is what this process records for the next one). A stale
// socket left by a process that died is removed, and closing the
// listener removes the socket if it is still this one. The socket is
// world-writable.
func ListenFor(sockPath, dataDir string) (net.Listener, error) {
	l, err := unixsock.Listen(sockPath, socketOptions(dataDir))
	if err != nil {
		return nil, fmt.Errorf("workloadapi: %w", err)
	}
	return l, nil
}

// CheckSocket reports what ListenFor would refuse, without creating or
// changing anything, so that an agent can refuse to start before it
// attests or writes any state.
func CheckSocket(sockPath string) error {
	if err := unixsock.Check(sockPath, socketOptions("")); err != nil {
		return fmt.Errorf("workloadapi: %w", err)
	}
	return nil
}
