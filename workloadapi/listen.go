package workloadapi

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Listen listens on the unix socket path for Serve. It creates the socket's
// directory (0755) if it is missing and removes a stale socket left by an
// earlier run; it refuses to remove anything that is not a socket or a
// socket that something still answers on. The socket is made
// world-writable: any local process may connect, as its identity comes
// from attestation, not from file permissions.
func Listen(sockPath string) (net.Listener, error) {
	dir := filepath.Dir(sockPath)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("workloadapi: creating socket directory: %w", err)
		}
		if err := os.Chmod(dir, 0o755); err != nil {
			return nil, fmt.Errorf("workloadapi: creating socket directory: %w", err)
		}
	}
	if fi, err := os.Lstat(sockPath); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("workloadapi: %s exists and is not a socket", sockPath)
		}
		if c, err := net.DialTimeout("unix", sockPath, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("workloadapi: %s is in use by another server", sockPath)
		}
		if err := os.Remove(sockPath); err != nil {
			return nil, fmt.Errorf("workloadapi: removing stale socket: %w", err)
		}
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sockPath, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("workloadapi: %w", err)
	}
	if err := os.Chmod(sockPath, 0o777); err != nil {
		l.Close()
		return nil, fmt.Errorf("workloadapi: %w", err)
	}
	return l, nil
}
