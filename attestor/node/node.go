// Package node defines node attestation: the Verifier plugins a server uses
// to check the platform evidence an agent sends, and the Attestor plugins
// an agent uses to produce it. Each attestor lives in a subpackage with both
// halves (for example attestor/node/jointoken) and is selected by Name.
//
// An attestation is a conversation the server bounds: the agent sends its
// evidence (the payload); the verifier may send challenges, each of which
// the agent's Attestor answers (a round); the verifier then accepts the
// node (a Result) or refuses it. The server, not the plugin, enforces the
// number of rounds, the size of every message and the time the whole
// attestation may take (see Exchange). A verifier that needs no challenge
// reads the payload and answers at once, as the join token verifier does.
package node

import (
	"context"
	"errors"
	"time"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// Verifier is the server half of a node attestor: it checks evidence an
// agent sent. It is constructed from configuration, before the server
// exists, and holds no server state: what it needs of the server comes
// with each call. It must be safe for concurrent use (the server verifies
// many attestations at once).
//
// The contract of Verify:
//   - It reads the agent's evidence from ex.Payload and may send
//     challenges with ex.Challenge. If Challenge fails, Verify must refuse
//     (return the error, wrapped); the server refuses the attestation after
//     a failed Challenge whatever Verify returns.
//   - It returns a Result only for evidence that proves the node now: it
//     checks every signature, every expiry (against state.Now), every
//     freshness proof and, for a credential that works once, that the
//     credential is still unused (state.CredentialExpiry) and names it in
//     Result.Consume so that the server consumes it atomically.
//   - For well-formed evidence that is not valid now (unknown, already
//     used, expired, a wrong answer) it returns an error wrapping a
//     *RefusedError; for malformed evidence, any other error.
//   - No error may echo a secret of the evidence (a token, a key, an
//     answer): errors go to the server's log, and malformed-evidence
//     errors to the caller.
//   - It must return when ctx ends.
type Verifier interface {
	// Name is the attestor name; it appears in the agent's SPIFFE ID.
	Name() string
	// Verify runs one attestation (see the contract above).
	Verify(ctx context.Context, state State, ex Exchange) (*Result, error)
}

// Exchange is one attestation's conversation with the agent, as the
// server bounds it. It is not safe for concurrent use: a verifier sends
// one challenge at a time.
type Exchange interface {
	// Payload is the agent's evidence: the first message of the
	// attestation, at most the server's message size limit.
	Payload() []byte
	// Challenge sends challenge to the agent and returns its answer: one
	// round. It fails with an error wrapping ErrRoundsExhausted when the
	// verifier has used every round the server allows (none for agents
	// that call the unary Attest of the previous version), and with
	// another error when the challenge or the answer is over the
	// server's message size limit, when the agent sends something else
	// than an answer or goes away, or when the attestation's time is up
	// or ctx ends. Errors do not contain the answer.
	Challenge(ctx context.Context, challenge []byte) ([]byte, error)
}

// ErrRoundsExhausted is wrapped by Exchange.Challenge errors when the
// server allows no more challenge rounds in this attestation.
var ErrRoundsExhausted = errors.New("node: no more challenge rounds allowed in this attestation")

// Result is what a Verifier learned about an attested node.
type Result struct {
	// ID is the attestor-specific agent id; the agent's SPIFFE ID is
	// spiffe://<td>/sigil/agent/<Name()>/<ID>.
	ID string
	// Selectors are the node's selectors.
	Selectors []*sigilv1.Selector
	// Consume lists the single-use credentials the attestation spends.
	// The server consumes them atomically with recording the
	// attestation (one Raft command): the command is refused, and the
	// node not attested, if any of them is unknown, already consumed or
	// expired at the command's time. The Verifier has already found each
	// unconsumed and unexpired in State; the consumption in Raft is what
	// keeps concurrent uses of one credential (on one server or on
	// several) from both succeeding.
	Consume []Credential
	// FirstAttestation admits the node only if no agent with this ID is
	// attested (trust on first use, for evidence anyone on the node can
	// read and replay, such as an instance identity document). The
	// verifier has already found no such agent in State.Agent; the Raft
	// apply decides atomically, so that of two concurrent first
	// attestations (on one server or several) exactly one gets in. An
	// evicted agent has no record and may attest again.
	FirstAttestation bool
}

// Credential names a single-use credential: a record the servers keep in
// the replicated state until it is consumed or expires. Only the record's
// identifier travels, never the secret it stands for.
type Credential struct {
	// Kind is the kind of record. CredentialJoinToken names a pre-issued
	// record (created by an operator) that the attestation consumes.
	// Every other kind is a use-once record: the attestation records
	// that the credential was used, and a second attestation naming the
	// same Kind and ID before ExpiresAt is refused (State.Used tells a
	// verifier beforehand; the Raft apply decides atomically). A use-once
	// kind is the attestor's name, or its name, a colon and a word
	// ("oidc:jti"), so that attestors never share records.
	//
	// An attestor whose evidence is fresh by construction (a
	// challenge-response attestor: the server's random challenge lives
	// only in the Exchange of one attestation) needs no record and
	// consumes nothing. An attestor whose evidence may be replayed within
	// its validity (a signed token with a unique id) names it here.
	Kind string
	// ID identifies the record within its kind (for a join token, the
	// lowercase hex SHA-256 of the token; for a use-once record, an
	// identifier of the evidence, at most 256 bytes, such as a token's
	// jti; a secret must be hashed first).
	ID string
	// ExpiresAt is how long a use-once record is kept: until the evidence
	// it stands for expires (after that the evidence is refused anyway).
	// Required for use-once kinds, at most 24 hours after State.Now;
	// ignored for join tokens, whose records carry their own expiry.
	ExpiresAt time.Time
}

// CredentialJoinToken is the kind of a join token record: Credential.ID is
// the token's lowercase hex SHA-256, as an operator created it with
// `sigil token generate`.
const CredentialJoinToken = "join_token"

// State is the server's local, read-only view of the replicated
// attestation state, given to a Verifier with each attestation. A Verifier
// checks the evidence against it before the server signs or writes
// anything, so that an unauthenticated caller costs one local lookup and
// no signature or Raft write.
type State interface {
	// Now is the server's time; a Verifier checks expiries against it.
	Now() time.Time
	// CredentialExpiry returns when the unconsumed pre-issued credential
	// c (a join token) expires. It returns an error wrapping ErrNotFound
	// if no such credential exists (never issued, already consumed or
	// already removed after expiry).
	CredentialExpiry(ctx context.Context, c Credential) (time.Time, error)
	// Used reports whether the use-once credential c (Kind other than
	// CredentialJoinToken) was already used by an attestation whose
	// record has not expired.
	Used(ctx context.Context, c Credential) (bool, error)
	// Agent returns what the servers know of the agent that this
	// verifier's attestor names id (Result.ID): an attestor that admits a
	// node once (trust on first use: an instance identity document that
	// anyone on the instance can read) refuses an id that is already
	// attested and not evicted. It returns an error wrapping ErrNotFound
	// if no such agent is attested (never, or evicted).
	Agent(ctx context.Context, id string) (AgentRecord, error)
}

// AgentRecord is what the servers know of an attested agent.
type AgentRecord struct {
	// Banned: the agent may not attest again, whatever its evidence (the
	// server refuses it before recording anything).
	Banned bool
	// AttestedAt is when the agent was first attested.
	AttestedAt time.Time
	// SVIDExpiresAt is when the agent's current SVID expires.
	SVIDExpiresAt time.Time
}

// ErrNotFound is wrapped by State errors about a credential or an agent
// that does not exist.
var ErrNotFound = errors.New("node: credential not found")

// RefusedError is returned by a Verifier for well-formed evidence that is
// not valid now (unknown, already used, expired, a wrong answer to a
// challenge). The server answers every such case with Public alone, the
// same text whatever the reason, so that a caller learns nothing that
// helps guessing; Reason goes to the server's log only.
type RefusedError struct {
	// Public is what the caller is told.
	Public string
	// Reason is the precise reason, for the server's log.
	Reason string
}

func (e *RefusedError) Error() string { return e.Public + " (" + e.Reason + ")" }

// Attestor is the agent half: it produces evidence and answers the
// verifier's challenges. It is constructed from the agent's configuration.
type Attestor interface {
	// Name is the attestor name, matching the server's Verifier.
	Name() string
	// Payload returns the evidence to send to the server: the first
	// message of an attestation.
	Payload(ctx context.Context) ([]byte, error)
	// Answer returns the answer to a challenge from the server's
	// verifier (one round). An attestor whose verifier sends no
	// challenge returns an error.
	Answer(ctx context.Context, challenge []byte) ([]byte, error)
}

// SingleUse is implemented by an Attestor whose evidence works only once
// (a join token): once it attested the node, it cannot attest it again,
// and an agent whose SVID expired cannot recover by itself. An Attestor
// that does not implement it can attest again.
type SingleUse interface {
	// SpentMessage tells the operator why the attestor cannot attest
	// again and what to do; the agent shows it when an attestation after
	// its first one is refused.
	SpentMessage() string
}

// ChallengeFree is implemented by an Attestor whose verifier never sends a
// challenge: its payload alone is the evidence. Only such an attestor may
// use the unary Attest of a server of the previous version (one that does
// not serve the attestation stream).
type ChallengeFree interface {
	// ChallengeFree reports whether the verifier sends no challenge.
	ChallengeFree() bool
}
