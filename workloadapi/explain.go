package workloadapi

import (
	"context"

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

// AttestEach runs every configured attestor on caller, as the Workload
// API does for a connection, and returns each one's selectors or error in
// configuration order. It is for diagnosis (the agent's admin API): unlike
// a Workload API call it does not stop at the first error and does not
// check the process against a connection, since there is none.
func (s *Server) AttestEach(ctx context.Context, caller workload.Caller) []AttestorResult {
	out := make([]AttestorResult, 0, len(s.attestors))
	for _, a := range s.attestors {
		sels, err := a.Attest(ctx, caller)
		if err != nil {
			sels = nil
		}
		out = append(out, AttestorResult{Name: a.Name(), Selectors: sels, Err: err})
	}
	return out
}
