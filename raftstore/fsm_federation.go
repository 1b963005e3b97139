package raftstore

import (
	"crypto/x509"
	"net/url"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/internal/storepb"
	"github.com/sigil-id/sigil/registration"
)

// Federation: relationships with foreign trust domains, their bundles
// (rows of the bundles table keyed by the foreign trust domain), the
// refresh status of each relationship, and the partners that fetched the
// local bundle.
const (
	// MaxFederationRelationships bounds the federation relationships of
	// the cluster.
	MaxFederationRelationships = 256
	// MaxFederatesWith bounds the trust domains one entry federates
	// with.
	MaxFederatesWith = registration.MaxFederatesWith
	// MaxFederatedBundleAuthorities bounds the X.509 plus JWT
	// authorities of a federated bundle (federation.MaxAuthorities).
	MaxFederatedBundleAuthorities = 1024
	// MaxBundleEndpointURLLen bounds a relationship's bundle endpoint
	// URL, in bytes.
	MaxBundleEndpointURLLen = 2048
	// MaxFederationErrorLen bounds the last_error a status keeps, in
	// bytes: a longer one is cut (at a character boundary) when stored.
	MaxFederationErrorLen = 1024

	// ProfileHTTPSSPIFFE and ProfileHTTPSWeb are the bundle endpoint
	// profiles of the SPIFFE federation specification.
	ProfileHTTPSSPIFFE = "https_spiffe"
	ProfileHTTPSWeb    = "https_web"
)

// checkForeignTrustDomain checks the name of a foreign trust domain: a
// valid trust domain name (not a SPIFFE ID) of at most
// registration.MaxTrustDomainLen bytes, other than the local one.
func (f *fsm) checkForeignTrustDomain(name string) *CommandError {
	if name == "" {
		return cmdErr(codes.InvalidArgument, "trust domain is empty")
	}
	if len(name) > registration.MaxTrustDomainLen {
		return cmdErr(codes.InvalidArgument, "trust domain name of %d bytes is too long (at most %d)", len(name), registration.MaxTrustDomainLen)
	}
	fed, err := spiffeid.TrustDomainFromString(name)
	if err != nil {
		return cmdErr(codes.InvalidArgument, "invalid trust domain %q: %v", name, err)
	}
	if fed.Name() != name {
		return cmdErr(codes.InvalidArgument, "%q is not a trust domain name (write %q)", name, fed.Name())
	}
	if fed == f.td {
		return cmdErr(codes.InvalidArgument, "trust domain %q is the local trust domain, not a foreign one", name)
	}
	return nil
}

// validateRelationship checks a relationship's fields (not the store-set
// ones): foreign trust domain, https bundle endpoint URL with a host and
// no user info, profile, and an endpoint SPIFFE ID in the relationship's
// trust domain for https_spiffe and none for https_web.
func (f *fsm) validateRelationship(rel *sigilv1.FederationRelationship) *CommandError {
	if rel == nil {
		return cmdErr(codes.InvalidArgument, "federation relationship is missing")
	}
	if err := f.checkForeignTrustDomain(rel.TrustDomain); err != nil {
		return err
	}
	if err := checkBundleEndpointURL(rel.BundleEndpointUrl); err != nil {
		return cmdErr(codes.InvalidArgument, "federation relationship %q: %s", rel.TrustDomain, err.Msg)
	}
	switch rel.Profile {
	case ProfileHTTPSSPIFFE:
		if rel.EndpointSpiffeId == "" {
			return cmdErr(codes.InvalidArgument, "federation relationship %q: profile %s needs endpoint_spiffe_id", rel.TrustDomain, ProfileHTTPSSPIFFE)
		}
		if len(rel.EndpointSpiffeId) > registration.MaxSPIFFEIDLen {
			return cmdErr(codes.InvalidArgument, "federation relationship %q: endpoint_spiffe_id is longer than %d bytes", rel.TrustDomain, registration.MaxSPIFFEIDLen)
		}
		id, err := spiffeid.FromString(rel.EndpointSpiffeId)
		if err != nil {
			return cmdErr(codes.InvalidArgument, "federation relationship %q: invalid endpoint_spiffe_id %q: %v", rel.TrustDomain, rel.EndpointSpiffeId, err)
		}
		if id.TrustDomain().Name() != rel.TrustDomain {
			return cmdErr(codes.InvalidArgument, "federation relationship %q: endpoint_spiffe_id %q is not in trust domain %q", rel.TrustDomain, rel.EndpointSpiffeId, rel.TrustDomain)
		}
	case ProfileHTTPSWeb:
		if rel.EndpointSpiffeId != "" {
			return cmdErr(codes.InvalidArgument, "federation relationship %q: profile %s takes no endpoint_spiffe_id", rel.TrustDomain, ProfileHTTPSWeb)
		}
	default:
		return cmdErr(codes.InvalidArgument, "federation relationship %q: profile %q is not %q or %q", rel.TrustDomain, rel.Profile, ProfileHTTPSSPIFFE, ProfileHTTPSWeb)
	}
	return nil
}

