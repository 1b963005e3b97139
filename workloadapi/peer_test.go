package workloadapi

import (
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc/codes"

	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/eventually"
	"github.com/sigil-id/sigil/internal/procfs"
)

// waitFor polls cond every few milliseconds until it holds or the bound
// passes; it is a wait for something another process does, not a timing
// assertion.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	eventually.True(t, 10*time.Second, cond, "waiting for %s", what)
}

// TestCallerExecdSinceConnect: a process that connects and then executes
// another program gets nothing more on that connection, neither from a
// new call nor on a stream it opened before (the next rotation ends the
// stream instead of delivering the new SVID). This is the attack of a
// process that connects, hands the connection to a child and executes a
// program whose identity it wants.
func TestCallerExecdSinceConnect(t *testing.T) {
	sleep, err := filepath.EvalSymlinks("/bin/sleep")
	if err != nil {
		t.Skip("no /bin/sleep to execute:", err)
	}
	t.Setenv(childExecEnv, sleep)
	// Keep the refused connection open for the whole test, to check
	// both a new call and the open stream on it.
	f := start(t, func(s *Server) { s.staleGrace = time.Hour })
	f.cache.SetIdentity(uidSelector(os.Geteuid()), f.ca.identity(t, "e1", "/workload"))
	cmd, c := childConn(t, f)
	ctx := withHeader(testCtx(t))

	stream, err := c.FetchX509SVID(ctx, &workloadpb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := stream.Recv(); err != nil || len(resp.Svids) != 1 {
		t.Fatalf("before exec: %v", err)
	}

	if err := cmd.Process.Signal(sigUSR1); err != nil {
		t.Fatal(err)
	}
	exe := "/proc/" + itoa(cmd.Process.Pid) + "/exe"
	waitFor(t, "the child to execute "+sleep, func() bool {
		got, _ := os.Readlink(exe)
		return got == sleep
	})

	// A new call on the connection.
	s2, err := c.FetchX509SVID(ctx, &workloadpb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := s2.Recv()
	if resp != nil {
		t.Fatal("a caller that executed another program got an SVID")
	}
	wantCode(t, err, codes.PermissionDenied, "caller process runs another program than when it connected; reconnect")

	// The stream opened before the exec: a rotation is not delivered.
	f.cache.SetIdentity(uidSelector(os.Geteuid()), f.ca.identity(t, "e1", "/workload"))
	resp, err = stream.Recv()
	if resp != nil {
		t.Fatal("the open stream delivered a rotated SVID after the exec")
	}
	wantCode(t, err, codes.PermissionDenied, "caller process runs another program than when it connected; reconnect")
}

// TestCallerCredsChangedSinceConnect: a process whose effective uid is
// not the one it connected with (it called setuid, or executed a
// set-user-ID program) gets nothing; so does one whose credentials had
// already changed when the agent accepted the connection.
func TestCallerCredsChangedSinceConnect(t *testing.T) {
	var changed atomic.Bool
	f := start(t, func(s *Server) {
		s.staleGrace = time.Millisecond
		s.proc.status = func(p *PeerInfo) (procfs.Status, error) {
			st, err := procStatus(p)
			if changed.Load() {
				st.EUID++
			}
			return st, err
		}
	})
	f.cache.SetIdentity(uidSelector(os.Geteuid()), f.ca.identity(t, "e1", "/workload"))
	c := f.rawClient(t)
	ctx := withHeader(testCtx(t))
	stream, err := c.FetchX509SVID(ctx, &workloadpb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatalf("unchanged caller: %v", err)
	}
	changed.Store(true)
	s2, err := c.FetchX509SVID(ctx, &workloadpb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := s2.Recv()
	if resp != nil {
		t.Fatal("a caller whose uid changed got an SVID")
	}
	wantCode(t, err, codes.PermissionDenied, "caller process changed its user or group since it connected; reconnect")

	// The refused connection is closed, so that the client reconnects
	// and is attested afresh; here the new connection is refused at
	// accept, as the next paragraph shows.
	waitFor(t, "the refused connection to be closed", func() bool { n, _ := f.server.conns.open(uint32(os.Geteuid())); return n == 0 })

	// A new connection from a process whose credentials differ from
	// its connect-time ones already at accept is refused outright.
	_, err = f.client(t).FetchX509SVID(testCtx(t))
	if err == nil {
		t.Fatal("a connection whose caller's uid differs at accept got an SVID")
	}
}

// TestConnectionsPerUIDLimited: one user cannot hold more connections than
// the per-uid limit; a connection over it is closed at once, and a slot is
// given back when a connection closes.
func TestConnectionsPerUIDLimited(t *testing.T) {
	f := start(t, func(s *Server) { s.conns.limits.MaxConnsPerUID = 3 })
	uid := uint32(os.Geteuid())
	var held []net.Conn
	for i := 0; i < 3; i++ {
		c, err := net.Dial("unix", f.sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		held = append(held, c)
	}
	waitFor(t, "3 connections admitted", func() bool { n, _ := f.server.conns.open(uid); return n == 3 })

	over, err := net.Dial("unix", f.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer over.Close()
	over.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := over.Read(make([]byte, 64)); !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatal("the connection over the per-uid limit was not closed")
		}
	}
	if n, total := f.server.conns.open(uid); n != 3 || total != 3 {
		t.Fatalf("open connections %d (uid) %d (all), want 3 and 3", n, total)
	}

	held[0].Close()
	waitFor(t, "the closed connection's slot to be released", func() bool { n, _ := f.server.conns.open(uid); return n == 2 })
	f.cache.SetIdentity(uidSelector(os.Geteuid()), f.ca.identity(t, "e1", "/workload"))
	if _, err := f.client(t).FetchX509SVID(testCtx(t)); err != nil {
		t.Fatalf("a connection under the limit: %v", err)
	}
}

// TestFirstCallTimeout: a connection on which no call starts is closed
// after the first-call timeout; one that made a call is kept.
func TestFirstCallTimeout(t *testing.T) {
	clk := clock.NewFake(time.Now())
	f := start(t, func(s *Server) { s.conns.clk = clk })
	uid := uint32(os.Geteuid())
	f.cache.SetIdentity(uidSelector(os.Geteuid()), f.ca.identity(t, "e1", "/workload"))

	idle, err := net.Dial("unix", f.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	waitFor(t, "the idle connection admitted", func() bool { n, _ := f.server.conns.open(uid); return n == 1 })

	busy := f.rawClient(t)
	stream, err := busy.FetchX509SVID(withHeader(testCtx(t)), &workloadpb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "both connections' timers", func() bool { return clk.Waiters() >= 2 })
	clk.Add(DefaultFirstCallTimeout)

	idle.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, idle); err != nil {
		t.Fatalf("the connection without a call was not closed: %v", err)
	}
	waitFor(t, "one connection left", func() bool { n, _ := f.server.conns.open(uid); return n == 1 })
	f.cache.SetIdentity(uidSelector(os.Geteuid()), f.ca.identity(t, "e1", "/workload"))
	if _, err := stream.Recv(); err != nil {
		t.Fatalf("the connection with a call was closed: %v", err)
	}
}

// TestFirstCallWatchEndsWithTheConnection: a connection closed before
// the first-call timeout is not reported as refused when the timeout
// passes (its watch ended with it; before, it outlived the connection and
// logged a refusal, after the server and the test had stopped).
func TestFirstCallWatchEndsWithTheConnection(t *testing.T) {
	clk := clock.NewFake(time.Now())
	var mu sync.Mutex
	var refused []string
	f := start(t, func(s *Server) {
		s.conns.clk = clk
		prev := s.conns.onRefused
		s.conns.onRefused = func(uid uint32, reason string) {
			mu.Lock()
			refused = append(refused, reason)
			mu.Unlock()
			if prev != nil {
				prev(uid, reason)
			}
		}
	})
	uid := uint32(os.Geteuid())
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(refused)
	}

	gone, err := net.Dial("unix", f.sock)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the connection admitted", func() bool { n, _ := f.server.conns.open(uid); return n == 1 })
	gone.Close()
	waitFor(t, "the closed connection released", func() bool { n, _ := f.server.conns.open(uid); return n == 0 })
	clk.Add(DefaultFirstCallTimeout)

	// A second idle connection, refused at its timeout, is the barrier:
	// by then the first watch, had it still run, would have reported
	// its refusal too.
	idle, err := net.Dial("unix", f.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	waitFor(t, "the idle connection admitted", func() bool { n, _ := f.server.conns.open(uid); return n == 1 })
	waitFor(t, "the idle connection's timer", func() bool { return clk.Waiters() >= 1 })
	clk.Add(DefaultFirstCallTimeout)
	waitFor(t, "the idle connection refused", func() bool { return count() >= 1 })
	waitFor(t, "the idle connection closed", func() bool { n, _ := f.server.conns.open(uid); return n == 0 })
	if n := count(); n != 1 {
		t.Fatalf("%d refusals (%q), want 1: the closed connection was reported too", n, refused)
	}
}

var sigUSR1 = syscall.SIGUSR1

func itoa(n int) string { return strconv.Itoa(n) }
