// Package procfs reads small /proc files without the allocations of
// os.ReadFile, which cannot size a /proc file in advance and grows its
// buffer several times for each read. The Workload API reads two such files
// on every call, so this is on its hot path.
package procfs

import (
	"errors"
	"io"
	"os"
	"sync"
)

// MaxSize is the largest file Read accepts.
const MaxSize = 1 << 20

var pool = sync.Pool{New: func() any {
	b := make([]byte, 0, 8192)
	return &b
}}

// Read reads the whole file at path and passes its contents to fn. The
// slice is only valid during fn.
func Read(path string, fn func([]byte) error) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
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
		n, err := f.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF || (err == nil && n == 0) {
			break
		}
		if err != nil {
			return err
		}
	}
	*bp = b[:0]
	return fn(b)
}
