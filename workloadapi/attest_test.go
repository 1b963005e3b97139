package workloadapi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc/codes"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/workload"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/eventually"
)

// funcAttestor is a test attestor running fn.
type funcAttestor struct {
	name string
	fn   func(context.Context, workload.Caller) ([]*sigilv1.Selector, error)
}

func (a funcAttestor) Name() string { return a.name }
func (a funcAttestor) Attest(ctx context.Context, c workload.Caller) ([]*sigilv1.Selector, error) {
	return a.fn(ctx, c)
}

// signalDone wraps a so that done is closed when its first run returns.
func signalDone(a workload.Attestor, done chan struct{}) funcAttestor {
	var once sync.Once
	return funcAttestor{name: a.Name(), fn: func(ctx context.Context, c workload.Caller) ([]*sigilv1.Selector, error) {
		defer once.Do(func() { close(done) })
		return a.Attest(ctx, c)
	}}
}

// hangingAttestor blocks until its context is done, reporting that it
// started and that its context was canceled.
func hangingAttestor(started, canceled chan struct{}) funcAttestor {
	return funcAttestor{name: "hanging", fn: func(ctx context.Context, _ workload.Caller) ([]*sigilv1.Selector, error) {
		close(started)
		<-ctx.Done()
		close(canceled)
		return nil, ctx.Err()
	}}
}

// TestHangingAttestorTimesOut: an attestor that never answers is cut off
// when the bound passes on the server's clock; its context is canceled
// and the caller, although the unix attestor's selectors match an entry,
// gets no identity.
func TestHangingAttestorTimesOut(t *testing.T) {
	fake := clock.NewFake(time.Now())
	started, canceled := make(chan struct{}), make(chan struct{})
	core, logs := observer.New(zap.InfoLevel)
	unixDone := make(chan struct{})
	f := start(t, func(s *Server) {
		s.attestors[0] = signalDone(s.attestors[0], unixDone)
		s.log = zap.New(core)
		s.clk = fake
		s.attestorTimeout = 5 * time.Second
		s.attestors = append(s.attestors, hangingAttestor(started, canceled))
	})
	f.cache.SetIdentity(uidSelector(os.Geteuid()), f.ca.identity(t, "e1", "/workload"))
	errCh := make(chan error, 1)
	go func() {
		_, err := f.client(t).FetchX509SVID(testCtx(t))
		errCh <- err
	}()
	<-started
	<-unixDone
	eventually.NoError(t, 10*time.Second, func() error {
		if fake.Waiters() == 0 {
			return errors.New("the server is not waiting on the attestor bound yet")
		}
		return nil
	})
	select {
	case err := <-errCh:
		t.Fatalf("call returned before the bound: %v", err)
	default:
	}
	fake.Add(5 * time.Second)
	select {
	case <-canceled:
	case <-time.After(10 * time.Second):
		t.Fatal("the hanging attestor's context was not canceled")
	}
	wantCode(t, <-errCh, codes.Unavailable, "workload attestation timed out")
	wantFailureLog(t, logs, "hanging", true)
}

// wantFailureLog checks that the one log line about a failed attestation
// names the attestor (among others that timed out too), the caller's pid
// and whether it timed out.
func wantFailureLog(t *testing.T, logs *observer.ObservedLogs, attestor string, timedOut bool) {
	t.Helper()
	lines := logs.FilterMessage("workload attestation failed; no identity for the caller").All()
	if len(lines) != 1 {
		t.Fatalf("%d attestation failure log lines, want 1", len(lines))
	}
	fields := lines[0].ContextMap()
	if !slices.Contains(strings.Split(fmt.Sprint(fields["attestor"]), ","), attestor) || fields["pid"] != int32(os.Getpid()) || fields["timed_out"] != timedOut {
		t.Errorf("log fields %v, want attestor %q, pid %d, timed_out %v", fields, attestor, os.Getpid(), timedOut)
	}
}

