package ca

import (
	"time"
)

// SlotKind says what a slot's key signs.
type SlotKind string

// Slot kinds.
const (
	KindX509 SlotKind = "x509"
	KindJWT  SlotKind = "jwt"
)

// SlotState is where a key is in its life: prepared (published in the
// bundle, signing nothing yet), active (signing), retired (signing nothing,
// still in the bundle because SVIDs it signed may be valid).
type SlotState string

// Slot states.
const (
	StatePrepared SlotState = "prepared"
	StateActive   SlotState = "active"
	StateRetired  SlotState = "retired"
)

// Slot is the public, persisted state of one key of one server. It holds
// no private material: the key stays in the key manager under KeyID.
type Slot struct {
	Kind SlotKind `json:"kind"`
	// Seq numbers the slots of one kind on one server, from 1.
	Seq int `json:"seq"`
	// ID is the authority ID as published: the hex SubjectKeyId of an
	// X.509 CA, the kid of a JWT key.
	ID string `json:"id"`
	// KeyID names the private key in the key manager.
	KeyID     string    `json:"key_id"`
	State     SlotState `json:"state"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	// PreparedAt is when the key was made; PublishedAt when its bundle
	// write was committed (zero until then: a key is never activated
	// before); ActivatedAt and RetiredAt when it changed state.
	PreparedAt  time.Time `json:"prepared_at"`
	PublishedAt time.Time `json:"published_at,omitzero"`
	ActivatedAt time.Time `json:"activated_at,omitzero"`
	RetiredAt   time.Time `json:"retired_at,omitzero"`
	Tainted     bool      `json:"tainted,omitempty"`
	// Certificate is the DER CA certificate (X.509 slots); PublicKey the
	// PKIX DER public key (JWT slots).
	Certificate []byte `json:"certificate,omitempty"`
	PublicKey   []byte `json:"public_key,omitempty"`
	// UpstreamChain are the DER certificates between Certificate and an
	// upstream root, and UpstreamRoots the upstream's roots Certificate
	// verified to when it was signed: both empty for a self-signed CA,
	// UpstreamRoots set when an upstream authority signed Certificate
	// (the X.509 slot is then an intermediate, not a bundle root).
	UpstreamChain [][]byte `json:"upstream_chain,omitempty"`
	UpstreamRoots [][]byte `json:"upstream_roots,omitempty"`
}

// Upstream reports whether an upstream authority signed the slot's CA
// certificate.
func (s Slot) Upstream() bool { return len(s.UpstreamRoots) > 0 }

// Policy is the rotation schedule of one kind of key.
type Policy struct {
	// TTL is the lifetime of a new key.
	TTL time.Duration
	// Propagation is how long a prepared key must have been in the
	// committed bundle before it may become active, so that every agent
	// has it before anything it signs is handed out.
	Propagation time.Duration
}

// DefaultPropagation is the propagation delay for keys of lifetime ttl
// when none is configured: a sixth of it.
func DefaultPropagation(ttl time.Duration) time.Duration { return ttl / 6 }

// PrepareAt is when the successor of an active key should be prepared:
// at half the key's lifetime.
func PrepareAt(active Slot) time.Time {
	return active.NotBefore.Add(active.NotAfter.Sub(active.NotBefore) / 2)
}

// ActivateAt is when a prepared key becomes active on schedule: once it has
// been in the committed bundle for the propagation delay, and not before
// the scheduled rotation point of the current active key (prepare time plus
// propagation), so that a key prepared early by an operator waits for the
// schedule. With no (usable) active key there is no schedule to wait for.
// It is zero while the key is not published.
func ActivateAt(prepared Slot, active *Slot, p Policy) time.Time {
	if prepared.PublishedAt.IsZero() {
		return time.Time{}
	}
	t := prepared.PublishedAt.Add(p.Propagation)
	if active != nil {
		if sched := PrepareAt(*active).Add(p.Propagation); sched.After(t) {
			t = sched
		}
		// Never let the active key run out while a successor waits.
		if t.After(active.NotAfter) {
			t = active.NotAfter
		}
		if t.Before(prepared.PublishedAt) {
			t = prepared.PublishedAt
		}
	}
	return t
}

// PruneAt is when a key leaves the bundle and the key manager: when it
// expires, since nothing it signed outlives it.
func PruneAt(s Slot) time.Time { return s.NotAfter }

// ActionKind is one step of rotation.
type ActionKind string

// Actions Plan can ask for.
const (
	// ActPrepare makes a new key and publishes it.
	ActPrepare ActionKind = "prepare"
	// ActPublish retries the bundle write of a slot.
	ActPublish ActionKind = "publish"
	// ActActivate makes the prepared slot active and the active one
	// retired.
	ActActivate ActionKind = "activate"
	// ActPrune removes a slot: from the bundle, the key manager and the
	// state.
	ActPrune ActionKind = "prune"
)

// Action is one step Plan asks for; Seq names the slot (0 for prepare).
type Action struct {
	Kind ActionKind
	Seq  int
}

// Plan decides what is due at now for the slots of one kind, and returns
// the time of the next event when nothing more is due by then (zero when
// nothing is scheduled). It is a pure function: the Manager applies the
// actions and calls it again.
//
// The rules, in order:
//   - an expired slot, or a tainted prepared slot (nothing depends on it),
//     is pruned;
//   - a slot whose bundle write has not committed is published again;
//   - with no usable active key, a published prepared key is activated at
//     once, and with none prepared one is prepared;
//   - an active key is succeeded at half its life (or at once when it is
//     tainted): a key is prepared, and activated at ActivateAt;
//   - retired keys are pruned at PruneAt.
func Plan(slots []Slot, p Policy, now time.Time) (actions []Action, next time.Time) {
	at := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	var active, prepared *Slot
	for i := range slots {
		s := &slots[i]
		if !now.Before(PruneAt(*s)) || (s.State == StatePrepared && s.Tainted) {
			actions = append(actions, Action{ActPrune, s.Seq})
			continue
		}
		at(PruneAt(*s))
		if s.PublishedAt.IsZero() {
			actions = append(actions, Action{ActPublish, s.Seq})
		}
		switch s.State {
		case StateActive:
			if active == nil || s.Seq > active.Seq {
				active = s
			}
		case StatePrepared:
			if prepared == nil || s.Seq > prepared.Seq {
				prepared = s
			}
		}
	}
	if active == nil {
		if prepared == nil {
			return append(actions, Action{ActPrepare, 0}), next
		}
		if !prepared.PublishedAt.IsZero() {
			actions = append(actions, Action{ActActivate, prepared.Seq})
		}
		return actions, next
	}
	if prepared == nil {
		due := PrepareAt(*active)
		if active.Tainted || !now.Before(due) {
			actions = append(actions, Action{ActPrepare, 0})
		} else {
			at(due)
		}
		return actions, next
	}
	when := ActivateAt(*prepared, active, p)
	if active.Tainted && !prepared.PublishedAt.IsZero() {
		// Replace a tainted key as soon as its successor has propagated.
		when = prepared.PublishedAt.Add(p.Propagation)
	}
	if !when.IsZero() {
		if !now.Before(when) {
			actions = append(actions, Action{ActActivate, prepared.Seq})
		} else {
			at(when)
		}
	}
	return actions, next
}
