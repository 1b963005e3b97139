package integration

// Attacks on the daemons' unix sockets (issue 8, finding 5): a local user
// who pre-creates a socket's parent directory could later replace the
// socket and impersonate the admin API or the Workload API; a second
// server, agent or `sigil dev` on the same socket path used to replace the
// first one's live socket. Each case asserts the refusal, its message, and
// that nothing changed: no socket or directory created where the attacker
// could reach it, the Raft applied index, entries and agents unchanged, and
// the first process still answering on its own socket.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/sigil-id/sigil/internal/eventually"
)

// socketAttackUID is the attacker's uid (nobody).
const socketAttackUID = 65534

// socketAttackDir is a short private directory: unix socket paths are
// limited to 108 bytes.
func socketAttackDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "sgsk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// socketAttackRefused runs sigil and returns its output, failing the test
// unless it exits non-zero within 30 s (a daemon that does not refuse
// keeps running; it is then stopped with SIGTERM).
func socketAttackRefused(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, sigilBin, args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 15 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("sigil %s did not refuse to start (still running after 30s):\n%s", strings.Join(args, " "), tail(string(out), 4000))
	}
	if err == nil {
		t.Fatalf("sigil %s exited 0, want a refusal:\n%s", strings.Join(args, " "), tail(string(out), 4000))
	}
	return string(out)
}

func socketAttackContains(t *testing.T, what, out string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(out, w) {
			t.Errorf("%s: output lacks %q:\n%s", what, w, tail(out, 4000))
		}
	}
}

// socketAttackNothingIn fails if dir has any entry: the refused process
// created nothing where the attacker could reach it.
func socketAttackNothingIn(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		t.Errorf("%s/%s was created in the attacker's directory", dir, e.Name())
	}
}

func socketAttackMissing(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s exists (err %v), want nothing created", p, err)
		}
	}
}

// socketAttackState is what a refused start must leave unchanged on the
// running server.
type socketAttackState struct {
	index   uint64
	entries string
	agents  string
}

func socketAttackSnapshot(t *testing.T, s *server) socketAttackState {
	t.Helper()
	var m struct {
		AppliedIndex string `json:"applied_index"`
	}
	out := s.cli("cluster", "members", "-output", "json")
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("cluster members output %q: %v", out, err)
	}
	idx, err := strconv.ParseUint(m.AppliedIndex, 10, 64)
	if err != nil || idx == 0 {
		t.Fatalf("cluster members reports applied index %q", m.AppliedIndex)
	}
	return socketAttackState{
		index:   idx,
		entries: s.cli("entry", "list", "-output", "json"),
		agents:  s.cli("agent", "list", "-output", "json"),
	}
}

func socketAttackUnchanged(t *testing.T, what string, before, after socketAttackState) {
	t.Helper()
	if before.index != after.index {
		t.Errorf("%s moved the Raft applied index from %d to %d", what, before.index, after.index)
	}
	if before.entries != after.entries {
		t.Errorf("%s changed the entry list:\nbefore %s\nafter  %s", what, before.entries, after.entries)
	}
	if before.agents != after.agents {
		t.Errorf("%s changed the agent list:\nbefore %s\nafter  %s", what, before.agents, after.agents)
	}
}

// socketAttackRewrite replaces old with new in a config file.
func socketAttackRewrite(t *testing.T, path, old, new string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), old) {
		t.Fatalf("%s does not contain %q", path, old)
	}
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(string(b), old, new)), 0o600); err != nil {
		t.Fatal(err)
	}
}

// socketAttackSameSocket fails unless path is still the socket described
// by want (same inode) and something answers on it.
func socketAttackSameSocket(t *testing.T, path string, want fs.FileInfo) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil || !os.SameFile(fi, want) {
		t.Fatalf("socket %s was replaced or removed (err %v)", path, err)
	}
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		t.Fatalf("socket %s no longer answers: %v", path, err)
	}
	c.Close()
}

// socketAttackFetch fetches the X.509-SVID of this process from the
// Workload API at sock with go-spiffe, retrying while the agent syncs.
func socketAttackFetch(t *testing.T, sock, wantID string) {
	t.Helper()
	err := eventually.Wait(30*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+sock))
		cancel()
		if err != nil {
			return err
		}
		if svid.ID.String() != wantID {
			return fmt.Errorf("got %v, want %s", svid.ID, wantID)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("fetching the SVID from %s: %v", sock, err)
	}
}

