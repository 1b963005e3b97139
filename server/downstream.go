package server

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/audit"
	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/internal/sourcelimit"
	"github.com/sigil-id/sigil/registration"
)

// The Downstream service (nested topology) signs the CA certificates of
// the servers of a downstream Sigil cluster of this trust domain. It is
// served on the node API port, answers Unimplemented unless
// Config.AllowDownstream, and authenticates its callers itself (the node
// API's auth interceptors check agents, and skip it): the client
// certificate chain of the TLS connection must verify as an X.509-SVID of
// this trust domain against the current bundle, and its SPIFFE ID must be
// the spiffe_id of a registration entry marked downstream. Agents and
// servers are refused even then. Any refusal comes before anything is
// signed; the node guard (nodeapi_limits.go) treats a connection that
// presented such an SVID as authenticated, and refuses the call on its
// headers on any other connection.

// Limits of the Downstream service.
const (
	// downstreamRate (mints per second) and downstreamBurst are the token
	// bucket of one caller SPIFFE ID: a downstream server mints a CA
	// certificate when it prepares a key, every few hours; the burst lets
	// the servers of a downstream cluster that share an ID start at once.
	downstreamRate  = 1
	downstreamBurst = 3
	// maxDownstreamCallers bounds the caller IDs whose buckets are kept;
	// idle ones are forgotten when it is reached.
	maxDownstreamCallers = 4096
)

// downstreamAPI serves sigilv1.Downstream on the node API.
type downstreamAPI struct {
	sigilv1.UnimplementedDownstreamServer
	s *Server

	mu      sync.Mutex
	callers sourcelimit.Table[*downstreamCaller]
}

func newDownstreamAPI(s *Server) *downstreamAPI {
	return &downstreamAPI{
		s: s,
		callers: sourcelimit.NewTable(maxDownstreamCallers, time.Second, func() *downstreamCaller {
			return &downstreamCaller{bucket: sourcelimit.NewBucket(downstreamRate, downstreamBurst)}
		}),
	}
}

// downstreamCaller is the rate limit of one caller SPIFFE ID.
type downstreamCaller struct{ bucket *rate.Limiter }

// Idle reports whether forgetting c would change nothing.
func (c *downstreamCaller) Idle(now time.Time) bool { return sourcelimit.BucketFull(c.bucket, now) }

// allow takes a token from the bucket of id.
func (d *downstreamAPI) allow(id spiffeid.ID) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.s.cfg.Clock.Now()
	c, ok := d.callers.Add(id.String(), now)
	return ok && c.bucket.AllowN(now, 1)
}

// errDownstreamOff is the answer of a server without AllowDownstream.
var errDownstreamOff = status.Error(codes.Unimplemented, "this server does not sign downstream CAs: allow_downstream is off in its server configuration")

