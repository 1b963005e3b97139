package workloadapi

import (
	"context"
	"errors"
	"testing"
	"time"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/workload"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/eventually"
)

type callerAttestor struct{}

func (callerAttestor) Name() string { return "caller" }
func (callerAttestor) Attest(_ context.Context, c workload.Caller) ([]*sigilv1.Selector, error) {
	if c.PID != 42 || c.UID != 1000 {
		return nil, errors.New("wrong caller")
	}
	return []*sigilv1.Selector{{Type: "unix", Value: "uid:1000"}}, nil
}

// stuckAttestor ignores its context and answers when release is closed.
type stuckAttestor struct{ release chan struct{} }

func (stuckAttestor) Name() string { return "stuck" }
func (a stuckAttestor) Attest(context.Context, workload.Caller) ([]*sigilv1.Selector, error) {
	<-a.release
	return []*sigilv1.Selector{{Type: "unix", Value: "uid:0"}}, nil
}

func TestAttestEach(t *testing.T) {
	broken := errors.New("platform unreachable")
	s, err := New(Config{Cache: NewMemoryCache(), Attestors: []workload.Attestor{failingAttestor{broken}, callerAttestor{}}})
	if err != nil {
		t.Fatal(err)
	}
	got := s.AttestEach(context.Background(), workload.Caller{PID: 42, UID: 1000})
	if len(got) != 2 {
		t.Fatalf("%d results, want 2", len(got))
	}
	// In configuration order; a failure does not hide the others.
	if got[0].Name != "failing" || !errors.Is(got[0].Err, broken) || got[0].Selectors != nil {
		t.Errorf("first result %+v, want the failing attestor's error", got[0])
	}
	if got[1].Name != "caller" || got[1].Err != nil || len(got[1].Selectors) != 1 || got[1].Selectors[0].GetValue() != "uid:1000" {
		t.Errorf("second result %+v, want unix:uid:1000", got[1])
	}

	// An attestor that ignores its context is reported as without an
	// answer once the context is done.
	release := make(chan struct{})
	defer close(release)
	s, err = New(Config{Cache: NewMemoryCache(), Attestors: []workload.Attestor{stuckAttestor{release}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	got = s.AttestEach(ctx, workload.Caller{PID: 42})
	if len(got) != 1 || got[0].Name != "stuck" || !errors.Is(got[0].Err, context.Canceled) {
		t.Errorf("stuck attestor: %+v, want context.Canceled", got)
	}
}

// AttestEach bounds each attestor like the Workload API does
// (Config.AttestorTimeout): a hanging attestor is reported without an
// answer once the bound passes on the server's clock.
func TestAttestEachBounded(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	fake := clock.NewFake(time.Now())
	s, err := New(Config{Cache: NewMemoryCache(), Clock: fake, AttestorTimeout: time.Second,
		Attestors: []workload.Attestor{stuckAttestor{release}, callerAttestor{}}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan []AttestorResult, 1)
	go func() { done <- s.AttestEach(context.Background(), workload.Caller{PID: 42, UID: 1000}) }()
	eventually.True(t, 10*time.Second, func() bool { return fake.Waiters() > 0 }, "AttestEach started no timer")
	fake.Add(time.Second)
	select {
	case got := <-done:
		if len(got) != 2 || got[0].Err == nil || got[1].Err != nil {
			t.Fatalf("results %+v, want the stuck attestor without an answer and the other's selectors", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("AttestEach did not return after the bound")
	}
}
