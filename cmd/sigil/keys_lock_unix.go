//go:build unix

package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// lockStoppedServer takes the exclusive flock that a running server holds
// on its Raft database (bbolt locks the file it opens), refusing if a
// server holds it. While the lock is held, a server that starts waits for
// it. A data directory without a Raft database has no server to stop.
func lockStoppedServer(dataDir string) (release func(), err error) {
	path := raftDBPath(dataDir)
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return func() {}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("checking for a running server: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("a server is running on the data directory %s (it holds %s locked): stop it first", dataDir, path)
		}
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	return func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN) //nolint:errcheck // closing releases it anyway
		f.Close()
	}, nil
}
