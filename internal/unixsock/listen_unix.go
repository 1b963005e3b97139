//go:build unix

package unixsock

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Listen creates the unix socket path and listens on it, after checking
// and creating its directories as the package documentation describes.
// It fails with an error wrapping ErrInUse when another process holds
// the socket.
func Listen(path string, o Options) (*Listener, error) {
	if path == "" {
		return nil, errors.New("unixsock: socket path is empty")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("unixsock: socket path %q: %w", path, err)
	}
	name := o.Name
	if name == "" {
		name = "socket"
	}
	dirMode := o.DirMode.Perm()
	if dirMode == 0 {
		dirMode = 0o700
	}
	sockMode := o.SocketMode.Perm()
	if sockMode == 0 {
		sockMode = 0o600
	}
	dataDir := o.DataDir
	if dataDir != "" {
		if d, err := filepath.Abs(dataDir); err == nil {
			dataDir = d
		}
	}
	w := &walker{euid: os.Geteuid(), sock: abs, what: name + " " + abs}
	if err := w.prepareDir(filepath.Dir(abs), dirMode); err != nil {
		return nil, err
	}

	lockPath := abs + ".lock"
	lock, err := w.lock(lockPath, lockInfo{PID: os.Getpid(), DataDir: dataDir})
	if err != nil {
		return nil, err
	}
	l, err := w.bind(abs, lockPath, sockMode)
	if err != nil {
		releaseLock(lock, lockPath)
		return nil, err
	}
	l.lock = lock
	return l, nil
}

// prepareDir checks the directories on the way to dir, creates the
// missing ones (those between with mode 0755, dir itself with mode), and
// checks again.
func (w *walker) prepareDir(dir string, mode os.FileMode) error {
	real, missing, err := w.resolve(dir)
	if err != nil {
		return err
	}
	for i, name := range missing {
		switch name {
		case "", ".":
			continue
		case "..":
			real = filepath.Dir(real)
			continue
		}
		next := filepath.Join(real, name)
		m := os.FileMode(0o755)
		if i == len(missing)-1 {
			m = mode
		}
		if err := os.Mkdir(next, m); err != nil && !errors.Is(err, fs.ErrExist) {
			return w.fail(err)
		} else if err == nil {
			// Mkdir applied the umask; the mode is the caller's.
			if err := os.Chmod(next, m); err != nil {
				return w.fail(err)
			}
		}
		real = next
	}
	real, missing, err = w.resolve(dir)
	if err != nil {
		return err
	}
	if len(missing) > 0 {
		return fmt.Errorf("unixsock: %s: directory %s disappeared while it was being created", w.what, filepath.Join(real, missing[0]))
	}
	fi, err := os.Lstat(real)
	if err != nil {
		return w.fail(err)
	}
	if err := w.checkOwnDir(real, fi); err != nil {
		return err
	}
	// Tighten (never loosen) a directory of our own to the mode asked
	// for: a private socket's directory becomes 0700 even if it was not.
	if ownerOf(fi) == w.euid && fi.Mode().Perm()&^mode != 0 {
		if err := os.Chmod(real, fi.Mode().Perm()&mode); err != nil {
			return w.fail(err)
		}
	}
	return nil
}

// fail wraps an unexpected error on the socket's path; a permission error
// gets a hint on what to do.
func (w *walker) fail(err error) error {
	if !errors.Is(err, fs.ErrPermission) {
		return fmt.Errorf("unixsock: %s: %w", w.what, err)
	}
	hint := fmt.Sprintf("run as the user who owns the socket's directories (uid %d cannot use them), or choose another path", w.euid)
	if w.euid != 0 && os.Getenv("XDG_RUNTIME_DIR") == "" && strings.HasPrefix(w.sock, SystemRuntimeDir+"/") {
		hint = fmt.Sprintf("XDG_RUNTIME_DIR is not set, so the default socket is under %s, which uid %d may not use; set XDG_RUNTIME_DIR (for example export XDG_RUNTIME_DIR=/run/user/$(id -u)), have %s made for uid %d (systemd: RuntimeDirectory=sigil), or choose another path",
			SystemRuntimeDir, w.euid, SystemRuntimeDir, w.euid)
	}
	return fmt.Errorf("unixsock: %s: %w; %s", w.what, err, hint)
}

// lockInfo is what a lock file records about its holder.
type lockInfo struct {
	PID     int    `json:"pid"`
	DataDir string `json:"data_dir,omitempty"`
}

// maxLockFile bounds what is read from a lock file.
const maxLockFile = 4096

// lock takes the exclusive flock on path and writes info into it. If
// another process holds it, the error names that process.
func (w *walker) lock(path string, info lockInfo) (*os.File, error) {
	for range 10 {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
		if err != nil {
			return nil, w.fail(fmt.Errorf("lock file: %w", err))
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			defer f.Close()
			if errors.Is(err, syscall.EWOULDBLOCK) {
				return nil, w.inUse(f, path)
			}
			return nil, fmt.Errorf("unixsock: %s: locking %s: %w", w.what, path, err)
		}
		// The holder before us may have removed the file between our open
		// and our flock: then we hold a lock nobody else sees.
		fi, err1 := f.Stat()
		pi, err2 := os.Lstat(path)
		if err1 != nil || err2 != nil || !os.SameFile(fi, pi) {
			f.Close()
			continue
		}
		b, _ := json.Marshal(info)
		if err := f.Truncate(0); err != nil {
			f.Close()
			return nil, w.fail(fmt.Errorf("lock file: %w", err))
		}
		if _, err := f.WriteAt(append(b, '\n'), 0); err != nil {
			f.Close()
			return nil, w.fail(fmt.Errorf("lock file: %w", err))
		}
		return f, nil
	}
	return nil, fmt.Errorf("unixsock: %s: lock file %s keeps being replaced", w.what, path)
}

