package integration

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-id/sigil/internal/eventually"
)

var (
	attackExecOnce sync.Once
	attackExecBin  string
	attackExecErr  error
)

// attackExec builds testdata/attackexec once.
func attackExec(t *testing.T) string {
	t.Helper()
	attackExecOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Dir(filepath.Dir(file))
		attackExecBin = filepath.Join(filepath.Dir(sigilBin), "attackexec")
		cmd := exec.Command("go", "build", "-o", attackExecBin, "./integration/testdata/attackexec")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			attackExecErr = err
			attackExecBin = string(out)
		}
	})
	if attackExecErr != nil {
		t.Fatalf("building attackexec: %v\n%s", attackExecErr, attackExecBin)
	}
	return attackExecBin
}

// nobody is the unprivileged uid the local attacker runs as.
const nobody = 65534

// asNobody returns a command that runs argv as uid/gid 65534 with no
// supplementary groups, through util-linux's setpriv.
func asNobody(t *testing.T, argv ...string) *exec.Cmd {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the local-attacker tests switch to another uid and need root")
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv (util-linux) is not installed: cannot run a process as another uid")
	}
	args := append([]string{"--reuid", "65534", "--regid", "65534", "--clear-groups", "--"}, argv...)
	return exec.Command(setpriv, args...)
}

// workloadAttackEnv is a server and an agent whose Workload API socket
// other users can reach, in directories only root can write.
type workloadAttackEnv struct {
	s    *server
	a    *agent
	dir  string // 0755, root's
	out  string // 0700, owned by nobody: where the attacker writes results
	bins string // 0755, root's: the programs the attacker runs
}

