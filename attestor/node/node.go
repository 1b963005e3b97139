// Package node defines node attestation: the Verifier plugins a server uses
// to check the platform evidence an agent sends, and the Attestor plugins
// an agent uses to produce it. Each attestor lives in a subpackage with both
// halves (for example attestor/node/jointoken) and is selected by Name.
package node

import (
	"context"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// Verifier is the server half of a node attestor: it checks evidence an
// agent sent.
type Verifier interface {
	// Name is the attestor name; it appears in the agent's SPIFFE ID.
	Name() string
	// Verify checks payload and, if it proves the agent's node, returns who
	// the node is. Errors must not echo secrets from the payload.
	Verify(ctx context.Context, payload []byte) (*Result, error)
}

// Result is what a Verifier learned about an attested node.
type Result struct {
	// ID is the attestor-specific agent id; the agent's SPIFFE ID is
	// spiffe://<td>/sigil/agent/<Name()>/<ID>.
	ID string
	// Selectors are the node's selectors.
	Selectors []*sigilv1.Selector
	// ConsumeJoinTokenHash, if set, is a single-use credential the server
	// must consume atomically (through Raft) as part of recording the
	// attestation.
	ConsumeJoinTokenHash string
}

// Attestor is the agent half: it produces evidence.
type Attestor interface {
	// Name is the attestor name, matching the server's Verifier.
	Name() string
	// Payload returns the evidence to send to the server.
	Payload(ctx context.Context) ([]byte, error)
}
