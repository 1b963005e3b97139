package raftstore

import (
	"fmt"
	"math"
	"strings"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/sigil-id/sigil/internal/storepb"
)

// Use-once credential records (storepb.UsedCredential): an AttestNode
// command that consumes a credential of a kind other than "join_token"
// records it until its expiry, and a later AttestNode naming the same kind
// and ID before then is refused. The records are pruned at expiry, a
// bounded number per command (see pruneUsedCredentials).
const (
	// MaxUsedCredentialTTL bounds how long after the command's time a
	// use-once record may expire.
	MaxUsedCredentialTTL = 24 * time.Hour
	// UsedCredentialClockSkew is the slack the state machine allows on
	// top of MaxUsedCredentialTTL: the command is stamped by the server
	// that proposes it, whose clock may differ a little from the one the
	// verifier read.
	UsedCredentialClockSkew = time.Minute
	// MaxCredentialIDLen bounds a use-once credential's ID.
	MaxCredentialIDLen = 256
	// MaxCredentialKindLen bounds a use-once credential's kind.
	MaxCredentialKindLen = 64
	// MaxConsume bounds the credentials one AttestNode command consumes.
	MaxConsume = 16
	// usedCredentialPrunePerCommand bounds the expired records one
	// AttestNode command removes: more than it can add (MaxConsume), so
	// the expired records never pile up while attestations go on.
	usedCredentialPrunePerCommand = 4 * MaxConsume
)

// usedRow is how a use-once record is stored: the record and its key
// (kind, NUL, id; a kind holds no NUL).
type usedRow struct {
	Key       string
	ExpiresAt int64
	C         *storepb.UsedCredential
}

func usedKey(kind, id string) string { return kind + "\x00" + id }

// ValidateUseOnceCredential checks a use-once credential as the state
// machine does before it records one at the command time nowSec (unix
// seconds): a kind other than "join_token" made of an attestor name and an
// optional ":word" (letters, digits, '.', '_' and '-'; at most
// MaxCredentialKindLen bytes), an ID of 1 to MaxCredentialIDLen bytes,
// and an expiry after nowSec and at most MaxUsedCredentialTTL (plus
// UsedCredentialClockSkew) after it. A server calls it before proposing
// the command, so that a verifier's bad credential is caught before
// anything is signed.
func ValidateUseOnceCredential(kind, id string, expiresAt, nowSec int64) error {
	if err := validateUseOnce(kind, id, expiresAt, nowSec); err != nil {
		return err
	}
	return nil
}

// ValidateUseOnceName checks the kind and ID of a use-once credential as
// ValidateUseOnceCredential does, without an expiry (for a lookup).
func ValidateUseOnceName(kind, id string) error {
	if err := validateUseOnceName(kind, id); err != nil {
		return err
	}
	return nil
}

func validateUseOnceName(kind, id string) *CommandError {
	if err := validateCredentialKind(kind); err != nil {
		return err
	}
	if id == "" {
		return cmdErr(codes.InvalidArgument, "credential of kind %q has an empty id", kind)
	}
	if len(id) > MaxCredentialIDLen {
		return cmdErr(codes.InvalidArgument, "credential of kind %q has an id of %d bytes, more than %d", kind, len(id), MaxCredentialIDLen)
	}
	return nil
}

func validateUseOnce(kind, id string, expiresAt, nowSec int64) *CommandError {
	if err := validateUseOnceName(kind, id); err != nil {
		return err
	}
	if expiresAt <= nowSec {
		return cmdErr(codes.InvalidArgument, "credential of kind %q expires at %d, not after the command time %d", kind, expiresAt, nowSec)
	}
	maxTTL := int64((MaxUsedCredentialTTL + UsedCredentialClockSkew) / time.Second)
	if nowSec > math.MaxInt64-maxTTL || expiresAt > nowSec+maxTTL {
		return cmdErr(codes.InvalidArgument, "credential of kind %q expires at %d, more than %s after the command time %d", kind, expiresAt, MaxUsedCredentialTTL, nowSec)
	}
	return nil
}