func checkBundleEndpointURL(s string) *CommandError {
	if s == "" {
		return cmdErr(codes.InvalidArgument, "bundle_endpoint_url is empty")
	}
	if len(s) > MaxBundleEndpointURLLen {
		return cmdErr(codes.InvalidArgument, "bundle_endpoint_url is longer than %d bytes", MaxBundleEndpointURLLen)
	}
	u, err := url.Parse(s)
	if err != nil {
		return cmdErr(codes.InvalidArgument, "bundle_endpoint_url does not parse: %v", err)
	}
	if u.Scheme != "https" {
		return cmdErr(codes.InvalidArgument, "bundle_endpoint_url %q is not an https URL", s)
	}
	if u.Hostname() == "" {
		return cmdErr(codes.InvalidArgument, "bundle_endpoint_url %q has no host", s)
	}
	if u.User != nil {
		return cmdErr(codes.InvalidArgument, "bundle_endpoint_url %q has user info; credentials do not belong in the URL", s)
	}
	return nil
}

// normalFederatedBundle checks a foreign trust domain's bundle and returns
// its stored form: the same trust domain, authorities (in their order),
// refresh hint and sequence number, every X.509 authority with the
// not_after of its certificate and no server_id, every JWT authority with
// its key ID, public key and expiry, nothing tainted; modify_index and
// updated_at are copied (the caller sets them).
func (f *fsm) normalFederatedBundle(b *sigilv1.Bundle) (*sigilv1.Bundle, *CommandError) {
	if b == nil {
		return nil, cmdErr(codes.InvalidArgument, "bundle is missing")
	}
	if err := f.checkForeignTrustDomain(b.TrustDomain); err != nil {
		return nil, err
	}
	n := len(b.X509Authorities) + len(b.JwtAuthorities)
	if n == 0 {
		return nil, cmdErr(codes.InvalidArgument, "bundle of %q has no authority", b.TrustDomain)
	}
	if n > MaxFederatedBundleAuthorities {
		return nil, cmdErr(codes.InvalidArgument, "bundle of %q has %d authorities, at most %d allowed", b.TrustDomain, n, MaxFederatedBundleAuthorities)
	}
	if b.RefreshHint < 0 {
		return nil, cmdErr(codes.InvalidArgument, "bundle of %q has a negative refresh_hint", b.TrustDomain)
	}
	out := &sigilv1.Bundle{
		TrustDomain:     b.TrustDomain,
		X509Authorities: make([]*sigilv1.X509Authority, 0, len(b.X509Authorities)),
		JwtAuthorities:  make([]*sigilv1.JWTAuthority, 0, len(b.JwtAuthorities)),
		RefreshHint:     b.RefreshHint,
		SequenceNumber:  b.SequenceNumber,
		ModifyIndex:     b.ModifyIndex,
		UpdatedAt:       b.UpdatedAt,
	}
	for i, a := range b.X509Authorities {
		if a == nil || len(a.Certificate) == 0 {
			return nil, cmdErr(codes.InvalidArgument, "bundle of %q: X.509 authority %d has no certificate", b.TrustDomain, i)
		}
		cert, err := x509.ParseCertificate(a.Certificate)
		if err != nil {
			return nil, cmdErr(codes.InvalidArgument, "bundle of %q: X.509 authority %d does not parse: %v", b.TrustDomain, i, err)
		}
		out.X509Authorities = append(out.X509Authorities, &sigilv1.X509Authority{
			Certificate: a.Certificate,
			NotAfter:    cert.NotAfter.Unix(),
		})
	}
	kids := make(map[string]bool, len(b.JwtAuthorities))
	for i, a := range b.JwtAuthorities {
		switch {
		case a == nil:
			return nil, cmdErr(codes.InvalidArgument, "bundle of %q: JWT authority %d is missing", b.TrustDomain, i)
		case a.KeyId == "":
			return nil, cmdErr(codes.InvalidArgument, "bundle of %q: JWT authority %d has no key_id", b.TrustDomain, i)
		case len(a.KeyId) > maxKeyIDLen:
			return nil, cmdErr(codes.InvalidArgument, "bundle of %q: JWT authority key_id is longer than %d bytes", b.TrustDomain, maxKeyIDLen)
		case kids[a.KeyId]:
			return nil, cmdErr(codes.InvalidArgument, "bundle of %q: duplicate JWT authority key_id %q", b.TrustDomain, a.KeyId)
		case a.ExpiresAt < 0:
			return nil, cmdErr(codes.InvalidArgument, "bundle of %q: JWT authority %q has a negative expires_at", b.TrustDomain, a.KeyId)
		}
		kids[a.KeyId] = true
		if _, err := x509.ParsePKIXPublicKey(a.PublicKey); err != nil {
			return nil, cmdErr(codes.InvalidArgument, "bundle of %q: JWT authority %q: public key does not parse: %v", b.TrustDomain, a.KeyId, err)
		}
		out.JwtAuthorities = append(out.JwtAuthorities, &sigilv1.JWTAuthority{
			KeyId:     a.KeyId,
			PublicKey: a.PublicKey,
			ExpiresAt: a.ExpiresAt,
		})
	}
	return out, nil
}