// inUse describes the process holding the lock file f.
func (w *walker) inUse(f *os.File, path string) error {
	var info lockInfo
	b, _ := io.ReadAll(io.LimitReader(f, maxLockFile))
	holder := "another running process"
	if json.Unmarshal(b, &info) == nil && info.PID > 0 {
		holder = fmt.Sprintf("another running sigil process (pid %d", info.PID)
		if info.DataDir != "" {
			holder += ", data directory " + info.DataDir
		}
		holder += ")"
	}
	return fmt.Errorf("unixsock: %w: %s is served by %s, which holds %s; stop that process first, or give this one another socket path",
		ErrInUse, w.what, holder, path)
}

// bind removes a stale socket at path, if any, and listens there.
func (w *walker) bind(path, lockPath string, mode os.FileMode) (*Listener, error) {
	fi, err := os.Lstat(path)
	switch {
	case err == nil:
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, refuse("unixsock: refusing %s: the path exists and is not a socket; remove it or choose another path", w.what)
		}
		if err := w.answering(path, lockPath); err != nil {
			return nil, err
		}
		// Nothing answers and nobody holds the lock: left by a process
		// that died.
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, w.fail(fmt.Errorf("removing stale socket: %w", err))
		}
	case !errors.Is(err, fs.ErrNotExist):
		return nil, w.fail(err)
	}
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, w.fail(err)
	}
	// Close removes the socket itself, and only if it is still ours.
	ul.SetUnlinkOnClose(false)
	fail := func(err error) (*Listener, error) {
		ul.Close()
		os.Remove(path)
		return nil, w.fail(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		return fail(err)
	}
	sock, err := os.Lstat(path)
	if err != nil {
		return fail(err)
	}
	return &Listener{ul: ul, path: path, sock: sock, lockPath: lockPath}, nil
}

// Listener is a listening unix socket created by Listen. It implements
// net.Listener; connections are *net.UnixConn.
type Listener struct {
	ul       *net.UnixListener
	path     string
	sock     fs.FileInfo
	lockPath string
	lock     *os.File

	once     sync.Once
	closeErr error
}

// Accept waits for and returns the next connection, a *net.UnixConn.
func (l *Listener) Accept() (net.Conn, error) { return l.ul.Accept() }

// Addr is the socket's address.
func (l *Listener) Addr() net.Addr { return l.ul.Addr() }

// Path is the socket's absolute path.
func (l *Listener) Path() string { return l.path }

// Close stops listening, removes the socket if it is still the one this
// listener created, and releases the lock. It may be called more than
// once.
func (l *Listener) Close() error {
	l.once.Do(func() {
		l.closeErr = l.ul.Close()
		if fi, err := os.Lstat(l.path); err == nil && sameSocket(fi, l.sock) {
			os.Remove(l.path)
		}
		releaseLock(l.lock, l.lockPath)
	})
	return l.closeErr
}

// sameSocket reports whether a and b describe the same socket: the same
// device and inode, and (since a file system may give a new socket the
// inode of one just removed) the same modification time, set when the
// socket was bound.
func sameSocket(a, b fs.FileInfo) bool {
	return os.SameFile(a, b) && a.ModTime().Equal(b.ModTime())
}

// releaseLock removes the lock file while still holding it (if it is
// still ours), then closes it; a process that opened it just before
// notices the removal and retries.
func releaseLock(f *os.File, path string) {
	if f == nil {
		return
	}
	if fi, err := f.Stat(); err == nil {
		if pi, err := os.Lstat(path); err == nil && os.SameFile(fi, pi) {
			os.Remove(path)
		}
	}
	f.Close()
}

// Check reports what Listen(path, o) would refuse, without creating or
// changing anything: a directory on the path that another user could
// write to, a path that is not a socket, or a socket that another process
// holds or answers on. Daemons call it before they change any state, so
// that a refused start leaves nothing behind; Listen checks again.
func Check(path string, o Options) error {
	if path == "" {
		return errors.New("unixsock: socket path is empty")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("unixsock: socket path %q: %w", path, err)
	}
	name := o.Name
	if name == "" {
		name = "socket"
	}
	w := &walker{euid: os.Geteuid(), sock: abs, what: name + " " + abs}
	real, missing, err := w.resolve(filepath.Dir(abs))
	if err != nil {
		return err
	}
	if len(missing) > 0 {
		// Listen creates the rest, owned by us, if it may.
		if err := syscall.Access(real, 0o3); err != nil { // W_OK|X_OK
			return w.fail(&fs.PathError{Op: "create a directory in", Path: real, Err: err})
		}
		return nil
	}
	fi, err := os.Lstat(real)
	if err != nil {
		return w.fail(err)
	}
	if err := w.checkOwnDir(real, fi); err != nil {
		return err
	}
	lockPath := abs + ".lock"
	f, err := os.OpenFile(lockPath, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	switch {
	case err == nil:
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB)
		defer f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return w.inUse(f, lockPath)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return w.fail(fmt.Errorf("lock file: %w", err))
	}
	fi, err = os.Lstat(abs)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return w.fail(err)
	case fi.Mode().Type() != fs.ModeSocket:
		return refuse("unixsock: refusing %s: the path exists and is not a socket; remove it or choose another path", w.what)
	}
	return w.answering(abs, lockPath)
}

// answering refuses the socket at path if a process answers on it
// (without holding its lock, or we would not be here).
func (w *walker) answering(path, lockPath string) error {
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("unixsock: %w: %s: a process answers on it without holding %s (another program, or an older sigil); stop it first, or choose another socket path",
			ErrInUse, w.what, lockPath)
	}
	return nil
}