// TestAttackSocketPrecreatedParent: another user pre-created a directory
// on the socket path (as the old defaults under /tmp allowed), or a
// directory on it is writable by others. The server, the agent and
// `sigil dev` refuse to start, say which directory and how to fix it, and
// create nothing there.
func TestAttackSocketPrecreatedParent(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a directory owned by another uid")
	}
	root := socketAttackDir(t)
	// The attacker's directories: one owned by them, one any user may
	// write to.
	evil := filepath.Join(root, "evil")
	if err := os.Mkdir(evil, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(evil, socketAttackUID, socketAttackUID); err != nil {
		t.Fatal(err)
	}
	open := filepath.Join(root, "open")
	if err := os.Mkdir(open, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	ownedMsg := []string{"directory " + evil + " is owned by uid 65534", "chown 0 " + evil}
	openMsg := []string{"directory " + open + " is writable by other users", "chmod go-w " + open}

	t.Run("server", func(t *testing.T) {
		s := newServer(t, filepath.Join(root, "s"))
		for _, c := range []struct {
			dir  string
			want []string
		}{{evil, ownedMsg}, {open, openMsg}} {
			sock := filepath.Join(c.dir, "server", "private", "admin.sock")
			socketAttackRewrite(t, s.config, s.admin, sock)
			s.admin = sock
			out := socketAttackRefused(t, "server", "-config", s.config)
			socketAttackContains(t, "server", out, append([]string{"admin API socket " + sock}, c.want...)...)
			socketAttackNothingIn(t, c.dir)
			socketAttackMissing(t, filepath.Join(s.dir, "data"))
		}
	})

	t.Run("agent", func(t *testing.T) {
		s := newServer(t, filepath.Join(root, "s2"))
		s.start()
		for _, c := range []struct {
			dir  string
			want []string
		}{{evil, ownedMsg}, {open, openMsg}} {
			a := newAgent(t, s, filepath.Join(root, "a-"+filepath.Base(c.dir)))
			sock := filepath.Join(c.dir, "agent", "public", "api.sock")
			socketAttackRewrite(t, a.config, a.socket, sock)
			before := socketAttackSnapshot(t, s)
			out := socketAttackRefused(t, "agent", "-config", a.config)
			socketAttackContains(t, "agent", out, append([]string{"Workload API socket " + sock}, c.want...)...)
			socketAttackNothingIn(t, c.dir)
			// Refused before attesting: the join token is unused, no
			// agent was added and nothing was written to Raft.
			socketAttackUnchanged(t, "a refused agent", before, socketAttackSnapshot(t, s))
			socketAttackMissing(t, filepath.Join(a.dir, "data"))
		}
	})

	t.Run("dev", func(t *testing.T) {
		for i, c := range []struct {
			flag, sock string
			want       []string
		}{
			{"-socket", filepath.Join(evil, "agent", "public", "api.sock"), append([]string{"Workload API socket "}, ownedMsg...)},
			{"-admin-socket", filepath.Join(evil, "server", "private", "admin.sock"), append([]string{"admin API socket "}, ownedMsg...)},
			{"-admin-socket", filepath.Join(open, "server", "private", "admin.sock"), append([]string{"admin API socket "}, openMsg...)},
		} {
			dir := filepath.Join(root, fmt.Sprintf("dev%d", i))
			args := map[string]string{
				"-socket":       filepath.Join(dir, "sock", "api.sock"),
				"-admin-socket": filepath.Join(dir, "adm", "admin.sock"),
			}
			args[c.flag] = c.sock
			out := socketAttackRefused(t, "dev", "-data-dir", filepath.Join(dir, "data"),
				"-socket", args["-socket"], "-admin-socket", args["-admin-socket"])
			socketAttackContains(t, "dev "+c.flag, out, append(c.want, c.sock)...)
			if strings.Contains(out, "remove it to start from scratch") {
				t.Errorf("dev blames its state for a socket problem:\n%s", out)
			}
			socketAttackNothingIn(t, evil)
			socketAttackNothingIn(t, open)
			// Neither socket was created, nor any server state.
			socketAttackMissing(t, filepath.Join(dir, "sock"), filepath.Join(dir, "adm"), filepath.Join(dir, "data", "server"))
		}
	})
}

// TestAttackSocketSecondServerSameAdminSocket: a second server, and a
// `sigil dev`, configured with the first server's admin socket and their
// own data directories, used to replace its live socket, serve the CLI in
// its place and delete it on exit. They refuse, naming the first one's
// data directory, and the first server keeps its socket and answers.
func TestAttackSocketSecondServerSameAdminSocket(t *testing.T) {
	root := socketAttackDir(t)
	s1 := newServer(t, filepath.Join(root, "s1"))
	s1.start()
	s1.cli("entry", "create", "-spiffe-id", "spiffe://"+trustDomain+"/socket-attack/marker",
		"-parent-id", "spiffe://"+trustDomain+"/sigil/agent/none", "-selector", "unix:uid:4242")
	first, err := os.Lstat(s1.admin)
	if err != nil {
		t.Fatal(err)
	}
	before := socketAttackSnapshot(t, s1)
	s1Data := filepath.Join(s1.dir, "data")

	s2 := newServer(t, filepath.Join(root, "s2"))
	socketAttackRewrite(t, s2.config, s2.admin, s1.admin)
	out := socketAttackRefused(t, "server", "-config", s2.config)
	socketAttackContains(t, "second server", out,
		"admin API socket "+s1.admin, "data directory "+s1Data, "stop that process first")
	socketAttackMissing(t, filepath.Join(s2.dir, "data"))
	socketAttackSameSocket(t, s1.admin, first)
	socketAttackUnchanged(t, "a refused second server", before, socketAttackSnapshot(t, s1))

	dev := filepath.Join(root, "dev")
	out = socketAttackRefused(t, "dev", "-data-dir", filepath.Join(dev, "data"),
		"-admin-socket", s1.admin, "-socket", filepath.Join(dev, "sock", "api.sock"))
	socketAttackContains(t, "sigil dev", out, "admin API socket "+s1.admin, "data directory "+s1Data)
	if strings.Contains(out, "remove it to start from scratch") {
		t.Errorf("dev blames its state for a socket in use:\n%s", out)
	}
	socketAttackMissing(t, filepath.Join(dev, "sock"), filepath.Join(dev, "data", "server"))
	socketAttackSameSocket(t, s1.admin, first)
	socketAttackUnchanged(t, "a refused sigil dev", before, socketAttackSnapshot(t, s1))

	// The first server still shuts down cleanly and removes its socket.
	s1.p.stop()
	socketAttackMissing(t, s1.admin, s1.admin+".lock")
}

// TestAttackSocketSecondAgentSameWorkloadSocket: a second agent, and a
// `sigil dev`, configured with the first agent's Workload API socket are
// refused before they attest, with the right cause (the socket is held by
// the first agent, named by its data directory), and the first agent keeps
// serving SVIDs on it.
func TestAttackSocketSecondAgentSameWorkloadSocket(t *testing.T) {
	root := socketAttackDir(t)
	s := newServer(t, filepath.Join(root, "s"))
	s.start()
	a1 := newAgent(t, s, filepath.Join(root, "a1"))
	a1.start()
	id := "spiffe://" + trustDomain + "/socket-attack/workload"
	s.cli("entry", "create", "-spiffe-id", id, "-parent-id", a1.id, "-selector", "unix:uid:"+strconv.Itoa(os.Geteuid()))
	socketAttackFetch(t, a1.socket, id)
	first, err := os.Lstat(a1.socket)
	if err != nil {
		t.Fatal(err)
	}
	a1Data := filepath.Join(a1.dir, "data")

	a2 := newAgent(t, s, filepath.Join(root, "a2"))
	socketAttackRewrite(t, a2.config, a2.socket, a1.socket)
	before := socketAttackSnapshot(t, s)
	out := socketAttackRefused(t, "agent", "-config", a2.config)
	socketAttackContains(t, "second agent", out,
		"Workload API socket "+a1.socket, "data directory "+a1Data, "stop that process first")
	if strings.Contains(out, "another server") {
		t.Errorf("second agent blames the wrong cause:\n%s", out)
	}
	socketAttackMissing(t, filepath.Join(a2.dir, "data"))
	socketAttackSameSocket(t, a1.socket, first)
	socketAttackUnchanged(t, "a refused second agent", before, socketAttackSnapshot(t, s))
	socketAttackFetch(t, a1.socket, id)

	dev := filepath.Join(root, "dev")
	out = socketAttackRefused(t, "dev", "-data-dir", filepath.Join(dev, "data"),
		"-socket", a1.socket, "-admin-socket", filepath.Join(dev, "adm", "admin.sock"))
	socketAttackContains(t, "sigil dev", out, "Workload API socket "+a1.socket, "data directory "+a1Data)
	if strings.Contains(out, "remove it to start from scratch") {
		t.Errorf("dev blames its state for a socket in use:\n%s", out)
	}
	socketAttackMissing(t, filepath.Join(dev, "adm"), filepath.Join(dev, "data", "server"))
	socketAttackSameSocket(t, a1.socket, first)
	socketAttackUnchanged(t, "a refused sigil dev", before, socketAttackSnapshot(t, s))
	socketAttackFetch(t, a1.socket, id)
}
