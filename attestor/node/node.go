// Package node defines node attestation: the Verifier plugins a server uses
// to check the platform evidence an agent sends, and the Attestor plugins
// an agent uses to produce it. Each attestor lives in a subpackage with both
// halves (for example attestor/node/jointoken) and is selected by Name.
package node

import (
	"context"
	"errors"
	"time"

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
	// attestation. The Verifier has already found it unconsumed and
	// unexpired in the local State; the consumption in Raft is what keeps
	// concurrent uses of one credential from both succeeding.
	ConsumeJoinTokenHash string
}

// State is the server's local, read-only view of the replicated
// attestation state. A Verifier checks the evidence against it before the
// server signs or writes anything, so that an unauthenticated caller costs
// one local lookup and no signature or Raft write.
type State interface {
	// JoinTokenExpiry returns when the unconsumed join token with this
	// SHA-256 hash (lowercase hex) expires. It returns an error wrapping
	// ErrNotFound if no such token exists (never issued, already used or
	// already removed after expiry).
	JoinTokenExpiry(ctx context.Context, hash string) (time.Time, error)
}

// ErrNotFound is wrapped by State errors about a credential that does not
// exist.
var ErrNotFound = errors.New("node: credential not found")

// RefusedError is returned by a Verifier for well-formed evidence that is
// not valid now (unknown, already used, expired). The server answers every
// such case with Public alone, the same text whatever the reason, so that
// a caller learns nothing that helps guessing; Reason goes to the server's
// log only.
type RefusedError struct {
	// Public is what the caller is told.
	Public string
	// Reason is the precise reason, for the server's log.
	Reason string
}

func (e *RefusedError) Error() string { return e.Public + " (" + e.Reason + ")" }

// Attestor is the agent half: it produces evidence.
type Attestor interface {
	// Name is the attestor name, matching the server's Verifier.
	Name() string
	// Payload returns the evidence to send to the server.
	Payload(ctx context.Context) ([]byte, error)
}
