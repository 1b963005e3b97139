// Package procfs reads small /proc files without the allocations of
// os.ReadFile, which cannot size a /proc file in advance and grows its
// buffer several times for each read. The Workload API reads two such files
// on every call, so this is on its hot path.
package procfs

import (
	"errors"
	"io/fs"
	"sync"
	"syscall"
)

// MaxSize is the largest file Read accepts.
const MaxSize = 1 << 20

var pool = sync.Pool{New: func() any {
	b := make([]byte, 0, 8192)
	return &b
}}

// Read reads the whole file at path and passes its contents to fn. The
// slice is only valid during fn. It opens, reads and closes the file with
// plain system calls: an os.File costs a few more per file (the poller's
// registration and its flags), which the Workload API pays on every call.
func Read(path string, fn func([]byte) error) error {
	fd, err := ignoringEINTR(func() (int, error) {
		return syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	})
	if err != nil {
		return &fs.PathError{Op: "open", Path: path, Err: err}
	}
	defer syscall.Close(fd)
	bp := pool.Get().(*[]byte)
	defer pool.Put(bp)
	b := (*bp)[:0]
	for {
		if len(b) == cap(b) {
			if cap(b) >= MaxSize {
				return errors.New("procfs: " + path + " is too large")
			}
			b = append(b, 0)[:len(b)]
		}
		n, err := ignoringEINTR(func() (int, error) { return syscall.Read(fd, b[len(b):cap(b)]) })
		if err != nil {
			return &fs.PathError{Op: "read", Path: path, Err: err}
		}
		if n <= 0 {
			break
		}
		b = b[:len(b)+n]
	}
	*bp = b[:0]
	return fn(b)
}

// ignoringEINTR calls fn until it fails with another error than EINTR.
func ignoringEINTR(fn func() (int, error)) (int, error) {
	for {
		n, err := fn()
		if err != syscall.EINTR {
			return n, err
		}
	}
}