// sameBundleContent reports whether two bundles have the same authorities,
// refresh hint and sequence number (store-set fields ignored).
func sameBundleContent(x, y *sigilv1.Bundle) bool {
	if x.TrustDomain != y.TrustDomain || x.RefreshHint != y.RefreshHint || x.SequenceNumber != y.SequenceNumber ||
		len(x.X509Authorities) != len(y.X509Authorities) || len(x.JwtAuthorities) != len(y.JwtAuthorities) {
		return false
	}
	for i := range x.X509Authorities {
		if !proto.Equal(x.X509Authorities[i], y.X509Authorities[i]) {
			return false
		}
	}
	for i := range x.JwtAuthorities {
		if !proto.Equal(x.JwtAuthorities[i], y.JwtAuthorities[i]) {
			return false
		}
	}
	return true
}

// normalStatus checks a relationship status and returns its stored form,
// with last_error cut to MaxFederationErrorLen bytes; refresh_requested_at
// and modify_index are copied (the caller sets them).
func (f *fsm) normalStatus(st *sigilv1.FederationStatus) (*sigilv1.FederationStatus, *CommandError) {
	if st == nil {
		return nil, cmdErr(codes.InvalidArgument, "federation status is missing")
	}
	if err := f.checkForeignTrustDomain(st.TrustDomain); err != nil {
		return nil, err
	}
	if st.LastSuccessAt < 0 || st.LastAttemptAt < 0 || st.LastErrorAt < 0 || st.NextRefreshAt < 0 || st.RefreshRequestedAt < 0 {
		return nil, cmdErr(codes.InvalidArgument, "federation status of %q has a negative time", st.TrustDomain)
	}
	out := proto.Clone(st).(*sigilv1.FederationStatus)
	out.LastError = truncateUTF8(strings.ToValidUTF8(st.LastError, "\uFFFD"), MaxFederationErrorLen)
	return out, nil
}

