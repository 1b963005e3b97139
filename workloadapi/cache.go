package workloadapi

import (
	"crypto"
	"crypto/x509"
	"fmt"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// X509Identity is one X.509-SVID that the agent holds for a registration
// entry, with its private key (which never leaves the node).
//
// An identity carries its SVID parsed (Chain, PrivateKey), encoded
// (ChainDER, KeyDER), or both. The Workload API serves the encoded forms
// as they are; Certificates and Signer give the parsed forms, parsing the
// encoded ones when only those are set, so that a cache may keep only the
// DER of every SVID it holds.
type X509Identity struct {
	EntryID  string
	SPIFFEID spiffeid.ID
	// Chain is the SVID, leaf first.
	Chain      []*x509.Certificate
	PrivateKey crypto.Signer
	Hint       string

	// ChainDER and KeyDER, when set, are the concatenated DER of the
	// chain and the PKCS#8 DER of the private key, encoded once by the
	// cache so that each fetch does not encode them again. The server
	// encodes them itself when they are empty.
	ChainDER []byte
	KeyDER   []byte
}

// Certificates returns the SVID's chain, leaf first: Chain, or ChainDER
// parsed when Chain is empty.
func (id *X509Identity) Certificates() ([]*x509.Certificate, error) {
	if len(id.Chain) > 0 {
		return id.Chain, nil
	}
	if len(id.ChainDER) == 0 {
		return nil, fmt.Errorf("workloadapi: entry %s: empty certificate chain", id.EntryID)
	}
	certs, err := x509.ParseCertificates(id.ChainDER)
	if err != nil {
		return nil, fmt.Errorf("workloadapi: entry %s: certificate chain: %w", id.EntryID, err)
	}
	return certs, nil
}

// Signer returns the SVID's private key: PrivateKey, or KeyDER parsed
// when PrivateKey is nil.
func (id *X509Identity) Signer() (crypto.Signer, error) {
	if id.PrivateKey != nil {
		return id.PrivateKey, nil
	}
	if len(id.KeyDER) == 0 {
		return nil, fmt.Errorf("workloadapi: entry %s: no private key", id.EntryID)
	}
	k, err := x509.ParsePKCS8PrivateKey(id.KeyDER)
	if err != nil {
		return nil, fmt.Errorf("workloadapi: entry %s: private key: %w", id.EntryID, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("workloadapi: entry %s: private key of type %T cannot sign", id.EntryID, k)
	}
	return s, nil
}

// X509Snapshot is what a workload is entitled to at one moment. A
// snapshot must not be modified once handed out: the server memoizes its
// encodings (and those of its bundles) by pointer, so a Cache may hand
// the same snapshot to every workload entitled to exactly its content,
// which is then encoded once for all of them.
type X509Snapshot struct {
	// Identities are the SVIDs of every entry the workload matches; empty
	// means the workload is entitled to nothing.
	Identities []X509Identity
	// Bundle is the agent's own trust domain bundle.
	Bundle *x509bundle.Bundle
	// Federated holds the bundles of the federated trust domains that the
	// workload's entries federate with (federates_with), keyed by trust
	// domain; nil when there are none.
	Federated map[spiffeid.TrustDomain]*x509bundle.Bundle

	// svidResp and bundlesResp are the snapshot's encodings, built by
	// the server on first use and then shared (read-only) by every stream
	// that sends the snapshot. svidResp holds the identities' key DER
	// by reference, not a copy of it.
	svidResp    atomic.Pointer[encodedSVIDs]
	bundlesResp atomic.Pointer[workloadpb.X509BundlesResponse]
}

// Cache is the agent's store of entries, SVIDs and bundles as the Workload
// API sees it. The agent implements it; NewMemoryCache is an in-memory
// implementation for tests.
type Cache interface {
	// SubscribeX509 subscribes to the X.509 material for a workload with
	// the given attested selectors. An entry matches when every one of its
	// selectors is among them.
	//
	// The subscription delivers a first snapshot as soon as every matching
	// entry has an SVID (at once when nothing matches, with no
	// identities), then a new snapshot on every change: rotation, an entry
	// added, changed or deleted, a bundle change.
	//
	// The selectors may be shared with other calls (attestors memoize
	// them): they are read, never modified.
	SubscribeX509(selectors []*sigilv1.Selector) X509Subscription
}

// X509Subscription is one workload's view of the cache.
type X509Subscription interface {
	// Updates delivers snapshots. Only the latest matters: an
	// implementation may drop a snapshot that has not been received yet
	// when a newer one replaces it.
	Updates() <-chan *X509Snapshot
	// Close ends the subscription and releases its resources.
	Close()
}
