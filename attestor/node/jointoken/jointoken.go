// Package jointoken is the join token node attestor. An operator creates a
// random single-use token on the server (only its SHA-256 hash is stored)
// and hands it to the agent, which presents it once to attest its node.
//
// The agent's id is the first 32 hex characters of the token's hash, so the
// agent's SPIFFE ID is spiffe://<td>/sigil/agent/join_token/<id> and neither
// the ID nor any selector reveals the token itself.
package jointoken

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/node"
)

// Name is the attestor name.
const Name = "join_token"

// tokenBytes is the entropy of a token; its hex form has twice as many
// characters.
const tokenBytes = 32

// ErrMalformed is wrapped by errors about a token that is not 64 lowercase
// hex characters.
var ErrMalformed = errors.New("join token is malformed: want 64 lowercase hex characters")

// Generate returns a new token: 32 bytes from crypto/rand, hex-encoded (64
// characters).
func Generate() (string, error) {
	var b [tokenBytes]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("jointoken: generating token: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// Hash returns the hex SHA-256 of token: what the server stores and consumes.
func Hash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// AgentIDSegment returns the first 32 hex characters of Hash(token): the
// <ID> part of the agent's SPIFFE ID.
func AgentIDSegment(token string) string {
	return Hash(token)[:32]
}

// Validate reports whether token is well-formed (64 lowercase hex
// characters). The error never contains the token.
func Validate(token string) error {
	if len(token) != 2*tokenBytes {
		return fmt.Errorf("jointoken: %w (got %d characters)", ErrMalformed, len(token))
	}
	for i := 0; i < len(token); i++ {
		c := token[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return fmt.Errorf("jointoken: %w (invalid character at position %d)", ErrMalformed, i)
		}
	}
	return nil
}

// RefusedMessage is what a caller is told about a well-formed token that
// is not valid now, whatever the reason (never issued, already used,
// expired): one answer for all, so that the answer does not help guessing.
const RefusedMessage = "join token is unknown, already used or expired"

type verifier struct{}

// NewVerifier returns the server half. It holds no state: Verify takes the
// token itself as the payload, sends no challenge, and checks the token
// against the State of the call (the server's local copy of the replicated
// join tokens) at the State's time before returning, so a made-up, used or
// expired token costs one local lookup. The Result names the token in
// Consume; the server consumes it atomically with recording the
// attestation (through Raft), which is what makes the token single-use
// when several callers present it at once.
func NewVerifier() node.Verifier { return verifier{} }

func (verifier) Name() string { return Name }

func (verifier) Verify(ctx context.Context, state node.State, ex node.Exchange) (*node.Result, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	payload := ex.Payload()
	// Check the length before copying the payload into a string.
	if len(payload) != 2*tokenBytes {
		return nil, fmt.Errorf("jointoken: %w (got %d bytes)", ErrMalformed, len(payload))
	}
	token := string(payload)
	if err := Validate(token); err != nil {
		return nil, err
	}
	if state == nil {
		return nil, errors.New("jointoken: the verifier has no state to check tokens against")
	}
	hash := Hash(token)
	cred := node.Credential{Kind: node.CredentialJoinToken, ID: hash}
	expires, err := state.CredentialExpiry(ctx, cred)
	switch {
	case errors.Is(err, node.ErrNotFound):
		return nil, fmt.Errorf("jointoken: %w", &node.RefusedError{Public: RefusedMessage,
			Reason: "no such join token: never issued, already used, or removed after expiry"})
	case err != nil:
		return nil, fmt.Errorf("jointoken: checking the join token: %w", err)
	}
	if now := state.Now(); !now.Before(expires) {
		return nil, fmt.Errorf("jointoken: %w", &node.RefusedError{Public: RefusedMessage,
			Reason: fmt.Sprintf("join token expired at %s (now %s)", expires.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))})
	}
	id := hash[:32]
	return &node.Result{
		ID:        id,
		Selectors: []*sigilv1.Selector{{Type: Name, Value: id}},
		Consume:   []node.Credential{cred},
	}, nil
}

type attestor struct{ token string }

// NewAttestor returns the agent half, which presents token. Surrounding
// white space (a trailing newline from a file) is ignored. It implements
// node.ChallengeFree and node.SingleUse.
func NewAttestor(token string) node.Attestor {
	return attestor{token: strings.TrimSpace(token)}
}

func (attestor) Name() string { return Name }

func (a attestor) Payload(ctx context.Context) ([]byte, error) {
	if a.token == "" {
		return nil, errors.New("jointoken: no join token configured")
	}
	if err := Validate(a.token); err != nil {
		return nil, err
	}
	return []byte(a.token), nil
}

// Answer refuses: the join token verifier sends no challenge, so a
// challenge did not come from it.
func (attestor) Answer(context.Context, []byte) ([]byte, error) {
	return nil, errors.New("jointoken: the join_token attestor answers no challenge, but the server sent one")
}

// ChallengeFree reports true: the token alone is the evidence.
func (attestor) ChallengeFree() bool { return true }

// SpentMessage is what an agent whose token was spent tells the operator.
func (attestor) SpentMessage() string { return SpentMessage }

// SpentMessage tells the operator of an agent that must attest again that
// its join token cannot be used again, and what to do.
const SpentMessage = "the join_token attestor cannot re-attest with the token it already spent (a join token works once); " +
	"generate a new token with `sigil token generate`, put it in the agent's configuration and restart it"
