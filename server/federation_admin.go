package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/audit"
	"github.com/sigil-id/sigil/federation"
	"github.com/sigil-id/sigil/internal/storepb"
	"github.com/sigil-id/sigil/raftstore"
)

// DefaultRefreshWait is how long FederationAdmin.RefreshBundle waits for
// the refresh attempt when the request names no timeout.
const DefaultRefreshWait = 10 * time.Second

// maxRefreshWait bounds the timeout a RefreshBundle request may ask for.
const maxRefreshWait = 5 * time.Minute

// federationAdmin serves the FederationAdmin service on the admin socket.
type federationAdmin struct {
	sigilv1.UnimplementedFederationAdminServer
	s *Server
}

// foreignTD parses the trust domain name of a request: a valid name that
// is not the server's own trust domain.
func (s *Server) foreignTD(name string) (spiffeid.TrustDomain, error) {
	if name == "" {
		return spiffeid.TrustDomain{}, status.Error(codes.InvalidArgument, "trust_domain is required")
	}
	td, err := spiffeid.TrustDomainFromString(name)
	if err != nil {
		return spiffeid.TrustDomain{}, status.Errorf(codes.InvalidArgument, "trust_domain %q: %v", name, err)
	}
	if td.Name() != name {
		return spiffeid.TrustDomain{}, status.Errorf(codes.InvalidArgument, "trust_domain %q: give the trust domain name (%q), not a SPIFFE ID", name, td.Name())
	}
	if td == s.td {
		return spiffeid.TrustDomain{}, status.Errorf(codes.InvalidArgument, "trust_domain %q is this server's own trust domain", name)
	}
	return td, nil
}

// relationshipInput checks a relationship of a create or update request
// and decodes its bootstrap bundle.
func (s *Server) relationshipInput(in *sigilv1.FederationRelationship, bootstrap []byte) (*sigilv1.FederationRelationship, *sigilv1.Bundle, error) {
	if in == nil {
		return nil, nil, status.Error(codes.InvalidArgument, "relationship is required")
	}
	rel := proto.Clone(in).(*sigilv1.FederationRelationship)
	// Set by the store, or only by the configuration file.
	rel.CreatedAt, rel.ModifyIndex, rel.FromConfig = 0, 0, false
	td, err := s.foreignTD(rel.TrustDomain)
	if err != nil {
		return nil, nil, err
	}
	if err := federation.ValidateRelationship(s.td, rel); err != nil {
		return nil, nil, status.Error(codes.InvalidArgument, err.Error())
	}
	var b *sigilv1.Bundle
	if len(bootstrap) > 0 {
		if b, err = federation.Decode(td, bootstrap); err != nil {
			return nil, nil, status.Errorf(codes.InvalidArgument, "bootstrap_bundle: %v", err)
		}
	}
	return rel, b, nil
}

func (f *federationAdmin) CreateRelationship(ctx context.Context, req *sigilv1.CreateRelationshipRequest) (*sigilv1.FederationRelationship, error) {
	return f.putRelationship(ctx, req.Relationship, req.BootstrapBundle, true)
}

func (f *federationAdmin) UpdateRelationship(ctx context.Context, req *sigilv1.UpdateRelationshipRequest) (*sigilv1.FederationRelationship, error) {
	return f.putRelationship(ctx, req.Relationship, req.BootstrapBundle, false)
}