// MintX509CA signs the CA certificate of a downstream server's new key
// with this server's active X.509 CA. The caller must be a downstream
// workload (see above); the CSR is checked by ca.UpstreamCATemplate (the
// trust domain ID as its only URI SAN, a valid signature, at most
// ca.MaxCSRSize bytes); the lifetime is ttl_seconds, or the CA TTL when
// 0, at most the CA TTL and the largest x509_svid_ttl of the caller's
// downstream entries when they all set one, and never past the active CA
// certificate. The answer's chain is the new certificate and the active
// CA's chain without the bundle's trust anchors, which are the roots.
func (d *downstreamAPI) MintX509CA(ctx context.Context, req *sigilv1.MintX509CARequest) (*sigilv1.MintX509CAResponse, error) {
	s := d.s
	id, entries, err := s.authenticateDownstream(ctx)
	if err != nil {
		return nil, err
	}
	if !d.allow(id) {
		return nil, s.refuseDownstream(id, "rate", nil, status.Errorf(codes.ResourceExhausted,
			"%s asks for downstream CA certificates faster than %d per second (burst %d); retry later", id, downstreamRate, downstreamBurst))
	}
	if len(req.Csr) > ca.MaxCSRSize {
		return nil, s.refuseDownstream(id, "malformed", nil, status.Errorf(codes.InvalidArgument,
			"CSR of %d bytes is too large (at most %d)", len(req.Csr), ca.MaxCSRSize))
	}
	ttl, err := downstreamTTL(req.TtlSeconds, s.cfg.CATTL, entries)
	if err != nil {
		return nil, s.refuseDownstream(id, "malformed", nil, status.Error(codes.InvalidArgument, err.Error()))
	}
	caReq := ca.X509CARequest{CSR: req.Csr, TrustDomain: s.td, TTL: ttl}
	// The CSR is checked before the CA key is used, so that a bad one is
	// told apart from a signing failure.
	now := s.cfg.Clock.Now()
	if _, _, err := ca.UpstreamCATemplate(caReq, now, 0, now.Add(ttl)); err != nil {
		return nil, s.refuseDownstream(id, "malformed", nil, status.Errorf(codes.InvalidArgument, "CSR: %v", err))
	}
	c := s.x509CA()
	if c == nil {
		return nil, status.Error(codes.Unavailable, "this server has no active CA yet")
	}
	chain, err := c.SignDownstreamCA(ctx, caReq)
	switch {
	case errors.Is(err, ca.ErrNoIntermediates), errors.Is(err, ca.ErrIntermediateCA):
		return nil, s.refuseDownstream(id, "no_intermediates", nil, status.Error(codes.FailedPrecondition, err.Error()))
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return nil, status.FromContextError(err).Err()
	case err != nil:
		s.audit(audit.Event{What: "downstream_ca_failed", Who: id.String(), Subject: id.String(), Outcome: audit.Failure,
			Message: "downstream CA signing failed", Fields: []audit.Field{audit.String("caller_id", id.String()), audit.Err(err)}})
		return nil, status.Errorf(codes.Internal, "signing: %v", err)
	}
	bundle, err := s.currentBundle()
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	roots := bundle.X509Authorities()
	resp := &sigilv1.MintX509CAResponse{CaChain: [][]byte{chain[0].Raw}, Roots: rawChain(roots)}
	for _, cert := range chain[1:] {
		if !containsCert(roots, cert) {
			resp.CaChain = append(resp.CaChain, cert.Raw)
		}
	}
	s.audit(audit.Event{What: "downstream_ca_signed", Who: id.String(), Subject: id.String(), Message: "downstream CA certificate signed",
		Fields: []audit.Field{audit.String("caller_id", id.String()), audit.String("serial", chain[0].SerialNumber.Text(16)),
			audit.Time("not_after", chain[0].NotAfter), audit.String("ca_subject", chain[0].Subject.String())}})
	return resp, nil
}

// downstreamTTL is the lifetime of a downstream CA certificate asked for
// with reqSeconds (0: the CA TTL).
func downstreamTTL(reqSeconds int64, caTTL time.Duration, entries []*sigilv1.Entry) (time.Duration, error) {
	if reqSeconds < 0 {
		return 0, fmt.Errorf("ttl_seconds %d is negative", reqSeconds)
	}
	ttl := caTTL
	if reqSeconds > 0 && reqSeconds < int64(caTTL/time.Second) {
		ttl = time.Duration(reqSeconds) * time.Second
	}
	var bound time.Duration
	for _, e := range entries {
		if e.X509SvidTtl == 0 {
			return ttl, nil
		}
		bound = max(bound, ttlSeconds(e.X509SvidTtl))
	}
	if bound > 0 && bound < ttl {
		ttl = bound
	}
	return ttl, nil
}

// containsCert reports whether certs holds cert.
func containsCert(certs []*x509.Certificate, cert *x509.Certificate) bool {
	for _, c := range certs {
		if bytes.Equal(c.Raw, cert.Raw) {
			return true
		}
	}
	return false
}

