package raftstore

import (
	"bytes"
	"crypto/x509"

	"google.golang.org/grpc/codes"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/internal/storepb"
)

// MaxUpstreamRoots bounds the roots of the upstream authority kept in the
// bundle.
const MaxUpstreamRoots = 64

// setUpstreamRoots records the upstream authority's roots in the bundle
// (see storepb.SetUpstreamRoots). Nothing changes when the command would
// change nothing, so the leader may send it on every check.
func (a *applier) setUpstreamRoots(c *storepb.SetUpstreamRoots) *CommandError {
	if err := a.checkTrustDomain(c.GetTrustDomain()); err != nil {
		return err
	}
	if len(c.Certificates) > MaxUpstreamRoots {
		return cmdErr(codes.InvalidArgument, "%d upstream roots (at most %d)", len(c.Certificates), MaxUpstreamRoots)
	}
	in := make([]*sigilv1.X509Authority, 0, len(c.Certificates))
	for i, der := range c.Certificates {
		notAfter, err := parseCACert(der)
		if err != nil {
			return cmdErr(err.Code, "upstream root %d: %s", i+1, err.Msg)
		}
		if notAfter <= a.nowSec {
			return cmdErr(codes.InvalidArgument, "upstream root %d expired", i+1)
		}
		if hasCert(in, der) {
			continue
		}
		if cert, perr := x509.ParseCertificate(der); perr == nil && a.revoked(AuthorityKindX509, X509AuthorityID(cert)) != nil {
			return cmdErr(codes.PermissionDenied, "upstream root %d was revoked and cannot be published again", i+1)
		}
		in = append(in, &sigilv1.X509Authority{Certificate: der, NotAfter: notAfter, Upstream: true})
	}
	b := a.bundleForWrite(c.TrustDomain)
	var old, others []*sigilv1.X509Authority
	intermediates := false
	for _, x := range b.X509Authorities {
		switch {
		case x.Upstream:
			old = append(old, x)
		default:
			others = append(others, x)
			intermediates = intermediates || (x.Intermediate && x.NotAfter > a.nowSec)
		}
	}
	next := in
	if !c.Replace {
		next = append([]*sigilv1.X509Authority(nil), old...)
		for _, x := range in {
			if !hasCert(next, x.Certificate) {
				next = append(next, x)
			}
		}
	}
	if len(next) > MaxUpstreamRoots {
		return cmdErr(codes.ResourceExhausted, "the bundle would hold %d upstream roots (at most %d)", len(next), MaxUpstreamRoots)
	}
	if len(next) == 0 && intermediates {
		return cmdErr(codes.FailedPrecondition, "the bundle holds CA certificates signed by the upstream authority: its roots cannot all be removed")
	}
	if sameAuthorities(old, next) {
		return nil
	}
	b.X509Authorities = append(others, next...)
	sortAuthorities(b.X509Authorities)
	b.SequenceNumber++
	return a.insert(tableBundles, b)
}

func hasCert(as []*sigilv1.X509Authority, der []byte) bool {
	for _, x := range as {
		if bytes.Equal(x.Certificate, der) {
			return true
		}
	}
	return false
}

// sameAuthorities reports whether a and b hold the same certificates, in
// any order.
func sameAuthorities(a, b []*sigilv1.X509Authority) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !hasCert(b, x.Certificate) {
			return false
		}
	}
	return true
}
