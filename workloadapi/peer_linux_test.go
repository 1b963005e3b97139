//go:build linux

package workloadapi

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/workload"
	"github.com/sigil-id/sigil/internal/procfs"
)

// procState is the state letter of process pid (field 3 of its stat
// file), or "" once it is gone.
func procState(pid int) string {
	b, err := os.ReadFile("/proc/" + itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if len(f) == 0 {
		return ""
	}
	return f[0]
}

// TestCallerZombieGetsNothing: a caller that exited but was not reaped
// (a zombie, whose pid still answers signals and whose pidfd is still
// that of the process) gets nothing more on the connection it handed to
// another process: the liveness check, which asks the pidfd whether the
// process has exited (pinnedStartTime), refuses a zombie.
func TestCallerZombieGetsNothing(t *testing.T) {
	f := start(t, func(s *Server) { s.staleGrace = time.Hour })
	f.cache.SetIdentity(uidSelector(os.Geteuid()), f.ca.identity(t, "e1", "/workload"))
	cmd, c := childConn(t, f)
	ctx := withHeader(testCtx(t))
	stream, err := c.FetchX509SVID(ctx, &workloadpb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := stream.Recv(); err != nil || len(resp.Svids) != 1 {
		t.Fatalf("live child: %v", err)
	}

	// Kill the child and do not reap it.
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the child to be a zombie", func() bool { return procState(cmd.Process.Pid) == "Z" })

	s2, err := c.FetchX509SVID(ctx, &workloadpb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := s2.Recv()
	if resp != nil {
		t.Fatal("a zombie caller got an SVID")
	}
	wantCode(t, err, codes.PermissionDenied, "caller process exited or was replaced during attestation")
	if st := procState(cmd.Process.Pid); st != "Z" {
		t.Fatalf("the child is in state %q, not a zombie, after the call", st)
	}
}

// TestCallerEffectiveUIDChangedSinceConnect: a process that connected as
// root and then changed only its effective uid (its real uid is still
// root) gets nothing more: the credentials checked on each call are the
// effective ones of the very process that connected, read from its
// pidfd.
// It needs root to change uid.
func TestCallerEffectiveUIDChangedSinceConnect(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("changing a process's effective uid needs root")
	}
	f := start(t, func(s *Server) { s.staleGrace = time.Hour })
	f.cache.SetIdentity(uidSelector(0), f.ca.identity(t, "e1", "/workload"))
	cmd, c := childConn(t, f)
	ctx := withHeader(testCtx(t))
	stream, err := c.FetchX509SVID(ctx, &workloadpb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := stream.Recv(); err != nil || len(resp.Svids) != 1 {
		t.Fatalf("before the uid change: %v", err)
	}

	if err := cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the child's effective uid to change", func() bool {
		st, err := procfs.ReadStatus("/proc/" + itoa(cmd.Process.Pid) + "/status")
		return err == nil && st.EUID == 65534
	})

	s2, err := c.FetchX509SVID(ctx, &workloadpb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := s2.Recv()
	if resp != nil {
		t.Fatal("a caller whose effective uid changed got an SVID")
	}
	wantCode(t, err, codes.PermissionDenied, "caller process changed its user or group since it connected; reconnect")

	// The stream opened before the change: a rotation is not delivered.
	f.cache.SetIdentity(uidSelector(0), f.ca.identity(t, "e1", "/workload"))
	if resp, err = stream.Recv(); resp != nil {
		t.Fatal("the open stream delivered a rotated SVID after the uid change")
	}
	wantCode(t, err, codes.PermissionDenied, "caller process changed its user or group since it connected; reconnect")
}

// pinned returns a PeerInfo pinned to process pid as a handshake pins
// it, without a connection.
func pinned(t testing.TB, pid int) *PeerInfo {
	t.Helper()
	dir := "/proc/" + itoa(pid)
	p := &PeerInfo{PID: int32(pid), pidfd: -1, exePath: dir + "/exe", statPath: dir + "/stat"}
	t.Cleanup(p.close)
	var err error
	if p.pidfd, err = unix.PidfdOpen(pid, 0); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestProcReadsFollowTheProcess: the reads behind each check answer for
// the pinned process (its effective ids from its pidfd, its executable
// and start time as /proc shows them) and fail once it is gone.
func TestProcReadsFollowTheProcess(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(sleep, "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	pid := cmd.Process.Pid
	waitFor(t, "the child to run sleep", func() bool {
		got, _ := os.Readlink("/proc/" + itoa(pid) + "/exe")
		want, _ := os.Readlink("/proc/self/exe")
		return got != "" && got != want
	})
	p := pinned(t, pid)

	st, err := procStatus(p)
	if err != nil {
		t.Fatal(err)
	}
	want, err := procfs.ReadStatus("/proc/" + itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	if st.EUID != want.EUID || st.EGID != want.EGID {
		t.Fatalf("procStatus: euid %d egid %d, /proc says %d %d", st.EUID, st.EGID, want.EUID, want.EGID)
	}
	if fst, err := procStatusFile(p); err != nil || fst.EUID != want.EUID || fst.EGID != want.EGID {
		t.Fatalf("procStatusFile: %+v, %v; want euid %d egid %d", fst, err, want.EUID, want.EGID)
	}
	exe, err := procExe(p)
	if err != nil {
		t.Fatal(err)
	}
	var fi syscall.Stat_t
	if err := syscall.Stat("/proc/"+itoa(pid)+"/exe", &fi); err != nil {
		t.Fatal(err)
	}
	if exe.errno != 0 || exe.ino != fi.Ino || exe.dev != fi.Dev || exe.size != fi.Size {
		t.Fatalf("procExe: %+v; /proc says dev %d ino %d size %d", exe, fi.Dev, fi.Ino, fi.Size)
	}
	self, err := procExe(pinned(t, os.Getpid()))
	if err != nil || self == exe {
		t.Fatalf("procExe of this process: %+v, %v; the same as sleep's", self, err)
	}
	start, err := procStartTime(p)
	if err != nil {
		t.Fatal(err)
	}
	if byPid, err := pidStartTime(int32(pid)); err != nil || byPid != start {
		t.Fatalf("procStartTime %d; by pid %d, %v", start, byPid, err)
	}

	// Exited, not yet reaped: the start time check refuses a zombie.
	_ = cmd.Process.Signal(syscall.SIGKILL)
	waitFor(t, "the child to be a zombie", func() bool { return procState(pid) == "Z" })
	if _, err := procStartTime(p); err == nil {
		t.Fatal("procStartTime of a zombie: no error")
	}
	// Reaped: every read fails or finds nothing (the pid is not reused
	// this soon), and the pidfd says the process is gone.
	_ = cmd.Wait()
	if _, err := procStartTime(p); err == nil {
		t.Fatal("procStartTime of a reaped process: no error")
	}
	if _, err := procStatus(p); err == nil {
		t.Fatal("procStatus of a reaped process: no error")
	}
	if _, err := procStatusFile(p); err == nil {
		t.Fatal("procStatusFile of a reaped process: no error")
	}
	if e, err := procExe(p); err == nil && e.errno == 0 {
		t.Fatalf("procExe of a reaped process: %+v", e)
	}
	if err := p.alive(&procReader{startTime: procStartTime, exe: procExe, status: procStatus}); err == nil {
		t.Fatal("alive: a reaped process passed")
	}
}

// TestPinnedStartTime: the server's liveness check answers the start
// time /proc shows for the pinned process while it runs, and fails, with
// no read by pid, once it has exited: a zombie, then reaped.
func TestPinnedStartTime(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(sleep, "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	pid := cmd.Process.Pid
	p := pinned(t, pid)
	if p.startTime, err = procStartTime(p); err != nil {
		t.Fatal(err)
	}
	if p.exe, err = procExe(p); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		got, err := pinnedStartTime(p)
		if err != nil || got != p.startTime {
			t.Fatalf("pinnedStartTime of a live process = %d, %v; /proc says %d", got, err, p.startTime)
		}
	}
	if exited, err := pidfdExited(p.pidfd); err != nil || exited {
		t.Fatalf("pidfdExited of a live process = %v, %v", exited, err)
	}
	if err := p.alive(&procReader{startTime: pinnedStartTime, exe: procExe, status: procStatus}); err != nil {
		t.Fatalf("alive: %v", err)
	}

	_ = cmd.Process.Signal(syscall.SIGKILL)
	waitFor(t, "the child to be a zombie", func() bool { return procState(pid) == "Z" })
	if _, err := pinnedStartTime(p); err == nil || err.Error() != "process has exited" {
		t.Fatalf("pinnedStartTime of a zombie: %v", err)
	}
	if err := p.alive(&procReader{startTime: pinnedStartTime, exe: procExe, status: procStatus}); err == nil {
		t.Fatal("alive: a zombie passed")
	}
	_ = cmd.Wait()
	if _, err := pinnedStartTime(p); err == nil {
		t.Fatal("pinnedStartTime of a reaped process: no error")
	}

	// A descriptor that is not open is an error, not a live process.
	fd := p.pidfd
	p.close()
	if exited, err := pidfdExited(fd); err == nil {
		t.Fatalf("pidfdExited of a closed descriptor = %v, no error", exited)
	}
}

// TestAliveNoExecutableIsExit: a process that ran a program and has
// none now (its main thread has exited, as in the moment after SIGKILL
// before its last thread is gone, when the pidfd does not yet report the
// exit) is refused as gone, not as having exec'd another program.
func TestAliveNoExecutableIsExit(t *testing.T) {
	p := pinned(t, os.Getpid())
	var err error
	if p.startTime, err = procStartTime(p); err != nil {
		t.Fatal(err)
	}
	if p.exe, err = procExe(p); err != nil {
		t.Fatal(err)
	}
	r := procReader{startTime: pinnedStartTime, exe: procExe, status: procStatus}
	if err := p.alive(&r); err != nil {
		t.Fatalf("alive: %v", err)
	}
	r.exe = func(*PeerInfo) (exeID, error) { return exeID{errno: uintptr(unix.ENOENT)}, nil }
	err = p.alive(&r)
	if err == nil || errors.Is(err, errExecd) || !strings.Contains(err.Error(), "its main thread has exited") {
		t.Fatalf("alive with no executable: %v", err)
	}
	// Another executable is still an exec.
	r.exe = func(*PeerInfo) (exeID, error) { e := p.exe; e.ino++; return e, nil }
	if err := p.alive(&r); !errors.Is(err, errExecd) {
		t.Fatalf("alive with another executable: %v", err)
	}
}

// quickFunc is a quickAttestor whose quick answer is scripted.
type quickFunc struct {
	name   string
	quick  func() ([]*sigilv1.Selector, bool, error)
	attest func() ([]*sigilv1.Selector, error)
}

func (q quickFunc) Name() string { return q.name }
func (q quickFunc) Attest(context.Context, workload.Caller) ([]*sigilv1.Selector, error) {
	return q.attest()
}
func (q quickFunc) AttestQuick(workload.Caller) ([]*sigilv1.Selector, bool, error) {
	return q.quick()
}

// TestQuickAttestation: attestors that answer quickly are used inline;
// one that cannot makes every attestor run as usual (under the timeout),
// an error from a quick answer fails the call like an attestor's, and an
// attestor without a quick path is always run as usual.
func TestQuickAttestation(t *testing.T) {
	sel := func(v string) []*sigilv1.Selector { return []*sigilv1.Selector{{Type: "t", Value: v}} }
	f := start(t, nil)
	f.cache.SetIdentity([]*sigilv1.Selector{{Type: "t", Value: "quick"}, {Type: "t", Value: "b"}}, f.ca.identity(t, "e1", "/quick"))
	f.cache.SetIdentity([]*sigilv1.Selector{{Type: "t", Value: "slow"}, {Type: "t", Value: "b"}}, f.ca.identity(t, "e2", "/slow"))
	var slowRuns atomic.Int32
	a := quickFunc{name: "a",
		quick:  func() ([]*sigilv1.Selector, bool, error) { return sel("quick"), true, nil },
		attest: func() ([]*sigilv1.Selector, error) { slowRuns.Add(1); return sel("slow"), nil },
	}
	b := quickFunc{name: "b",
		quick:  func() ([]*sigilv1.Selector, bool, error) { return sel("b"), true, nil },
		attest: func() ([]*sigilv1.Selector, error) { return sel("b"), nil },
	}
	fetchID := func() (string, error) {
		svid, err := f.client(t).FetchX509SVID(testCtx(t))
		if err != nil {
			return "", err
		}
		return svid.ID.Path(), nil
	}

	f.server.attestors = []workload.Attestor{a, b}
	if id, err := fetchID(); err != nil || id != "/quick" || slowRuns.Load() != 0 {
		t.Fatalf("both quick: %q, %v, %d slow runs; want /quick from the quick answers", id, err, slowRuns.Load())
	}

	bNotNow := b
	bNotNow.quick = func() ([]*sigilv1.Selector, bool, error) { return nil, false, nil }
	f.server.attestors = []workload.Attestor{a, bNotNow}
	if id, err := fetchID(); err != nil || id != "/slow" || slowRuns.Load() != 1 {
		t.Fatalf("one cannot answer quickly: %q, %v, %d slow runs; want /slow from Attest", id, err, slowRuns.Load())
	}

	bFails := b
	bFails.quick = func() ([]*sigilv1.Selector, bool, error) { return nil, true, workload.ErrProcessGone }
	f.server.attestors = []workload.Attestor{a, bFails}
	_, err := fetchID()
	wantCode(t, err, codes.PermissionDenied, "caller process is gone")

	f.server.attestors = []workload.Attestor{a, funcAttestor{name: "plain", fn: func(context.Context, workload.Caller) ([]*sigilv1.Selector, error) {
		return sel("b"), nil
	}}}
	if id, err := fetchID(); err != nil || id != "/slow" || slowRuns.Load() != 2 {
		t.Fatalf("one without a quick path: %q, %v, %d slow runs; want /slow from Attest", id, err, slowRuns.Load())
	}
}

// frameCounter is a client connection that counts the HTTP/2 frames the
// server sends, by type, parsing their 9-byte headers as they are read.
type frameCounter struct {
	net.Conn
	mu      sync.Mutex
	hdr     []byte // partial frame header
	skip    int    // payload bytes of the current frame still to pass
	byType  map[byte]int
	pingAck int
}

func (c *frameCounter) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.mu.Lock()
	defer c.mu.Unlock()
	for p := b[:n]; len(p) > 0; {
		if c.skip > 0 {
			k := min(c.skip, len(p))
			c.skip -= k
			p = p[k:]
			continue
		}
		k := min(9-len(c.hdr), len(p))
		c.hdr = append(c.hdr, p[:k]...)
		p = p[k:]
		if len(c.hdr) == 9 {
			typ, flags := c.hdr[3], c.hdr[4]
			c.byType[typ]++
			if typ == 0x6 && flags&0x1 != 0 {
				c.pingAck++
			}
			c.skip = int(c.hdr[0])<<16 | int(c.hdr[1])<<8 | int(c.hdr[2])
			c.hdr = c.hdr[:0]
		}
	}
	return n, err
}

// frames returns how many frames of type typ the server sent so far.
// The connection's reader goroutine may still be counting.
func (c *frameCounter) frames(typ byte) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.byType[typ]
}

// pings returns how many PING frames (not acks) the server sent.
func (c *frameCounter) pings() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.byType[0x6] - c.pingAck
}

// countedFetches makes calls one-shot FetchX509SVID calls on one new
// connection to the server at sock, each answered with one SVID, and
// returns the counter of the frames the server sent on it (which saw at
// least one DATA frame per call).
func countedFetches(t *testing.T, sock string, ctx context.Context, calls int) *frameCounter {
	t.Helper()
	var dialed atomic.Pointer[frameCounter]
	cc, err := grpc.NewClient("passthrough:///counted",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			conn, err := (&net.Dialer{}).DialContext(ctx, "unix", sock)
			if err != nil {
				return nil, err
			}
			counter := &frameCounter{Conn: conn, byType: make(map[byte]int)}
			dialed.Store(counter)
			return counter, nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := workloadpb.NewSpiffeWorkloadAPIClient(cc)
	for i := 0; i < calls; i++ {
		stream, err := c.FetchX509SVID(ctx, &workloadpb.X509SVIDRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if resp, err := stream.Recv(); err != nil || len(resp.Svids) != 1 {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	counter := dialed.Load()
	if counter == nil || counter.frames(0x0) < calls {
		t.Fatal("the counting connection saw fewer DATA frames than calls")
	}
	return counter
}

// TestNoFlowControlPingPerCall: the server sends no HTTP/2 PING (gRPC's
// bandwidth estimation) for the calls of a client: with dynamic windows it
// would send one, and handle its ack, for the request of nearly every
// fetch, two more frames each way per call.
func TestNoFlowControlPingPerCall(t *testing.T) {
	f := start(t, nil)
	f.cache.SetIdentity(uidSelector(os.Geteuid()), f.ca.identity(t, "e1", "/workload"))
	const calls = 20
	counter := countedFetches(t, f.sock, withHeader(testCtx(t)), calls)
	if n := counter.pings(); n != 0 {
		t.Fatalf("the server sent %d PINGs for %d calls", n, calls)
	}
}

// BenchmarkAlive is the per-call check that the caller is still the
// process that connected, on this (multi-threaded) process, with the
// server's liveness check (pinnedStartTime, one poll of the pidfd) and
// with the start time read by pid from /proc/<pid>/stat.
func BenchmarkAlive(b *testing.B) {
	for _, bc := range []struct {
		name      string
		startTime func(*PeerInfo) (uint64, error)
	}{
		{"pidfd", pinnedStartTime},
		{"procStat", procStartTime},
	} {
		b.Run(bc.name, func(b *testing.B) {
			p := pinned(b, os.Getpid())
			defer p.close()
			var err error
			if p.startTime, err = procStartTime(p); err != nil {
				b.Fatal(err)
			}
			if p.exe, err = procExe(p); err != nil {
				b.Fatal(err)
			}
			r := procReader{startTime: bc.startTime, exe: procExe, status: procStatus}
			b.ReportAllocs()
			for b.Loop() {
				if err := p.alive(&r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
