// Package nodetest holds the in-memory node.State and node.Exchange that
// the unit tests of the node attestors' server halves verify against (the
// server's own State is tested with the server), and the parsing of
// their plugin blocks.
package nodetest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"

	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/clock"
)

// State is an in-memory node.State on a fake clock: attested agents and
// use-once records. Tests set Agents and Err directly (not concurrently
// with a Verify).
type State struct {
	Clock *clock.Fake
	// Agents are the attested agents by attestor-local ID.
	Agents map[string]node.AgentRecord
	// Err, when set, is returned by Used and Agent (a store failure).
	Err error

	mu   sync.Mutex
	used map[node.Credential]bool
}

// NewState returns an empty State on clk.
func NewState(clk *clock.Fake) *State {
	return &State{Clock: clk, Agents: map[string]node.AgentRecord{}, used: map[node.Credential]bool{}}
}

// Now is the fake clock's time.
func (s *State) Now() time.Time { return s.Clock.Now() }

// CredentialExpiry knows no credential (join tokens are not tested here).
func (s *State) CredentialExpiry(context.Context, node.Credential) (time.Time, error) {
	return time.Time{}, node.ErrNotFound
}

// Used reports whether c was consumed by Record.
func (s *State) Used(_ context.Context, c node.Credential) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.Err != nil {
		return false, s.Err
	}
	return s.used[node.Credential{Kind: c.Kind, ID: c.ID}], nil
}

// Agent returns the record of the agent id, or node.ErrNotFound.
func (s *State) Agent(_ context.Context, id string) (node.AgentRecord, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.Err != nil {
		return node.AgentRecord{}, s.Err
	}
	r, ok := s.Agents[id]
	if !ok {
		return node.AgentRecord{}, node.ErrNotFound
	}
	return r, nil
}

// Record does what the server does with an accepted result: it records
// the agent (attested now, SVID for an hour) and consumes the
// credentials.
func (s *State) Record(res *node.Result) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.Clock.Now()
	s.Agents[res.ID] = node.AgentRecord{AttestedAt: now, SVIDExpiresAt: now.Add(time.Hour)}
	for _, c := range res.Consume {
		s.used[node.Credential{Kind: c.Kind, ID: c.ID}] = true
	}
}

// Payload is a node.Exchange carrying a payload, for verifiers that send
// no challenge: Challenge fails with node.ErrRoundsExhausted.
type Payload []byte

// Payload returns p.
func (p Payload) Payload() []byte { return p }

// Challenge fails: no challenge is expected.
func (Payload) Challenge(context.Context, []byte) ([]byte, error) {
	return nil, node.ErrRoundsExhausted
}

// ParseBody parses src as an HCL body (a plugin block's contents).
func ParseBody(t testing.TB, src string) hcl.Body {
	t.Helper()
	f, diags := hclsyntax.ParseConfig([]byte(src), "test.hcl", hcl.InitialPos)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	return f.Body
}