// authenticateDownstream authenticates a Downstream call: see the top of
// this file. It returns the caller's SPIFFE ID and its downstream
// entries; a refusal is audited.
func (s *Server) authenticateDownstream(ctx context.Context) (spiffeid.ID, []*sigilv1.Entry, error) {
	if !s.cfg.AllowDownstream {
		return spiffeid.ID{}, nil, errDownstreamOff
	}
	p, ok := peer.FromContext(ctx)
	if !ok {
		return spiffeid.ID{}, nil, status.Error(codes.Unauthenticated, "no peer information")
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 {
		return spiffeid.ID{}, nil, s.refuseDownstream(spiffeid.ID{}, "unauthenticated", nil,
			status.Error(codes.Unauthenticated, "the X.509-SVID of a downstream workload is required"))
	}
	bundle, err := s.currentBundle()
	if err != nil {
		return spiffeid.ID{}, nil, status.Error(codes.Unavailable, err.Error())
	}
	id, _, err := x509svid.Verify(ti.State.PeerCertificates, bundle, x509svid.WithTime(s.cfg.Clock.Now()))
	if err != nil {
		return spiffeid.ID{}, nil, s.refuseDownstream(spiffeid.ID{}, "unauthenticated", err,
			status.Errorf(codes.Unauthenticated, "X.509-SVID is not valid: %v", err))
	}
	entries, err := s.downstreamEntries(id)
	if err != nil {
		return spiffeid.ID{}, nil, s.refuseDownstream(id, "not_downstream", nil, err)
	}
	return id, entries, nil
}

// downstreamEntries returns the entries marked downstream whose spiffe_id
// is id, or the PermissionDenied status that refuses id.
func (s *Server) downstreamEntries(id spiffeid.ID) ([]*sigilv1.Entry, error) {
	switch {
	case registration.IsAgentID(id):
		return nil, status.Errorf(codes.PermissionDenied, "%s is an agent: only a downstream workload may ask for a CA certificate", id)
	case registration.IsServerID(id):
		return nil, status.Errorf(codes.PermissionDenied, "%s is a server: only a downstream workload may ask for a CA certificate", id)
	}
	var out []*sigilv1.Entry
	for _, e := range s.store.Read().EntriesBySPIFFEID(id.String()) {
		if e.Downstream {
			out = append(out, e)
		}
	}
	if len(out) == 0 {
		return nil, status.Errorf(codes.PermissionDenied, "%s is not the spiffe_id of any entry marked downstream", id)
	}
	return out, nil
}

// verifiedCaller reports whether certs are a valid agent SVID now, or,
// on a server with AllowDownstream, a valid SVID of a downstream workload:
// the node guard's test of an authenticated connection, which lifts the
// limits of connections without an SVID. Whether the agent is attested
// and not banned, or the workload still downstream, is checked on each
// call.
func (s *Server) verifiedCaller(certs []*x509.Certificate) bool {
	if !s.cfg.AllowDownstream {
		return s.verifiedAgent(certs)
	}
	bundle, err := s.currentBundle()
	if err != nil {
		return false
	}
	id, _, err := x509svid.Verify(certs, bundle, x509svid.WithTime(s.cfg.Clock.Now()))
	if err != nil {
		return false
	}
	if registration.IsAgentID(id) {
		return true
	}
	_, err = s.downstreamEntries(id)
	return err == nil
}

// refuseDownstream records a refused Downstream call: a
// downstream_ca_refused audit event with the caller (when known), the
// reason and the error (detail, or else public), and returns public, the
// status the caller gets.
func (s *Server) refuseDownstream(caller spiffeid.ID, reason string, detail, public error) error {
	if detail == nil {
		detail = public
	}
	who := ""
	if !caller.IsZero() {
		who = caller.String()
	}
	fs := []audit.Field{audit.String("reason", reason), audit.Err(detail)}
	if who != "" {
		fs = append(fs, audit.String("caller_id", who))
	}
	s.audit(audit.Event{What: "downstream_ca_refused", Who: who, Subject: who, Outcome: audit.Denied, Message: "downstream CA certificate refused", Fields: fs})
	return public
}
