package unixsock

import (
	"errors"
	"os"
)

// ErrInUse is wrapped by the error Listen returns when another process
// serves, or holds the lock of, the socket.
var ErrInUse = errors.New("socket in use")

// ErrUnsafe is wrapped by the error Listen returns when it refuses a socket
// path because another user could replace the socket, or because the path
// is not a socket.
var ErrUnsafe = errors.New("unsafe socket path")

// Options say how Listen creates a socket.
type Options struct {
	// Name is what the socket is, for error messages: "admin API socket".
	Name string
	// DirMode is the mode given to the socket's directory when Listen
	// creates it, and the most an existing directory of the current user
	// keeps: 0700 (the default) for a socket only the service user may
	// use, 0755 for one every local user may connect to.
	DirMode os.FileMode
	// SocketMode is the socket's mode: 0600 (the default) or 0777.
	SocketMode os.FileMode
	// DataDir is recorded in the lock file, so that a second process
	// refused the socket is told which one holds it.
	DataDir string
}