func validateCredentialKind(kind string) *CommandError {
	if kind == credentialJoinToken {
		return cmdErr(codes.InvalidArgument, "credential kind %q is not a use-once kind", kind)
	}
	if kind == "" || len(kind) > MaxCredentialKindLen {
		return cmdErr(codes.InvalidArgument, "credential kind must be 1 to %d bytes", MaxCredentialKindLen)
	}
	name, word, hasWord := strings.Cut(kind, ":")
	if !kindPart(name) || (hasWord && !kindPart(word)) {
		return cmdErr(codes.InvalidArgument, "credential kind %q is not an attestor name with an optional \":word\"", kind)
	}
	return nil
}

// kindPart reports whether s is a non-empty run of letters, digits, '.',
// '_' and '-' (what a SPIFFE path segment, and so an attestor name, holds).
func kindPart(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func (a *applier) usedCredential(kind, id string) *usedRow {
	raw, err := a.txn.First(tableUsedCredentials, indexID, usedKey(kind, id))
	if err != nil || raw == nil {
		return nil
	}
	return raw.(*usedRow)
}

// checkUseOnce validates the use-once credentials of an AttestNode
// command and refuses it (AlreadyExists) if one is recorded and unexpired
// at the command time. It changes nothing.
func (a *applier) checkUseOnce(creds []*storepb.Credential) *CommandError {
	for i, c := range creds {
		if err := validateUseOnce(c.GetKind(), c.GetId(), c.GetExpiresAt(), a.nowSec); err != nil {
			return err
		}
		for _, prev := range creds[:i] {
			if prev.GetKind() == c.GetKind() && prev.GetId() == c.GetId() {
				return cmdErr(codes.InvalidArgument, "the command consumes one credential of kind %q twice", c.GetKind())
			}
		}
		if row := a.usedCredential(c.GetKind(), c.GetId()); row != nil && row.ExpiresAt > a.nowSec {
			// The id is not echoed: it may stand for evidence.
			return cmdErr(codes.AlreadyExists, "a credential of kind %q was already used", c.GetKind())
		}
	}
	return nil
}

// recordUseOnce records creds (checked by checkUseOnce) as used by the
// node spiffeID, replacing expired records of the same key.
func (a *applier) recordUseOnce(creds []*storepb.Credential, spiffeID string) *CommandError {
	for _, c := range creds {
		rec := &storepb.UsedCredential{Kind: c.Kind, Id: c.Id, ExpiresAt: c.ExpiresAt, UsedAt: a.nowSec, SpiffeId: spiffeID}
		if err := a.insert(tableUsedCredentials, &usedRow{Key: usedKey(c.Kind, c.Id), ExpiresAt: c.ExpiresAt, C: rec}); err != nil {
			return err
		}
	}
	return nil
}

// pruneUsedCredentials removes up to max records expired at the command
// time, the earliest first (ties in key order): deterministic, and
// bounded per command.
func (a *applier) pruneUsedCredentials(max int) *CommandError {
	it, err := a.txn.LowerBound(tableUsedCredentials, indexExpires, int64(math.MinInt64))
	if err != nil {
		return cmdErr(codes.Internal, "scanning used credentials: %v", err)
	}
	var expired []*usedRow
	for raw := it.Next(); raw != nil && len(expired) < max; raw = it.Next() {
		row := raw.(*usedRow)
		if row.ExpiresAt > a.nowSec {
			break
		}
		expired = append(expired, row)
	}
	for _, row := range expired {
		if err := a.delete(tableUsedCredentials, row); err != nil {
			return err
		}
	}
	return nil
}

// UsedCredential returns the use-once record of kind and id, or
// ErrNotFound. A record may have expired (ExpiresAt at or before now) and
// not yet been pruned: the caller compares ExpiresAt with its time.
func (r *Reader) UsedCredential(kind, id string) (*storepb.UsedCredential, error) {
	raw := r.first(tableUsedCredentials, indexID, usedKey(kind, id))
	if raw == nil {
		return nil, fmt.Errorf("used credential of kind %q: %w", kind, ErrNotFound)
	}
	return raw.(*usedRow).C, nil
}
