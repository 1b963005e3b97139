package workloadapi

import (
	"context"
	"fmt"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/workload"
)

// AttestorResult is one configured attestor's answer about a process.
type AttestorResult struct {
	// Name is the attestor's name.
	Name string
	// Selectors are its selectors when Err is nil.
	Selectors []*sigilv1.Selector
	// Err is its error; the Workload API serves nothing to a process any
	// attestor fails on.
	Err error
}

// AttestEach runs every configured attestor on caller, all at once, and
// returns each one's selectors or error in configuration order. It is for
// diagnosis (the agent's admin API): unlike a Workload API call it does
// not stop at the first error and checks the process against no
// connection, since there is none. An attestor still running when ctx is
// done is reported with ctx's error; AttestEach does not wait for it.
func (s *Server) AttestEach(ctx context.Context, caller workload.Caller) []AttestorResult {
	type result struct {
		i    int
		sels []*sigilv1.Selector
		err  error
	}
	// Buffered for every attestor: one that answers after AttestEach
	// returned does not block its goroutine.
	// Each attestor has the Workload API's bound (Config.AttestorTimeout).
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-s.clk.After(s.attestorTimeout):
			cancel()
		case <-ctx.Done():
		}
	}()
	results := make(chan result, len(s.attestors))
	for i, a := range s.attestors {
		go func() {
			sels, err := a.Attest(ctx, caller)
			results <- result{i: i, sels: sels, err: err}
		}()
	}
	out := make([]AttestorResult, len(s.attestors))
	done := make([]bool, len(s.attestors))
	for range s.attestors {
		select {
		case r := <-results:
			if r.err != nil {
				r.sels = nil
			}
			out[r.i] = AttestorResult{Name: s.attestors[r.i].Name(), Selectors: r.sels, Err: r.err}
			done[r.i] = true
			continue
		case <-ctx.Done():
		}
		break
	}
	for i, d := range done {
		if !d {
			out[i] = AttestorResult{Name: s.attestors[i].Name(), Err: fmt.Errorf("no answer: %w", ctx.Err())}
		}
	}
	return out
}