// truncateUTF8 cuts s to at most n bytes without splitting a character.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func (a *applier) relationship(td string) *sigilv1.FederationRelationship {
	raw, err := a.txn.First(tableFederationRelationships, indexID, td)
	if err != nil || raw == nil {
		return nil
	}
	return raw.(*sigilv1.FederationRelationship)
}

func (a *applier) status(td string) *sigilv1.FederationStatus {
	raw, err := a.txn.First(tableFederationStatuses, indexID, td)
	if err != nil || raw == nil {
		return nil
	}
	return raw.(*sigilv1.FederationStatus)
}

func (a *applier) partnerFetch(td string) *sigilv1.PartnerFetch {
	raw, err := a.txn.First(tablePartnerFetches, indexID, td)
	if err != nil || raw == nil {
		return nil
	}
	return raw.(*sigilv1.PartnerFetch)
}

func (a *applier) bundle(td string) *sigilv1.Bundle {
	raw, err := a.txn.First(tableBundles, indexID, td)
	if err != nil || raw == nil {
		return nil
	}
	return raw.(*sigilv1.Bundle)
}

// federates reports whether the cluster federates with td: it has a
// relationship or a bundle of it.
func (a *applier) federates(td string) bool {
	return a.relationship(td) != nil || a.bundle(td) != nil
}

func (a *applier) countRelationships() (int, *CommandError) {
	it, err := a.txn.Get(tableFederationRelationships, indexID)
	if err != nil {
		return 0, cmdErr(codes.Internal, "counting federation relationships: %v", err)
	}
	n := 0
	for raw := it.Next(); raw != nil; raw = it.Next() {
		n++
	}
	return n, nil
}

// countStaticBundles counts the federated bundles that no relationship
// refreshes (set with `sigil bundle set`).
func (a *applier) countStaticBundles() (int, *CommandError) {
	it, err := a.txn.Get(tableBundles, indexID)
	if err != nil {
		return 0, cmdErr(codes.Internal, "counting bundles: %v", err)
	}
	n := 0
	for raw := it.Next(); raw != nil; raw = it.Next() {
		td := raw.(*sigilv1.Bundle).TrustDomain
		if td != a.f.td.Name() && a.relationship(td) == nil {
			n++
		}
	}
	return n, nil
}

// checkFederatesWith refuses an entry that federates with a trust domain
// the cluster has no relationship or bundle of (the syntax is checked by
// validateEntry). Trust domains in had (the stored entry's, on update)
// are not checked again.
func (a *applier) checkFederatesWith(e *sigilv1.Entry, had []string) *CommandError {
	for _, name := range e.FederatesWith {
		if !slices.Contains(had, name) && !a.federates(name) {
			return cmdErr(codes.InvalidArgument, "federates_with: trust domain %q has no federation relationship or bundle (sigil federation create or sigil bundle set first)", name)
		}
	}
	return nil
}

// writeFederatedBundle stores b (normalized) as the bundle of its trust
// domain with the command's index and time, unless the stored one has the
// same content, which is left as it is.
func (a *applier) writeFederatedBundle(b *sigilv1.Bundle) *CommandError {
	if old := a.bundle(b.TrustDomain); old != nil && sameBundleContent(old, b) {
		return nil
	}
	b.ModifyIndex = a.index
	b.UpdatedAt = a.nowSec
	return a.insert(tableBundles, b)
}

// writeStatus stores st (normalized), keeping the stored
// refresh_requested_at; a status equal to the stored one is left as it is.
func (a *applier) writeStatus(st *sigilv1.FederationStatus) *CommandError {
	old := a.status(st.TrustDomain)
	st.RefreshRequestedAt = 0
	st.ModifyIndex = 0
	done := st.RefreshesDone
	st.RefreshRequests, st.RefreshesDone = 0, 0
	if old != nil {
		st.RefreshRequestedAt = old.RefreshRequestedAt
		st.ModifyIndex = old.ModifyIndex
		st.RefreshRequests = old.RefreshRequests
		// Answered requests never go down, nor above those made.
		st.RefreshesDone = max(old.RefreshesDone, min(done, old.RefreshRequests))
		if proto.Equal(old, st) {
			return nil
		}
	}
	st.ModifyIndex = a.index
	return a.insert(tableFederationStatuses, st)
}