func (f *federationAdmin) putRelationship(ctx context.Context, in *sigilv1.FederationRelationship, bootstrap []byte, create bool) (*sigilv1.FederationRelationship, error) {
	s := f.s
	rel, b, err := s.relationshipInput(in, bootstrap)
	if err != nil {
		return nil, err
	}
	cmd := &storepb.PutFederationRelationship{Relationship: rel, Create: create, Update: !create, BootstrapBundle: b}
	if _, err := s.apply(ctx, &storepb.Command{Op: &storepb.Command_PutFederationRelationship{PutFederationRelationship: cmd}}); err != nil {
		return nil, storeError(err)
	}
	what, msg := "federation_relationship_updated", "federation relationship updated"
	if create {
		what, msg = "federation_relationship_created", "federation relationship created"
	}
	s.auditAdmin(ctx, audit.Event{What: what, Who: audit.Admin, Subject: rel.TrustDomain, Message: msg, Fields: []audit.Field{
		audit.String("trust_domain", rel.TrustDomain), audit.String("bundle_endpoint_url", rel.BundleEndpointUrl),
		audit.String("profile", rel.Profile), audit.String("endpoint_spiffe_id", rel.EndpointSpiffeId),
		audit.Bool("bootstrap_bundle", b != nil),
	}})
	if stored, err := s.store.Read().FederationRelationship(rel.TrustDomain); err == nil {
		return stored, nil
	}
	return rel, nil
}

func (f *federationAdmin) DeleteRelationship(ctx context.Context, req *sigilv1.DeleteRelationshipRequest) (*sigilv1.DeleteRelationshipResponse, error) {
	s := f.s
	if _, err := s.foreignTD(req.TrustDomain); err != nil {
		return nil, err
	}
	cmd := &storepb.DeleteFederationRelationship{TrustDomain: req.TrustDomain, KeepBundle: req.KeepBundle}
	if _, err := s.apply(ctx, &storepb.Command{Op: &storepb.Command_DeleteFederationRelationship{DeleteFederationRelationship: cmd}}); err != nil {
		return nil, storeError(err)
	}
	s.auditAdmin(ctx, audit.Event{What: "federation_relationship_deleted", Who: audit.Admin, Subject: req.TrustDomain, Message: "federation relationship deleted",
		Fields: []audit.Field{audit.String("trust_domain", req.TrustDomain), audit.Bool("keep_bundle", req.KeepBundle)}})
	return &sigilv1.DeleteRelationshipResponse{}, nil
}

func (f *federationAdmin) GetRelationship(ctx context.Context, req *sigilv1.GetRelationshipRequest) (*sigilv1.FederationRelationship, error) {
	if _, err := f.s.foreignTD(req.TrustDomain); err != nil {
		return nil, err
	}
	rel, err := f.s.store.Read().FederationRelationship(req.TrustDomain)
	if errors.Is(err, raftstore.ErrNotFound) {
		return nil, status.Errorf(codes.NotFound, "no federation relationship with trust domain %q", req.TrustDomain)
	}
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return rel, nil
}

func (f *federationAdmin) ListRelationships(ctx context.Context, _ *sigilv1.ListRelationshipsRequest) (*sigilv1.ListRelationshipsResponse, error) {
	return &sigilv1.ListRelationshipsResponse{Relationships: f.s.store.Read().FederationRelationships()}, nil
}

// decodeBundle decodes the document of a SetBundle request.
func decodeBundle(td spiffeid.TrustDomain, format string, doc []byte) (*sigilv1.Bundle, error) {
	if len(doc) == 0 {
		return nil, status.Error(codes.InvalidArgument, "document is required")
	}
	var (
		b   *sigilv1.Bundle
		err error
	)
	switch format {
	case "", "spiffe":
		b, err = federation.Decode(td, doc)
	case "pem":
		b, err = federation.DecodePEM(td, doc)
	default:
		return nil, status.Errorf(codes.InvalidArgument, "format %q: must be spiffe or pem", format)
	}
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "bundle of %q: %v", td.Name(), err)
	}
	return b, nil
}

func (f *federationAdmin) SetBundle(ctx context.Context, req *sigilv1.SetBundleRequest) (*sigilv1.Bundle, error) {
	s := f.s
	td, err := s.foreignTD(req.TrustDomain)
	if err != nil {
		return nil, err
	}
	b, err := decodeBundle(td, req.Format, req.Document)
	if err != nil {
		return nil, err
	}
	cmd := &storepb.SetFederatedBundle{Bundle: b}
	if _, err := s.apply(ctx, &storepb.Command{Op: &storepb.Command_SetFederatedBundle{SetFederatedBundle: cmd}}); err != nil {
		return nil, storeError(err)
	}
	s.auditAdmin(ctx, audit.Event{What: "federated_bundle_set", Who: audit.Admin, Subject: td.Name(), Message: "federated bundle set", Fields: []audit.Field{
		audit.String("trust_domain", td.Name()), audit.Uint64("sequence_number", b.SequenceNumber),
		audit.Int("x509_authorities", len(b.X509Authorities)), audit.Int("jwt_authorities", len(b.JwtAuthorities)),
	}})
	if stored, err := s.store.Read().FederatedBundle(td.Name()); err == nil {
		return stored, nil
	}
	return b, nil
}

