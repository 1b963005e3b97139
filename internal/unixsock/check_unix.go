//go:build unix

package unixsock

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// maxSymlinks bounds the symbolic links followed on one path, as the
// kernel does.
const maxSymlinks = 40

// walker checks the directories on the way to a socket.
type walker struct {
	euid int
	// sock is the socket's absolute path.
	sock string
	// what names the socket in errors: "the admin API socket /run/...".
	what string
}

// trusted reports whether uid may own a directory on a socket's path.
func (w *walker) trusted(uid int) bool { return uid == 0 || uid == w.euid }

// resolve walks dir (absolute) from / one component at a time, following
// symbolic links as the kernel would, and checks every directory it passes
// through and every link it follows. It returns the real path of the
// longest existing prefix of dir and the components still missing below
// it.
func (w *walker) resolve(dir string) (real string, missing []string, err error) {
	cur := "/"
	fi, err := os.Lstat(cur)
	if err != nil {
		return "", nil, fmt.Errorf("unixsock: %w", err)
	}
	if err := w.checkDir(cur, fi); err != nil {
		return "", nil, err
	}
	pending := strings.Split(dir, "/")
	hops := 0
	for len(pending) > 0 {
		name := pending[0]
		pending = pending[1:]
		switch name {
		case "", ".":
			continue
		case "..":
			cur = filepath.Dir(cur)
			continue
		}
		next := filepath.Join(cur, name)
		fi, err := os.Lstat(next)
		if errors.Is(err, fs.ErrNotExist) {
			return cur, append([]string{name}, pending...), nil
		}
		if err != nil {
			return "", nil, w.fail(err)
		}
		if fi.Mode().Type() == fs.ModeSymlink {
			if uid := ownerOf(fi); !w.trusted(uid) {
				return "", nil, refuse("unixsock: refusing %s: %s is a symbolic link owned by uid %d, neither root nor uid %d that runs this process, so that user could redirect the socket; replace the link with a directory owned by root or uid %d, or choose another path",
					w.what, next, uid, w.euid, w.euid)
			}
			if hops++; hops > maxSymlinks {
				return "", nil, refuse("unixsock: refusing %s: too many symbolic links on its path", w.what)
			}
			target, err := os.Readlink(next)
			if err != nil {
				return "", nil, w.fail(err)
			}
			if filepath.IsAbs(target) {
				cur = "/"
			}
			pending = append(strings.Split(target, "/"), pending...)
			continue
		}
		if !fi.IsDir() {
			return "", nil, refuse("unixsock: refusing %s: %s is not a directory", w.what, next)
		}
		if err := w.checkDir(next, fi); err != nil {
			return "", nil, err
		}
		cur = next
	}
	return cur, nil, nil
}

// checkDir refuses a directory that another user owns or may write to;
// a sticky directory owned by root (like /tmp) is accepted as an
// ancestor, since nobody else can remove or rename what is in it.
func (w *walker) checkDir(path string, fi fs.FileInfo) error {
	uid := ownerOf(fi)
	if !w.trusted(uid) {
		return refuse("unixsock: refusing %s: directory %s is owned by uid %d, neither root nor uid %d that runs this process, so that user could replace the socket; fix with \"chown %d %s\" (or remove the directory), or choose another path",
			w.what, path, uid, w.euid, w.euid, path)
	}
	if fi.Mode().Perm()&0o022 != 0 && (fi.Mode()&fs.ModeSticky == 0 || uid != 0) {
		return refuse("unixsock: refusing %s: directory %s is writable by other users (mode %04o), so they could replace the socket; fix with \"chmod go-w %s\", or choose another path",
			w.what, path, modeBits(fi), path)
	}
	return nil
}

// checkOwnDir applies the stricter rule for the socket's own directory:
// nobody else may write to it at all, sticky or not, or they could
// create the socket's name while the daemon is not running.
func (w *walker) checkOwnDir(path string, fi fs.FileInfo) error {
	if err := w.checkDir(path, fi); err != nil {
		return err
	}
	if fi.Mode().Perm()&0o022 != 0 {
		// Only a sticky directory owned by root gets here, such as /tmp.
		return refuse("unixsock: refusing %s: its directory %s is writable by other users (mode %04o), so they could take the socket's name while this process is not running; put the socket in a directory of its own, such as %s",
			w.what, path, modeBits(fi), filepath.Join(path, "sigil", filepath.Base(w.sock)))
	}
	return nil
}

func ownerOf(fi fs.FileInfo) int {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Uid)
	}
	return -1
}

// modeBits is the octal mode as chmod takes it, special bits included.
func modeBits(fi fs.FileInfo) uint32 {
	m := uint32(fi.Mode().Perm())
	if fi.Mode()&fs.ModeSticky != 0 {
		m |= 0o1000
	}
	if fi.Mode()&fs.ModeSetgid != 0 {
		m |= 0o2000
	}
	if fi.Mode()&fs.ModeSetuid != 0 {
		m |= 0o4000
	}
	return m
}

// refusal is an error that wraps ErrUnsafe.
type refusal struct{ msg string }

func (r *refusal) Error() string        { return r.msg }
func (r *refusal) Is(target error) bool { return target == ErrUnsafe }

func refuse(format string, args ...any) error {
	return &refusal{msg: fmt.Sprintf(format, args...)}
}