// dropPartnerFetchIfUnfederated deletes the partner fetch record of td
// once the cluster has neither a relationship nor a bundle of it, so that
// the records stay bounded by what the cluster federates with.
func (a *applier) dropPartnerFetchIfUnfederated(td string) *CommandError {
	if a.federates(td) {
		return nil
	}
	if pf := a.partnerFetch(td); pf != nil {
		return a.delete(tablePartnerFetches, pf)
	}
	return nil
}

func (a *applier) putFederationRelationship(c *storepb.PutFederationRelationship) *CommandError {
	rel := c.GetRelationship()
	if err := a.f.validateRelationship(rel); err != nil {
		return err
	}
	if c.Create && c.Update {
		return cmdErr(codes.InvalidArgument, "federation relationship %q: create and update are exclusive", rel.TrustDomain)
	}
	var boot *sigilv1.Bundle
	if c.BootstrapBundle != nil {
		if c.BootstrapBundle.TrustDomain != rel.TrustDomain {
			return cmdErr(codes.InvalidArgument, "bootstrap bundle is of trust domain %q, not %q", c.BootstrapBundle.TrustDomain, rel.TrustDomain)
		}
		var err *CommandError
		if boot, err = a.f.normalFederatedBundle(c.BootstrapBundle); err != nil {
			return cmdErr(codes.InvalidArgument, "bootstrap %s", err.Msg)
		}
	}
	old := a.relationship(rel.TrustDomain)
	switch {
	case old != nil && c.Create:
		return cmdErr(codes.AlreadyExists, "federation relationship %q already exists", rel.TrustDomain)
	case old == nil && c.Update:
		return cmdErr(codes.NotFound, "federation relationship %q not found", rel.TrustDomain)
	case old == nil:
		n, err := a.countRelationships()
		if err != nil {
			return err
		}
		if n >= MaxFederationRelationships {
			return cmdErr(codes.FailedPrecondition, "there are %d federation relationships already, at most %d allowed; delete one first", n, MaxFederationRelationships)
		}
	}
	// rel was decoded from this log entry alone, so the FSM owns it.
	rel.CreatedAt = a.nowSec
	if old != nil {
		rel.CreatedAt = old.CreatedAt
	}
	if old != nil {
		rel.ModifyIndex = old.ModifyIndex
	}
	if old == nil || !proto.Equal(old, rel) {
		rel.ModifyIndex = a.index
		if err := a.insert(tableFederationRelationships, rel); err != nil {
			return err
		}
	}
	if boot != nil && a.bundle(rel.TrustDomain) == nil {
		return a.writeFederatedBundle(boot)
	}
	return nil
}

func (a *applier) deleteFederationRelationship(c *storepb.DeleteFederationRelationship) *CommandError {
	td := c.GetTrustDomain()
	if err := a.f.checkForeignTrustDomain(td); err != nil {
		return err
	}
	rel := a.relationship(td)
	if rel == nil {
		return cmdErr(codes.NotFound, "federation relationship %q not found", td)
	}
	if err := a.delete(tableFederationRelationships, rel); err != nil {
		return err
	}
	if st := a.status(td); st != nil {
		if err := a.delete(tableFederationStatuses, st); err != nil {
			return err
		}
	}
	if b := a.bundle(td); b != nil && !c.KeepBundle {
		if err := a.delete(tableBundles, b); err != nil {
			return err
		}
	}
	return a.dropPartnerFetchIfUnfederated(td)
}

