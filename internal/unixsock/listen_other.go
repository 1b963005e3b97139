//go:build !unix

package unixsock

import (
	"errors"
	"net"
)

// Listener is a listening unix socket created by Listen.
type Listener struct{ net.Listener }

// Path is the socket's path.
func (l *Listener) Path() string { return "" }

// Listen is not supported on this platform.
func Listen(path string, o Options) (*Listener, error) {
	return nil, errors.New("unixsock: unix sockets are not supported on this platform")
}

// Check is not supported on this platform.
func Check(path string, o Options) error {
	return errors.New("unixsock: unix sockets are not supported on this platform")
}
