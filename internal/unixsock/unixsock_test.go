//go:build unix

package unixsock

import (
	"encoding/json"
	"errors"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// otherUID owns the directories an attacker pre-creates (nobody).
const otherUID = 65534

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create files owned by another uid")
	}
}

// tempDir is a short private directory (socket paths are limited to 108
// bytes).
func tempDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "usock")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func mkdir(t *testing.T, path string, mode os.FileMode, uid int) {
	t.Helper()
	if err := os.Mkdir(path, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, uid, uid); err != nil {
		t.Fatal(err)
	}
}

var private = Options{Name: "admin API socket", DirMode: 0o700, SocketMode: 0o600, DataDir: "/var/lib/one"}

// mustRefuse asserts that Listen fails with an error containing every
// want, and that neither the socket nor its lock file was created.
func mustRefuse(t *testing.T, sock string, o Options, want ...string) error {
	t.Helper()
	l, err := Listen(sock, o)
	if err == nil {
		l.Close()
		t.Fatalf("Listen(%s) succeeded, want refusal", sock)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not contain %q", err, w)
		}
	}
	if errors.Is(err, ErrUnsafe) == errors.Is(err, ErrInUse) {
		t.Errorf("error %q wraps neither or both of ErrUnsafe and ErrInUse", err)
	}
	if !strings.HasPrefix(err.Error(), "unixsock: ") {
		t.Errorf("error %q lacks the package prefix", err)
	}
	return err
}

func mustNotExist(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s exists (err %v), want nothing created", p, err)
		}
	}
}

func TestListenCreatesDirectoriesAndCleansUp(t *testing.T) {
	root := tempDir(t)
	dir := filepath.Join(root, "server", "private")
	sock := filepath.Join(dir, "admin.sock")
	l, err := Listen(sock, private)
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]os.FileMode{filepath.Join(root, "server"): 0o755, dir: 0o700} {
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm() != want || ownerOf(fi) != os.Geteuid() {
			t.Errorf("%s: mode %v owner %d (err %v), want %v owned by %d", p, fi.Mode(), ownerOf(fi), err, want, os.Geteuid())
		}
	}
	fi, err := os.Lstat(sock)
	if err != nil || fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket: %v %v", fi, err)
	}
	b, err := os.ReadFile(sock + ".lock")
	if err != nil {
		t.Fatal(err)
	}
	var info lockInfo
	if err := json.Unmarshal(b, &info); err != nil || info.PID != os.Getpid() || info.DataDir != "/var/lib/one" {
		t.Errorf("lock file %q: %+v %v", b, info, err)
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	mustNotExist(t, sock, sock+".lock")
}

func TestListenTightensOwnPrivateDirectory(t *testing.T) {
	dir := filepath.Join(tempDir(t), "private")
	mkdir(t, dir, 0o755, os.Geteuid())
	l, err := Listen(filepath.Join(dir, "admin.sock"), private)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Errorf("private directory mode %v, want 0700", fi.Mode().Perm())
	}
}

func TestRefuseAncestorOwnedByAnotherUser(t *testing.T) {
	needRoot(t)
	root := tempDir(t)
	evil := filepath.Join(root, "evil")
	mkdir(t, evil, 0o755, otherUID)
	sock := filepath.Join(evil, "server", "private", "admin.sock")
	mustRefuse(t, sock, private, "directory "+evil+" is owned by uid 65534",
		`chown `+strconv.Itoa(os.Geteuid())+` `+evil, "admin API socket "+sock)
	mustNotExist(t, filepath.Join(evil, "server"))

	// The socket's own directory, pre-created by the other user.
	own := filepath.Join(root, "own")
	mkdir(t, own, 0o700, otherUID)
	mustRefuse(t, filepath.Join(own, "api.sock"), private, "directory "+own+" is owned by uid 65534")
	mustNotExist(t, filepath.Join(own, "api.sock"), filepath.Join(own, "api.sock.lock"))
}

func TestRefuseWritableByOthers(t *testing.T) {
	root := tempDir(t)
	for _, mode := range []os.FileMode{0o775, 0o757, 0o777} {
		dir := filepath.Join(root, "w"+strconv.FormatUint(uint64(mode), 8))
		mkdir(t, dir, mode, os.Geteuid())
		// As an ancestor and as the socket's own directory.
		for _, sock := range []string{filepath.Join(dir, "sub", "a.sock"), filepath.Join(dir, "a.sock")} {
			mustRefuse(t, sock, private, "directory "+dir+" is writable by other users", `chmod go-w `+dir)
			mustNotExist(t, filepath.Join(dir, "sub"), filepath.Join(dir, "a.sock"), filepath.Join(dir, "a.sock.lock"))
		}
	}
}