func newWorkloadAttackEnv(t *testing.T) *workloadAttackEnv {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the local-attacker tests switch to another uid and need root")
	}
	dir, err := os.MkdirTemp("", "sigil-attack-wl-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e := &workloadAttackEnv{dir: dir, out: filepath.Join(dir, "out"), bins: filepath.Join(dir, "bin")}
	for _, d := range []string{dir, e.bins} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(e.out, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(e.out, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	e.s = newServer(t, filepath.Join(dir, "server"))
	e.s.start()
	agentDir := filepath.Join(dir, "agent")
	e.a = newAgent(t, e.s, agentDir)
	if err := os.Chmod(agentDir, 0o755); err != nil {
		t.Fatal(err)
	}
	e.a.start()
	return e
}

// install copies the attackexec program to name in the bin directory,
// owned by root with the given mode (04755 makes it set-user-ID root).
func (e *workloadAttackEnv) install(t *testing.T, name string, mode os.FileMode) string {
	t.Helper()
	b, err := os.ReadFile(attackExec(t))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(e.bins, name)
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(p, 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

type fetchResult struct {
	SPIFFEID string `json:"spiffe_id"`
	Error    string `json:"error"`
}

// run runs cmd and waits (bounded) for the result file it writes.
func (e *workloadAttackEnv) run(t *testing.T, cmd *exec.Cmd, out string) fetchResult {
	t.Helper()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	var b []byte
	err := eventually.Wait(30*time.Second, func() (err error) {
		b, err = os.ReadFile(out)
		return err
	})
	if err != nil {
		t.Fatalf("no result in %s: %v", out, err)
	}
	var r fetchResult
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("result %s: %v", b, err)
	}
	return r
}

func (e *workloadAttackEnv) entry(t *testing.T, id string, selectors ...string) {
	t.Helper()
	args := []string{"entry", "create", "-spiffe-id", "spiffe://" + trustDomain + id, "-parent-id", e.a.id}
	for _, s := range selectors {
		args = append(args, "-selector", s)
	}
	e.s.cli(args...)
}

// entryIDs returns the registered entries, to show that an attack
// changed nothing.
func (e *workloadAttackEnv) entryIDs(t *testing.T) string {
	t.Helper()
	return e.s.cli("entry", "list", "-output", "json")
}

// waitSVID waits until the agent serves id to the given fetch command,
// so that a refusal later is not a matter of timing.
func (e *workloadAttackEnv) waitSVID(t *testing.T, id string, fetch func(out string) *exec.Cmd) {
	t.Helper()
	i := 0
	err := eventually.Wait(30*time.Second, func() error {
		out := filepath.Join(e.out, "probe-"+strings.ReplaceAll(id, "/", "_")+"-"+itoa(i))
		i++
		if r := e.run(t, fetch(out), out); r.SPIFFEID != "spiffe://"+trustDomain+id {
			return fmt.Errorf("got %+v", r)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("the legitimate process never got %s: %v", id, err)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// TestAttackWorkloadSetuidExec: an unprivileged user connects to the
// Workload API, hands the connection to a child and executes a
// set-user-ID-root program. Before the fix the agent re-read the caller's
// uid from /proc and gave the child root's SVID and private key; now the
// caller is the user who connected, and a process whose credentials
// changed since it connected gets nothing.
func TestAttackWorkloadSetuidExec(t *testing.T) {
	e := newWorkloadAttackEnv(t)
	suid := e.install(t, "suid-helper", 0o4755|os.ModeSetuid)
	e.entry(t, "/root-only", "unix:uid:0")
	// Root itself gets the identity: the entry works.
	e.waitSVID(t, "/root-only", func(out string) *exec.Cmd {
		return exec.Command(attackExec(t), "fetch", e.a.socket, out)
	})
	before := e.entryIDs(t)

	out := filepath.Join(e.out, "setuid.json")
	r := e.run(t, asNobody(t, e.install(t, "attacker", 0o755), "connect-exec", e.a.socket, suid, out), out)
	if r.SPIFFEID != "" {
		t.Fatalf("an unprivileged user got %s by executing a set-user-ID program", r.SPIFFEID)
	}
	if !strings.Contains(r.Error, "PermissionDenied") {
		t.Fatalf("refusal = %q, want PermissionDenied", r.Error)
	}
	if after := e.entryIDs(t); after != before {
		t.Fatalf("entries changed: %s -> %s", before, after)
	}
}

// TestAttackWorkloadExecRegisteredPath: an unprivileged user connects,
// hands the connection to a child and executes a program whose path is
// registered as a workload. The caller is judged as the program it ran
// when it connected, so the child gets nothing; the same program run
// directly by the same user gets the identity (the entry works).
func TestAttackWorkloadExecRegisteredPath(t *testing.T) {
	e := newWorkloadAttackEnv(t)
	victim := e.install(t, "victim", 0o755)
	e.entry(t, "/victim", "unix:path:"+victim, "unix:uid:65534")
	e.waitSVID(t, "/victim", func(out string) *exec.Cmd {
		return asNobody(t, victim, "fetch", e.a.socket, out)
	})
	before := e.entryIDs(t)

	out := filepath.Join(e.out, "exec.json")
	r := e.run(t, asNobody(t, e.install(t, "attacker", 0o755), "connect-exec", e.a.socket, victim, out), out)
	if r.SPIFFEID != "" {
		t.Fatalf("a process got %s by executing the registered program after connecting", r.SPIFFEID)
	}
	if !strings.Contains(r.Error, "PermissionDenied") {
		t.Fatalf("refusal = %q, want PermissionDenied", r.Error)
	}
	if after := e.entryIDs(t); after != before {
		t.Fatalf("entries changed: %s -> %s", before, after)
	}
}

// fdCount counts the open file descriptors of a process.
func fdCount(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/" + itoa(pid) + "/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestAttackWorkloadIdleConnections: a local user without any identity
// opens 500 connections and makes no call. The agent keeps at most its
// per-user limit of them (128 by default) and closes the rest at once, so
// its descriptors stay bounded, and another user is still served.
func TestAttackWorkloadIdleConnections(t *testing.T) {
	e := newWorkloadAttackEnv(t)
	e.entry(t, "/nobody", "unix:uid:65534")
	pid := e.a.p.cmd.Process.Pid
	base := fdCount(t, pid)

	var conns []net.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for i := 0; i < 500; i++ {
		c, err := net.Dial("unix", e.a.socket)
		if err != nil {
			break // the backlog may refuse some; that is fine too
		}
		conns = append(conns, c)
	}
	// Let the agent accept what it will; wait until the count settles.
	var n int
	deadline := time.Now().Add(15 * time.Second)
	for last := -1; time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		n = fdCount(t, pid)
		if n == last {
			break
		}
		last = n
	}
	// Each admitted connection holds a socket and a pidfd.
	t.Logf("500 connections from one uid: the agent's descriptors grew by %d (%d opened)", n-base, len(conns))
	if grown := n - base; grown > 2*128+16 {
		t.Fatalf("500 idle connections from one user hold %d descriptors in the agent (bound %d)", grown, 2*128+16)
	}
	// Another user is still served.
	out := filepath.Join(e.out, "nobody.json")
	r := e.run(t, asNobody(t, e.install(t, "attacker", 0o755), "fetch", e.a.socket, out), out)
	if r.SPIFFEID != "spiffe://"+trustDomain+"/nobody" {
		t.Fatalf("another user was not served while one user held connections: %+v", r)
	}
}
