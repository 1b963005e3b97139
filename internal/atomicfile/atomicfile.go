// Package atomicfile replaces files so that a reader, or the next start
// after a crash, sees either the old content or the new content in full,
// never a mix, a truncated file or a file with the wrong mode.
//
// A write goes to a temporary file with a unique name in the target's
// directory, whose mode is set before any data is written; the file is
// flushed to disk (fsync), renamed over the target and the directory is
// flushed so that the rename itself survives a crash. Concurrent writers
// to one path never interleave: each renames its own complete file, and
// the last rename wins. On any error the temporary file is removed and
// the target is left as it was.
package atomicfile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// WriteFile replaces path with data, with permission bits mode.
func WriteFile(path string, data []byte, mode fs.FileMode) error {
	return WriteFunc(path, mode, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

// WriteFunc replaces path with what fill writes, with permission bits
// mode. It is for content produced as a stream (a snapshot received in
// chunks); when fill fails, path is left as it was and fill's error is
// returned unwrapped, so the caller's own errors keep their shape.
func WriteFunc(path string, mode fs.FileMode, fill func(io.Writer) error) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("atomicfile: writing %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	// The mode is set before the first byte is written and does not
	// depend on the umask: a key is never readable by others, not even
	// for an instant.
	if err := f.Chmod(mode.Perm()); err != nil {
		return fmt.Errorf("atomicfile: writing %s: %w", path, err)
	}
	if err := fill(f); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("atomicfile: writing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("atomicfile: writing %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("atomicfile: writing %s: %w", path, err)
	}
	if err := SyncDir(dir); err != nil {
		return fmt.Errorf("atomicfile: writing %s: %w", path, err)
	}
	return nil
}

// Rename renames oldpath to newpath and flushes the directory of
// newpath, so that the rename survives a crash. It is for protocols that
// stage several files with WriteFile and then put them in place one by
// one in an order that a reader can recover from.
func Rename(oldpath, newpath string) error {
	if err := os.Rename(oldpath, newpath); err != nil {
		return fmt.Errorf("atomicfile: %w", err)
	}
	if err := SyncDir(filepath.Dir(newpath)); err != nil {
		return fmt.Errorf("atomicfile: renaming to %s: %w", newpath, err)
	}
	return nil
}

// SyncDir flushes dir's entries (creations, renames, removals) to disk.
// File systems that cannot sync a directory are not an error.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, errors.ErrUnsupported) && !errors.Is(err, syscall.EINVAL) {
		return err
	}
	return nil
}