func TestStickyRootDirectory(t *testing.T) {
	needRoot(t)
	root := tempDir(t)
	sticky := filepath.Join(root, "sticky")
	mkdir(t, sticky, 0o777|os.ModeSticky, 0)
	// Accepted as an ancestor, like /tmp.
	l, err := Listen(filepath.Join(sticky, "mine", "a.sock"), private)
	if err != nil {
		t.Fatalf("sticky root-owned ancestor: %v", err)
	}
	l.Close()
	// Not as the socket's own directory: another user could take the
	// name while we are not running.
	mustRefuse(t, filepath.Join(sticky, "a.sock"), private, "its directory "+sticky+" is writable by other users (mode 1777)")
	mustNotExist(t, filepath.Join(sticky, "a.sock"))
	// Nor when another user owns it.
	stickyOther := filepath.Join(root, "sticky-other")
	mkdir(t, stickyOther, 0o777|os.ModeSticky, otherUID)
	mustRefuse(t, filepath.Join(stickyOther, "mine", "a.sock"), private, "directory "+stickyOther+" is owned by uid 65534")
	mustNotExist(t, filepath.Join(stickyOther, "mine"))
}

func TestSymlinkAncestor(t *testing.T) {
	needRoot(t)
	root := tempDir(t)
	safe := filepath.Join(root, "safe")
	mkdir(t, safe, 0o755, os.Geteuid())

	// A link owned by another user could be redirected by them.
	evilLink := filepath.Join(root, "evil-link")
	if err := os.Symlink(safe, evilLink); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(evilLink, otherUID, otherUID); err != nil {
		t.Fatal(err)
	}
	mustRefuse(t, filepath.Join(evilLink, "d", "a.sock"), private, evilLink+" is a symbolic link owned by uid 65534")
	mustNotExist(t, filepath.Join(safe, "d"))

	// Our own link to a directory another user owns: the target is
	// checked.
	unsafe := filepath.Join(root, "unsafe")
	mkdir(t, unsafe, 0o755, otherUID)
	link := filepath.Join(root, "link")
	if err := os.Symlink("unsafe", link); err != nil {
		t.Fatal(err)
	}
	mustRefuse(t, filepath.Join(link, "d", "a.sock"), private, "directory "+unsafe+" is owned by uid 65534")
	mustNotExist(t, filepath.Join(unsafe, "d"))

	// A chain through a directory others may write to.
	open := filepath.Join(root, "open")
	mkdir(t, open, 0o777, os.Geteuid())
	if err := os.Symlink(safe, filepath.Join(open, "l2")); err != nil {
		t.Fatal(err)
	}
	chain := filepath.Join(root, "chain")
	if err := os.Symlink(filepath.Join(open, "l2"), chain); err != nil {
		t.Fatal(err)
	}
	mustRefuse(t, filepath.Join(chain, "d", "a.sock"), private, "directory "+open+" is writable by other users")

	// Our own link to a safe directory is followed.
	good := filepath.Join(root, "good")
	if err := os.Symlink("safe", good); err != nil {
		t.Fatal(err)
	}
	l, err := Listen(filepath.Join(good, "d", "a.sock"), private)
	if err != nil {
		t.Fatalf("own link to a safe directory: %v", err)
	}
	l.Close()

	// A loop ends with an error.
	if err := os.Symlink("loop", filepath.Join(root, "loop")); err != nil {
		t.Fatal(err)
	}
	mustRefuse(t, filepath.Join(root, "loop", "a.sock"), private, "too many symbolic links")
}

func TestLiveSocketNeverReplaced(t *testing.T) {
	dir := filepath.Join(tempDir(t), "private")
	sock := filepath.Join(dir, "admin.sock")
	l1, err := Listen(sock, private)
	if err != nil {
		t.Fatal(err)
	}
	defer l1.Close()
	before, _ := os.Lstat(sock)

	second := private
	second.DataDir = "/var/lib/two"
	err = mustRefuse(t, sock, second, "data directory /var/lib/one", "pid "+strconv.Itoa(os.Getpid()), sock+".lock", "stop that process first")
	if !errors.Is(err, ErrInUse) {
		t.Errorf("error %v does not wrap ErrInUse", err)
	}
	assertServes(t, l1, sock, before)

	// The refused listener's failure did not release the lock either.
	if _, err := Listen(sock, second); !errors.Is(err, ErrInUse) {
		t.Errorf("third Listen: %v, want ErrInUse", err)
	}
	assertServes(t, l1, sock, before)
}

