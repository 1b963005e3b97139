package workloadapi

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigil-id/sigil/internal/unixsock"
)

func TestListenForWorkloadSocket(t *testing.T) {
	root, err := os.MkdirTemp("", "wlisten")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	dir := filepath.Join(root, "agent", "public")
	sock := filepath.Join(dir, "api.sock")
	l, err := ListenFor(sock, "/var/lib/sigil/agent-one")
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(sock)
	if err != nil || fi.Mode().Perm() != 0o777 || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("socket: %v %v", fi, err)
	}
	if di, err := os.Stat(dir); err != nil || di.Mode().Perm() != 0o755 {
		t.Errorf("socket directory: %v %v", di, err)
	}

	// A second agent is refused with the right cause, and the first one
	// keeps its socket.
	_, err = ListenFor(sock, "/var/lib/sigil/agent-two")
	if err == nil {
		t.Fatal("second ListenFor on a live socket: no error")
	}
	for _, want := range []string{"workloadapi: ", "Workload API socket " + sock, "data directory /var/lib/sigil/agent-one"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
	if !errors.Is(err, unixsock.ErrInUse) {
		t.Errorf("error %v does not wrap unixsock.ErrInUse", err)
	}
	if after, err := os.Lstat(sock); err != nil || !os.SameFile(fi, after) {
		t.Fatalf("live socket replaced or removed: %v", err)
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("live socket no longer answers: %v", err)
	}
	c.Close()

	// Closing removes the socket; a later agent gets the path.
	l.Close()
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left after Close: %v", err)
	}
	l, err = Listen(sock)
	if err != nil {
		t.Fatalf("Listen after Close: %v", err)
	}
	l.Close()

	// A regular file is never removed.
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(file); err == nil {
		t.Error("Listen over a regular file: no error")
	}
	if _, err := os.Stat(file); err != nil {
		t.Errorf("regular file removed: %v", err)
	}
}
