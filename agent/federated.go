package agent

import (
	"crypto/x509"
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// This file holds the federated bundles: the bundles of foreign trust
// domains that the server sends on the sync stream for the entries that
// name them in federates_with. They live in the X.509 state beside the
// own bundle, under the cache's lock; each has a version that changes
// whenever its content does, which the subscriptions' fingerprints and
// the JWT bundle sets use to notice a change.
//
// Federated bundles are not saved to the data directory: the agent is
// ready only after its first full sync, and every full sync carries the
// federated bundles the agent's entries need.

const (
	// maxFederatedBundles bounds the federated bundles the agent keeps
	// (raftstore.MaxFederationRelationships); more are ignored.
	maxFederatedBundles = 256
	// maxFederatedAuthorities bounds the X.509 plus JWT authorities of one
	// federated bundle (federation.MaxAuthorities).
	maxFederatedAuthorities = 1024
)

// fedBundle is the bundle of one federated trust domain, in the forms the
// Workload API hands out.
type fedBundle struct {
	td   spiffeid.TrustDomain
	x509 *x509bundle.Bundle // nil when it holds no X.509 authority
	jwt  *jwtbundle.Bundle  // nil when it holds no JWT authority
	// version is unique among all versions of all federated bundles the
	// state has held (x509State.fedSeq); x509Version is the version at
	// which the X.509 part last changed (X.509 snapshots depend on it
	// alone).
	version     uint64
	x509Version uint64
	// seq is the bundle's sequence number, for logs.
	seq uint64
}

// equal reports whether b and o hold the same authorities.
func (b *fedBundle) equal(o *fedBundle) bool {
	eqX := (b.x509 == nil) == (o.x509 == nil) && (b.x509 == nil || b.x509.Equal(o.x509))
	eqJ := (b.jwt == nil) == (o.jwt == nil) && (b.jwt == nil || b.jwt.Equal(o.jwt))
	return eqX && eqJ
}

// parseFederated converts a federated bundle from the server. The bundle
// must name a trust domain other than own, hold at least one authority
// and at most maxFederatedAuthorities, and every certificate and key
// must parse; a JWT authority needs a key ID, unique in the bundle.
// Unlike the own bundle, its X.509 authorities are taken as they are: a
// foreign trust domain's roots need not name it or be CA certificates
// issued the way Sigil issues them.
func parseFederated(own spiffeid.TrustDomain, pb *sigilv1.Bundle) (*fedBundle, error) {
	td, err := spiffeid.TrustDomainFromString(pb.GetTrustDomain())
	if err != nil {
		return nil, fmt.Errorf("federated bundle %q: bad trust domain: %w", pb.GetTrustDomain(), err)
	}
	if td == own {
		return nil, fmt.Errorf("federated bundle %q: it is the agent's own trust domain", td.Name())
	}
	xs, js := pb.GetX509Authorities(), pb.GetJwtAuthorities()
	if len(xs)+len(js) == 0 {
		return nil, fmt.Errorf("federated bundle %q: no authorities", td.Name())
	}
	if len(xs)+len(js) > maxFederatedAuthorities {
		return nil, fmt.Errorf("federated bundle %q: %d authorities, more than %d", td.Name(), len(xs)+len(js), maxFederatedAuthorities)
	}
	b := &fedBundle{td: td, seq: pb.GetSequenceNumber()}
	if len(xs) > 0 {
		certs := make([]*x509.Certificate, 0, len(xs))
		for i, a := range xs {
			c, err := x509.ParseCertificate(a.GetCertificate())
			if err != nil {
				return nil, fmt.Errorf("federated bundle %q: X.509 authority %d: %w", td.Name(), i+1, err)
			}
			certs = append(certs, c)
		}
		b.x509 = x509bundle.FromX509Authorities(td, certs)
	}
	if len(js) > 0 {
		b.jwt = jwtbundle.New(td)
		for i, a := range js {
			if a.GetKeyId() == "" {
				return nil, fmt.Errorf("federated bundle %q: JWT authority %d: no key ID", td.Name(), i+1)
			}
			if b.jwt.HasJWTAuthority(a.GetKeyId()) {
				return nil, fmt.Errorf("federated bundle %q: JWT authority %d: duplicate key ID %q", td.Name(), i+1, a.GetKeyId())
			}
			pub, err := x509.ParsePKIXPublicKey(a.GetPublicKey())
			if err != nil {
				return nil, fmt.Errorf("federated bundle %q: JWT authority %q: %w", td.Name(), a.GetKeyId(), err)
			}
			if err := b.jwt.AddJWTAuthority(a.GetKeyId(), pub); err != nil {
				return nil, fmt.Errorf("federated bundle %q: JWT authority %q: %w", td.Name(), a.GetKeyId(), err)
			}
		}
	}
	return b, nil
}

// fedEvent is what happened to one federated bundle in a transition.
type fedEvent struct {
	td     spiffeid.TrustDomain
	kind   string // "added", "updated", "removed", "ignored"
	bundle *fedBundle
	err    error // ignored
}

// errTooManyFederated refuses a federated bundle beyond
// maxFederatedBundles.
var errTooManyFederated = fmt.Errorf("more than %d federated bundles", maxFederatedBundles)

// SetFederated updates the federated bundles. With full, bundles are the
// whole set: a trust domain not among them (nor among bad, whose
// previous bundles are kept) is removed. Otherwise bundles are upserted
// and removed are dropped. A bundle equal to the one held keeps its
// version. Trust domains beyond maxFederatedBundles are ignored.
func (s *x509State) SetFederated(full bool, bundles []*fedBundle, bad, removed []spiffeid.TrustDomain) ([]fedEvent, changes) {
	var ch changes
	var evs []fedEvent
	if s.federated == nil {
		s.federated = make(map[spiffeid.TrustDomain]*fedBundle)
	}
	changed := false
	if full {
		keep := make(map[spiffeid.TrustDomain]bool, len(bundles)+len(bad))
		for _, b := range bundles {
			keep[b.td] = true
		}
		for _, td := range bad {
			keep[td] = true
		}
		for _, td := range s.sortedFederated() {
			if !keep[td] {
				delete(s.federated, td)
				evs = append(evs, fedEvent{td: td, kind: "removed"})
				changed = true
			}
		}
	}
	for _, td := range removed {
		if _, ok := s.federated[td]; ok {
			delete(s.federated, td)
			evs = append(evs, fedEvent{td: td, kind: "removed"})
			changed = true
		}
	}
	for _, b := range bundles {
		cur := s.federated[b.td]
		switch {
		case cur != nil && cur.equal(b):
			continue
		case cur == nil && len(s.federated) >= maxFederatedBundles:
			evs = append(evs, fedEvent{td: b.td, kind: "ignored", err: errTooManyFederated})
			continue
		}
		s.fedSeq++
		nb := *b
		nb.version = s.fedSeq
		nb.x509Version = s.fedSeq
		if cur != nil && (cur.x509 == nil) == (b.x509 == nil) && (b.x509 == nil || cur.x509.Equal(b.x509)) {
			nb.x509Version = cur.x509Version
		}
		s.federated[b.td] = &nb
		kind := "added"
		if cur != nil {
			kind = "updated"
		}
		evs = append(evs, fedEvent{td: b.td, kind: kind, bundle: &nb})
		changed = true
	}
	if changed {
		ch.notify = true
		ch.jwtBundles = true
	}
	return evs, ch
}

// sortedFederated returns the federated trust domains in order.
func (s *x509State) sortedFederated() []spiffeid.TrustDomain {
	tds := make([]spiffeid.TrustDomain, 0, len(s.federated))
	for td := range s.federated {
		tds = append(tds, td)
	}
	slices.SortFunc(tds, func(a, b spiffeid.TrustDomain) int { return strings.Compare(a.Name(), b.Name()) })
	return tds
}

// federatedOf calls f for each federated bundle held for a trust domain
// that one of entries names in federates_with, once per trust domain, in
// the order the entries name them. It allocates nothing when no entry
// names one.
func (s *x509State) federatedOf(entries []*entryState, f func(*fedBundle)) {
	if len(s.federated) == 0 {
		return
	}
	var seen []spiffeid.TrustDomain
	for _, e := range entries {
		for _, name := range e.entry.GetFederatesWith() {
			td, err := spiffeid.TrustDomainFromString(name)
			if err != nil {
				continue
			}
			b := s.federated[td]
			if b == nil || slices.Contains(seen, td) {
				continue
			}
			seen = append(seen, td)
			f(b)
		}
	}
}