func (f *federationAdmin) DeleteBundle(ctx context.Context, req *sigilv1.DeleteBundleRequest) (*sigilv1.DeleteBundleResponse, error) {
	s := f.s
	if _, err := s.foreignTD(req.TrustDomain); err != nil {
		return nil, err
	}
	cmd := &storepb.DeleteFederatedBundle{TrustDomain: req.TrustDomain}
	if _, err := s.apply(ctx, &storepb.Command{Op: &storepb.Command_DeleteFederatedBundle{DeleteFederatedBundle: cmd}}); err != nil {
		return nil, storeError(err)
	}
	s.auditAdmin(ctx, audit.Event{What: "federated_bundle_deleted", Who: audit.Admin, Subject: req.TrustDomain, Message: "federated bundle deleted",
		Fields: []audit.Field{audit.String("trust_domain", req.TrustDomain)}})
	return &sigilv1.DeleteBundleResponse{}, nil
}

// bundleStatus describes b (nil: absent) of td as ListBundles shows it.
func bundleStatus(td string, b *sigilv1.Bundle, rel *sigilv1.FederationRelationship, st *sigilv1.FederationStatus) *sigilv1.BundleStatus {
	out := &sigilv1.BundleStatus{TrustDomain: td, Relationship: rel, Status: st}
	if b != nil {
		out.Present = true
		out.SequenceNumber = b.SequenceNumber
		out.X509Authorities = int32(len(b.X509Authorities))
		out.JwtAuthorities = int32(len(b.JwtAuthorities))
		out.RefreshHint = b.RefreshHint
		out.UpdatedAt = b.UpdatedAt
	}
	return out
}

func (f *federationAdmin) ListBundles(ctx context.Context, _ *sigilv1.ListBundlesRequest) (*sigilv1.ListBundlesResponse, error) {
	s := f.s
	r := s.store.Read()
	own, err := r.Bundle(s.td.Name())
	if err != nil {
		return nil, status.Errorf(codes.Internal, "reading the local bundle: %v", err)
	}
	local := bundleStatus(s.td.Name(), own, nil, nil)
	local.Local = true
	local.PartnerFetches = r.PartnerFetches()
	out := &sigilv1.ListBundlesResponse{Bundles: []*sigilv1.BundleStatus{local}}

	rels := r.FederationRelationships()
	relByTD := make(map[string]*sigilv1.FederationRelationship, len(rels))
	for _, rel := range rels {
		relByTD[rel.TrustDomain] = rel
	}
	statuses := r.FederationStatuses()
	stByTD := make(map[string]*sigilv1.FederationStatus, len(statuses))
	for _, st := range statuses {
		stByTD[st.TrustDomain] = st
	}
	seen := make(map[string]bool)
	for _, b := range r.FederatedBundles() {
		seen[b.TrustDomain] = true
		out.Bundles = append(out.Bundles, bundleStatus(b.TrustDomain, b, relByTD[b.TrustDomain], stByTD[b.TrustDomain]))
	}
	for _, rel := range rels {
		if !seen[rel.TrustDomain] {
			out.Bundles = append(out.Bundles, bundleStatus(rel.TrustDomain, nil, rel, stByTD[rel.TrustDomain]))
		}
	}
	// The local bundle first, then by trust domain.
	slices.SortFunc(out.Bundles[1:], func(a, b *sigilv1.BundleStatus) int { return strings.Compare(a.TrustDomain, b.TrustDomain) })
	return out, nil
}