// TestHangingAttestorBound: with the wall clock, a hanging attestor delays the caller by about the bound, not
// more (checked loosely: within ten times the bound).
func TestHangingAttestorBound(t *testing.T) {
	const bound = 300 * time.Millisecond
	started, canceled := make(chan struct{}), make(chan struct{})
	f := start(t, func(s *Server) {
		s.attestorTimeout = bound
		s.attestors = append(s.attestors, hangingAttestor(started, canceled))
	})
	f.cache.SetIdentity(uidSelector(os.Geteuid()), f.ca.identity(t, "e1", "/workload"))
	c := f.rawClient(t)
	begin := time.Now()
	stream, err := c.FetchX509SVID(withHeader(testCtx(t)), &workloadpb.X509SVIDRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	elapsed := time.Since(begin)
	wantCode(t, err, codes.Unavailable, "workload attestation timed out")
	if elapsed < bound {
		t.Errorf("the call returned after %v, before the bound %v", elapsed, bound)
	}
	if elapsed > 10*bound {
		t.Errorf("the call took %v, more than ten times the bound %v", elapsed, bound)
	}
	<-canceled
}

// TestOneFailingAttestorFailsClosed: the other attestors' selectors match
// an entry, one attestor fails after they answered: no identity.
func TestOneFailingAttestorFailsClosed(t *testing.T) {
	answered := make(chan struct{})
	core, logs := observer.New(zap.InfoLevel)
	f := start(t, func(s *Server) {
		s.log = zap.New(core)
		s.attestors = append(s.attestors,
			funcAttestor{name: "good", fn: func(context.Context, workload.Caller) ([]*sigilv1.Selector, error) {
				defer close(answered)
				return []*sigilv1.Selector{{Type: "test", Value: "good"}}, nil
			}},
			funcAttestor{name: "bad", fn: func(ctx context.Context, _ workload.Caller) ([]*sigilv1.Selector, error) {
				<-answered
				return nil, errors.New("kubelet unreachable")
			}})
	})
	f.cache.SetIdentity(append(uidSelector(os.Geteuid()), &sigilv1.Selector{Type: "test", Value: "good"}),
		f.ca.identity(t, "e1", "/workload"))
	_, err := f.client(t).FetchX509SVID(testCtx(t))
	wantCode(t, err, codes.Internal, "workload attestation failed")
	wantFailureLog(t, logs, "bad", false)
}

// TestAttestorsRunConcurrently: each of two attestors waits for the other
// to have started, which only concurrent runs can satisfy (sequential ones
// would time out); the selectors come in the configured order although
// the second attestor answers first.
func TestAttestorsRunConcurrently(t *testing.T) {
	aStarted, bStarted, bDone := make(chan struct{}), make(chan struct{}), make(chan struct{})
	wait := func(ctx context.Context, ch chan struct{}) error {
		select {
		case <-ch:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	s, err := New(Config{
		Cache: NewMemoryCache(),
		Attestors: []workload.Attestor{
			funcAttestor{name: "a", fn: func(ctx context.Context, _ workload.Caller) ([]*sigilv1.Selector, error) {
				close(aStarted)
				if err := wait(ctx, bStarted); err != nil {
					return nil, err
				}
				if err := wait(ctx, bDone); err != nil {
					return nil, err
				}
				return []*sigilv1.Selector{{Type: "a", Value: "1"}, {Type: "a", Value: "2"}}, nil
			}},
			funcAttestor{name: "b", fn: func(ctx context.Context, _ workload.Caller) ([]*sigilv1.Selector, error) {
				close(bStarted)
				defer close(bDone)
				if err := wait(ctx, aStarted); err != nil {
					return nil, err
				}
				return []*sigilv1.Selector{{Type: "b", Value: "1"}}, nil
			}},
		},
		// Run one after the other, the first would wait for the second
		// until this bound passes, and fail.
		AttestorTimeout: 10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	sels, err := s.runAttestors(testCtx(t), workload.Caller{PID: 1})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, sel := range sels {
		got = append(got, sel.Type+":"+sel.Value)
	}
	if want := "[a:1 a:2 b:1]"; fmt.Sprint(got) != want {
		t.Fatalf("selectors %v, want %s", got, want)
	}
}

// TestCallerExitsWhileAttestorIsSlow: the unix attestor has answered, a
// slow attestor (a kubelet being asked) is still working when the caller
// exits and is reaped, so its pid is free for reuse; the caller gets
// nothing although every attestor answered with matching selectors.
func TestCallerExitsWhileAttestorIsSlow(t *testing.T) {
	var child atomic.Pointer[exec.Cmd]
	isChild := func(c workload.Caller) bool {
		cmd := child.Load()
		return cmd != nil && int32(cmd.Process.Pid) == c.PID
	}
	unixDone := make(chan struct{})
	f := start(t, func(s *Server) {
		unixAttestor := s.attestors[0]
		s.attestors[0] = funcAttestor{name: "unix", fn: func(ctx context.Context, c workload.Caller) ([]*sigilv1.Selector, error) {
			sels, err := unixAttestor.Attest(ctx, c)
			if isChild(c) {
				close(unixDone)
			}
			return sels, err
		}}
		s.attestors = append(s.attestors, funcAttestor{name: "slow", fn: func(_ context.Context, c workload.Caller) ([]*sigilv1.Selector, error) {
			if cmd := child.Load(); isChild(c) {
				<-unixDone // the unix attestor has vouched for the live child
				_ = cmd.Process.Kill()
				_ = cmd.Wait() // reaped: the pid is free for reuse
			}
			return []*sigilv1.Selector{{Type: "test", Value: "slow"}}, nil
		}})
	})
	f.cache.SetIdentity(append(uidSelector(os.Geteuid()), &sigilv1.Selector{Type: "test", Value: "slow"}),
		f.ca.identity(t, "e1", "/workload"))
	cmd, c := childConn(t, f)
	child.Store(cmd)
	stream, err := c.FetchX509SVID(withHeader(testCtx(t)), &workloadpb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if resp != nil {
		t.Fatal("a caller that exited during attestation got an SVID")
	}
	wantCode(t, err, codes.PermissionDenied, "caller process exited or was replaced during attestation")
	if cmd.ProcessState == nil {
		t.Fatal("the slow attestor did not end the child")
	}
}

// TestNoIdentityLogsSelectors: a caller refused an identity gets the
// standard answer, and the agent's log says which selectors it had, once
// however often it asks.
func TestNoIdentityLogsSelectors(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	f := start(t, func(s *Server) { s.log = zap.New(core) })
	// An entry the test process does not match.
	f.cache.SetIdentity([]*sigilv1.Selector{{Type: "unix", Value: "uid:424242"}}, f.ca.identity(t, "e1", "/other"))
	c := f.client(t)
	for range 10 {
		_, err := c.FetchX509SVID(testCtx(t))
		wantCode(t, err, codes.PermissionDenied, "no identity issued")
	}
	lines := logs.FilterMessage("no identity for the caller: no registration entry matches its selectors").All()
	if len(lines) != 1 {
		t.Fatalf("%d log lines for 10 refusals of one process, want 1", len(lines))
	}
	fields := lines[0].ContextMap()
	if fields["pid"] != int32(os.Getpid()) || fields["uid"] != uint32(os.Geteuid()) {
		t.Errorf("log fields %v, want pid %d uid %d", fields, os.Getpid(), os.Geteuid())
	}
	sels, _ := fields["selectors"].([]any)
	want := "unix:uid:" + strconv.Itoa(os.Geteuid())
	found := false
	for _, s := range sels {
		if s == want {
			found = true
		}
	}
	if !found {
		t.Errorf("logged selectors %v lack %s", fields["selectors"], want)
	}
}

func TestLogLimiter(t *testing.T) {
	fake := clock.NewFake(time.Now())
	l := newLogLimiter(fake)
	if ok, _ := l.allow(1000, 1); !ok {
		t.Fatal("first refusal not logged")
	}
	if ok, _ := l.allow(1000, 1); ok {
		t.Fatal("same pid logged twice in one window")
	}
	// The next line of the uid counts the refusals not logged before it.
	if ok, suppressed := l.allow(1000, 2); !ok || suppressed != 1 {
		t.Fatalf("pid 2: logged %v, suppressed %d; want true, 1", ok, suppressed)
	}
	for pid := int32(3); pid <= denialLogsPerUID; pid++ {
		if ok, suppressed := l.allow(1000, pid); !ok || suppressed != 0 {
			t.Fatalf("pid %d: logged %v, suppressed %d; want true, 0", pid, ok, suppressed)
		}
	}
	if ok, _ := l.allow(1000, 99); ok {
		t.Fatal("more than denialLogsPerUID lines for one uid in one window")
	}
	if ok, _ := l.allow(2000, 99); !ok {
		t.Fatal("another uid is limited by the first one's lines")
	}
	if ok, _ := l.allow(1000, 100); ok {
		t.Fatal("more than denialLogsPerUID lines for one uid in one window")
	}
	fake.Add(denialLogWindow)
	ok, suppressed := l.allow(1000, 1)
	if !ok || suppressed != 2 {
		t.Fatalf("next window: logged %v, suppressed %d; want true, 2", ok, suppressed)
	}
}

func TestNewRefusesNegativeAttestorTimeout(t *testing.T) {
	_, err := New(Config{Cache: NewMemoryCache(), Attestors: []workload.Attestor{hangingAttestor(nil, nil)}, AttestorTimeout: -time.Second})
	if err == nil {
		t.Fatal("negative AttestorTimeout: no error")
	}
	s, err := New(Config{Cache: NewMemoryCache(), Attestors: []workload.Attestor{hangingAttestor(nil, nil)}})
	if err != nil || s.attestorTimeout != DefaultAttestorTimeout {
		t.Fatalf("zero AttestorTimeout: %v, %v", s, err)
	}
	s, err = New(Config{Cache: NewMemoryCache(), Attestors: []workload.Attestor{hangingAttestor(nil, nil)}, AttestorTimeout: time.Second})
	if err != nil || s.attestorTimeout != time.Second {
		t.Fatalf("AttestorTimeout 1s: %v, %v", s, err)
	}
}

// BenchmarkRunAttestors measures what running the attestors concurrently
// under a bound costs over calling them in turn: one and three attestors
// that answer at once.
func BenchmarkRunAttestors(b *testing.B) {
	instant := funcAttestor{name: "instant", fn: func(context.Context, workload.Caller) ([]*sigilv1.Selector, error) {
		return []*sigilv1.Selector{{Type: "t", Value: "v"}}, nil
	}}
	for _, n := range []int{1, 3} {
		attestors := make([]workload.Attestor, n)
		for i := range attestors {
			attestors[i] = instant
		}
		s, err := New(Config{Cache: NewMemoryCache(), Attestors: attestors})
		if err != nil {
			b.Fatal(err)
		}
		ctx := context.Background()
		b.Run(fmt.Sprintf("concurrent-%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.runAttestors(ctx, workload.Caller{PID: 1}); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("sequential-%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				var sels []*sigilv1.Selector
				for _, a := range attestors {
					got, err := a.Attest(ctx, workload.Caller{PID: 1})
					if err != nil {
						b.Fatal(err)
					}
					sels = append(sels, got...)
				}
			}
		})
	}
}