// assertServes checks that the socket at path is still l's and answers.
func assertServes(t *testing.T, l *Listener, path string, want fs.FileInfo) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil || !os.SameFile(fi, want) {
		t.Fatalf("socket %s replaced or removed (err %v)", path, err)
	}
	accepted := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			c.Close()
		}
		accepted <- err
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("socket no longer answers: %v", err)
	}
	c.Close()
	if err := <-accepted; err != nil {
		t.Fatalf("Accept: %v", err)
	}
}

func TestLiveSocketWithoutLockNeverReplaced(t *testing.T) {
	dir := filepath.Join(tempDir(t), "private")
	mkdir(t, dir, 0o700, os.Geteuid())
	sock := filepath.Join(dir, "admin.sock")
	other, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	before, _ := os.Lstat(sock)
	err = mustRefuse(t, sock, private, "a process answers on it without holding "+sock+".lock")
	if !errors.Is(err, ErrInUse) {
		t.Errorf("error %v does not wrap ErrInUse", err)
	}
	if fi, err := os.Lstat(sock); err != nil || !os.SameFile(fi, before) {
		t.Fatalf("live socket replaced or removed (err %v)", err)
	}
	mustNotExist(t, sock+".lock")
}

func TestStaleSocketRemoved(t *testing.T) {
	dir := filepath.Join(tempDir(t), "private")
	mkdir(t, dir, 0o700, os.Geteuid())
	sock := filepath.Join(dir, "admin.sock")
	// A socket and lock file left by a process that died.
	dead, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	dead.SetUnlinkOnClose(false)
	dead.Close()
	if err := os.WriteFile(sock+".lock", []byte(`{"pid":1,"data_dir":"/old"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if c, err := net.Dial("unix", sock); err == nil {
		c.Close()
		t.Fatal("stale socket answers")
	}
	l, err := Listen(sock, private)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	defer l.Close()
	fi, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(sock + ".lock")
	if !strings.Contains(string(b), `"pid":`+strconv.Itoa(os.Getpid())) || strings.Contains(string(b), "/old") {
		t.Errorf("lock file %q not rewritten", b)
	}
	assertServes(t, l, sock, fi)
}

func TestNotASocketNeverRemoved(t *testing.T) {
	dir := filepath.Join(tempDir(t), "private")
	mkdir(t, dir, 0o700, os.Geteuid())
	file := filepath.Join(dir, "admin.sock")
	if err := os.WriteFile(file, []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	mustRefuse(t, file, private, "exists and is not a socket")
	if b, err := os.ReadFile(file); err != nil || string(b) != "data" {
		t.Errorf("file changed: %q %v", b, err)
	}
	mustNotExist(t, file+".lock")
}

func TestCloseRemovesOnlyOwnSocket(t *testing.T) {
	dir := filepath.Join(tempDir(t), "private")
	sock := filepath.Join(dir, "admin.sock")
	l, err := Listen(sock, private)
	if err != nil {
		t.Fatal(err)
	}
	// Someone (with the right to) replaced the socket meanwhile.
	if err := os.Remove(sock); err != nil {
		t.Fatal(err)
	}
	other, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	l.Close()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("Close removed a socket that was not its own: %v", err)
	}
	c.Close()
}

func TestRefuseEmptyPath(t *testing.T) {
	if _, err := Listen("", private); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("empty path: %v", err)
	}
}

func TestRuntimeDir(t *testing.T) {
	for _, c := range []struct {
		euid int
		xdg  string
		want string
	}{
		{0, "", "/run/sigil"},
		{0, "/run/user/0", "/run/sigil"},
		{1000, "/run/user/1000", "/run/user/1000/sigil"},
		{1000, "/run/user/1000/", "/run/user/1000/sigil"},
		{1000, "", "/run/sigil"},
		{1000, "relative/dir", "/run/sigil"},
	} {
		if got := runtimeDir(c.euid, c.xdg); got != c.want {
			t.Errorf("runtimeDir(%d, %q) = %q, want %q", c.euid, c.xdg, got, c.want)
		}
	}
	if os.Geteuid() == 0 {
		t.Setenv("XDG_RUNTIME_DIR", "/run/user/0")
		if DefaultAdminSocket() != "/run/sigil/server/private/admin.sock" || DefaultWorkloadSocket() != "/run/sigil/agent/public/api.sock" {
			t.Errorf("root defaults: %s %s", DefaultAdminSocket(), DefaultWorkloadSocket())
		}
	}
}

func TestClientSocket(t *testing.T) {
	rt := tempDir(t)
	// Nothing in the user's runtime directory: the system socket.
	if got := clientSocket(WorkloadSocketName, rt); got != "/run/sigil/agent/public/api.sock" {
		t.Errorf("no own socket: %s", got)
	}
	l, err := Listen(filepath.Join(rt, WorkloadSocketName), Options{DirMode: 0o755, SocketMode: 0o777})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if got := clientSocket(WorkloadSocketName, rt); got != filepath.Join(rt, WorkloadSocketName) {
		t.Errorf("own socket: %s", got)
	}
}

func TestCheckChangesNothing(t *testing.T) {
	root := tempDir(t)
	// Missing directories: fine, and still missing.
	sock := filepath.Join(root, "server", "private", "admin.sock")
	if err := Check(sock, private); err != nil {
		t.Fatalf("Check with missing directories: %v", err)
	}
	mustNotExist(t, filepath.Join(root, "server"))

	// Writable by others: refused.
	open := filepath.Join(root, "open")
	mkdir(t, open, 0o777, os.Geteuid())
	if err := Check(filepath.Join(open, "x", "a.sock"), private); !errors.Is(err, ErrUnsafe) || !strings.Contains(err.Error(), "chmod go-w "+open) {
		t.Errorf("Check under a world-writable directory: %v", err)
	}
	mustNotExist(t, filepath.Join(open, "x"))

	// Held by a live listener: refused, naming its data directory, and
	// the holder keeps both its lock and its socket.
	l, err := Listen(sock, private)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	live, _ := os.Lstat(sock)
	if err := Check(sock, private); !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "data directory /var/lib/one") {
		t.Errorf("Check on a held socket: %v", err)
	}
	if _, err := Listen(sock, private); !errors.Is(err, ErrInUse) {
		t.Errorf("Listen after Check: %v, want ErrInUse (lock kept)", err)
	}
	assertServes(t, l, sock, live)

	// A stale socket is accepted and left in place (Listen removes it).
	dir := filepath.Join(root, "stale")
	mkdir(t, dir, 0o700, os.Geteuid())
	stale := filepath.Join(dir, "a.sock")
	dead, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	dead.SetUnlinkOnClose(false)
	dead.Close()
	if err := Check(stale, private); err != nil {
		t.Errorf("Check on a stale socket: %v", err)
	}
	if fi, err := os.Lstat(stale); err != nil || fi.Mode().Type() != fs.ModeSocket {
		t.Errorf("Check removed the stale socket: %v", err)
	}

	// Not a socket, or a socket served without a lock: refused.
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Check(file, private); !errors.Is(err, ErrUnsafe) {
		t.Errorf("Check on a regular file: %v", err)
	}
	other := filepath.Join(dir, "other.sock")
	ol, err := net.Listen("unix", other)
	if err != nil {
		t.Fatal(err)
	}
	defer ol.Close()
	if err := Check(other, private); !errors.Is(err, ErrInUse) {
		t.Errorf("Check on a socket served without a lock: %v", err)
	}
}

// TestUnprivilegedWithoutXDGRuntimeDir runs Listen as another user with no
// XDG_RUNTIME_DIR on a path under /run/sigil (where the defaults then
// point): it fails, creates nothing, and says what to set.
func TestUnprivilegedWithoutXDGRuntimeDir(t *testing.T) {
	if sock := os.Getenv("UNIXSOCK_TEST_LISTEN"); sock != "" {
		if err := Check(sock, private); err != nil {
			t.Logf("CHECK<%v>", err)
		}
		_, err := Listen(sock, private)
		if err == nil {
			t.Fatal("Listen succeeded")
		}
		t.Logf("ERR<%v>", err)
		return
	}
	needRoot(t)
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv (util-linux) is not installed: cannot run as another uid")
	}
	// A copy of this test binary that the other user may execute.
	dir := tempDir(t)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "unixsock.test")
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(SystemRuntimeDir, "unixsock-test-"+strconv.Itoa(os.Getpid()), "private", "admin.sock")
	cmd := exec.Command(setpriv, "--reuid", strconv.Itoa(otherUID), "--regid", strconv.Itoa(otherUID), "--clear-groups",
		bin, "-test.run", "^TestUnprivilegedWithoutXDGRuntimeDir$", "-test.v")
	cmd.Env = []string{"UNIXSOCK_TEST_LISTEN=" + sock, "PATH=" + os.Getenv("PATH")}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	for _, want := range []string{
		"CHECK<unixsock: admin API socket " + sock + ": create a directory in /run",
		"ERR<unixsock: admin API socket " + sock, "permission denied",
		"XDG_RUNTIME_DIR is not set", "export XDG_RUNTIME_DIR=/run/user/$(id -u)",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("helper output lacks %q:\n%s", want, out)
		}
	}
	mustNotExist(t, filepath.Dir(filepath.Dir(sock)))
}