func (a *applier) setFederatedBundle(c *storepb.SetFederatedBundle) *CommandError {
	b, err := a.f.normalFederatedBundle(c.GetBundle())
	if err != nil {
		return err
	}
	var st *sigilv1.FederationStatus
	if c.Status != nil {
		if c.Status.TrustDomain != b.TrustDomain {
			return cmdErr(codes.InvalidArgument, "status is of trust domain %q, not the bundle's %q", c.Status.TrustDomain, b.TrustDomain)
		}
		if st, err = a.f.normalStatus(c.Status); err != nil {
			return err
		}
	}
	if (c.Refresh || st != nil) && a.relationship(b.TrustDomain) == nil {
		return cmdErr(codes.NotFound, "federation relationship %q not found", b.TrustDomain)
	}
	old := a.bundle(b.TrustDomain)
	if old == nil && a.relationship(b.TrustDomain) == nil {
		// A bundle with no relationship: bounded like relationships.
		n, err := a.countStaticBundles()
		if err != nil {
			return err
		}
		if n >= MaxFederationRelationships {
			return cmdErr(codes.FailedPrecondition, "already %d federated bundles without a relationship, the limit", n)
		}
	}
	if c.Refresh && old != nil && b.SequenceNumber < old.SequenceNumber {
		return cmdErr(codes.FailedPrecondition, "bundle of %q has sequence number %d, below the stored %d", b.TrustDomain, b.SequenceNumber, old.SequenceNumber)
	}
	if err := a.writeFederatedBundle(b); err != nil {
		return err
	}
	if st != nil {
		return a.writeStatus(st)
	}
	return nil
}

func (a *applier) deleteFederatedBundle(c *storepb.DeleteFederatedBundle) *CommandError {
	td := c.GetTrustDomain()
	if err := a.f.checkForeignTrustDomain(td); err != nil {
		return err
	}
	b := a.bundle(td)
	if b == nil {
		return cmdErr(codes.NotFound, "bundle of %q not found", td)
	}
	if a.relationship(td) != nil {
		return cmdErr(codes.FailedPrecondition, "federation relationship %q still refreshes the bundle; delete the relationship instead", td)
	}
	if err := a.delete(tableBundles, b); err != nil {
		return err
	}
	return a.dropPartnerFetchIfUnfederated(td)
}

func (a *applier) putFederationStatus(c *storepb.PutFederationStatus) *CommandError {
	st, err := a.f.normalStatus(c.GetStatus())
	if err != nil {
		return err
	}
	if a.relationship(st.TrustDomain) == nil {
		return cmdErr(codes.NotFound, "federation relationship %q not found", st.TrustDomain)
	}
	return a.writeStatus(st)
}

func (a *applier) requestFederationRefresh(c *storepb.RequestFederationRefresh) *CommandError {
	td := c.GetTrustDomain()
	if err := a.f.checkForeignTrustDomain(td); err != nil {
		return err
	}
	if a.relationship(td) == nil {
		return cmdErr(codes.NotFound, "federation relationship %q not found", td)
	}
	st := &sigilv1.FederationStatus{TrustDomain: td}
	if old := a.status(td); old != nil {
		st = proto.Clone(old).(*sigilv1.FederationStatus)
	}
	st.RefreshRequestedAt = a.nowSec
	st.RefreshRequests++
	st.ModifyIndex = a.index
	return a.insert(tableFederationStatuses, st)
}

func (a *applier) recordPartnerFetch(c *storepb.RecordPartnerFetch) *CommandError {
	pf := c.GetFetch()
	if pf == nil {
		return cmdErr(codes.InvalidArgument, "partner fetch is missing")
	}
	if err := a.f.checkForeignTrustDomain(pf.TrustDomain); err != nil {
		return err
	}
	if !a.federates(pf.TrustDomain) {
		return cmdErr(codes.FailedPrecondition, "trust domain %q has no federation relationship or bundle; only partners are recorded", pf.TrustDomain)
	}
	if old := a.partnerFetch(pf.TrustDomain); old != nil && pf.SequenceNumber <= old.SequenceNumber {
		return nil
	}
	return a.insert(tablePartnerFetches, &sigilv1.PartnerFetch{
		TrustDomain:    pf.TrustDomain,
		SequenceNumber: pf.SequenceNumber,
		FetchedAt:      a.nowSec,
	})
}