// RefreshBundle asks the refreshing server (the leader) to fetch now and
// waits, through the store's change notifications, for an attempt at or
// after the request.
func (f *federationAdmin) RefreshBundle(ctx context.Context, req *sigilv1.RefreshBundleRequest) (*sigilv1.BundleStatus, error) {
	s := f.s
	if _, err := s.foreignTD(req.TrustDomain); err != nil {
		return nil, err
	}
	if req.TimeoutMs < 0 {
		return nil, status.Error(codes.InvalidArgument, "timeout_ms must not be negative")
	}
	wait := DefaultRefreshWait
	if req.TimeoutMs > 0 {
		wait = min(time.Duration(req.TimeoutMs)*time.Millisecond, maxRefreshWait)
	}
	if _, err := s.apply(ctx, &storepb.Command{Op: &storepb.Command_RequestFederationRefresh{
		RequestFederationRefresh: &storepb.RequestFederationRefresh{TrustDomain: req.TrustDomain},
	}}); err != nil {
		return nil, storeError(err)
	}
	s.auditAdmin(ctx, audit.Event{What: "federation_refresh_requested", Who: audit.Admin, Subject: req.TrustDomain, Message: "federation refresh requested",
		Fields: []audit.Field{audit.String("trust_domain", req.TrustDomain)}})
	// The count of requests after this one was applied: the refresher
	// answers it (or a later one) with an attempt.
	var requests uint64
	if st, err := s.store.Read().FederationStatus(req.TrustDomain); err == nil {
		requests = st.RefreshRequests
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	for {
		changed := s.store.Changed()
		r := s.store.Read()
		if _, err := r.FederationRelationship(req.TrustDomain); errors.Is(err, raftstore.ErrNotFound) {
			return nil, status.Errorf(codes.NotFound, "no federation relationship with trust domain %q", req.TrustDomain)
		}
		if st, err := r.FederationStatus(req.TrustDomain); err == nil && requests > 0 && st.RefreshesDone >= requests {
			return f.statusOf(r, req.TrustDomain), nil
		}
		select {
		case <-changed:
		case <-wctx.Done():
			if ctx.Err() != nil {
				return nil, status.FromContextError(ctx.Err()).Err()
			}
			return nil, status.Errorf(codes.DeadlineExceeded, "no refresh attempt of %q within %v (the leader refreshes; is it up?)", req.TrustDomain, wait)
		}
	}
}

// statusOf is the BundleStatus of a federated trust domain.
func (f *federationAdmin) statusOf(r *raftstore.Reader, td string) *sigilv1.BundleStatus {
	var (
		b   *sigilv1.Bundle
		rel *sigilv1.FederationRelationship
		st  *sigilv1.FederationStatus
	)
	if v, err := r.FederatedBundle(td); err == nil {
		b = v
	}
	if v, err := r.FederationRelationship(td); err == nil {
		rel = v
	}
	if v, err := r.FederationStatus(td); err == nil {
		st = v
	}
	return bundleStatus(td, b, rel, st)
}

// getBundle serves Admin.GetBundle: the own bundle, or the federated
// bundle of trustDomain.
func (s *Server) getBundle(trustDomain string) (*sigilv1.Bundle, error) {
	if trustDomain == "" || trustDomain == s.td.Name() {
		b, err := s.store.Read().Bundle(s.td.Name())
		if err != nil {
			return nil, status.Errorf(codes.NotFound, "bundle: %v", err)
		}
		return b, nil
	}
	if _, err := s.foreignTD(trustDomain); err != nil {
		return nil, err
	}
	b, err := s.store.Read().FederatedBundle(trustDomain)
	if errors.Is(err, raftstore.ErrNotFound) {
		return nil, status.Errorf(codes.NotFound, "no bundle of trust domain %q", trustDomain)
	}
	if err != nil {
		return nil, status.Error(codes.Internal, fmt.Sprintf("bundle of %q: %v", trustDomain, err))
	}
	return b, nil
}
