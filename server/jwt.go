package server

import (
	"context"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/audit"
	"github.com/sigil-id/sigil/ca"
)

// NewJWTSVID mints a JWT-SVID for an entry the calling agent is authorized
// for, with this node's active JWT key.
func (n *nodeAPI) NewJWTSVID(ctx context.Context, req *sigilv1.NewJWTSVIDRequest) (_ *sigilv1.NewJWTSVIDResponse, err error) {
	s := n.s
	defer s.metrics.countJWT(&err)
	agentID, _ := agentFrom(ctx)
	if err := ca.CheckAudience(req.Audience); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	authorized, err := s.store.Read().AuthorizedFor(agentID.String(), []string{req.EntryId})
	if err != nil {
		return nil, agentStateError(agentID, err)
	}
	entry, ok := authorized[req.EntryId]
	if !ok {
		s.audit(audit.Event{What: "jwt_svid_refused", Who: agentID.String(), Subject: req.EntryId, Outcome: audit.Denied, Message: "jwt-svid refused",
			Fields: []audit.Field{audit.String("agent_id", agentID.String()), audit.String("entry_id", req.EntryId), audit.String("reason", "not authorized")}})
		return nil, status.Errorf(codes.PermissionDenied, "agent is not authorized for entry %q", req.EntryId)
	}
	id, err := spiffeid.FromString(entry.SPIFFEID)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "entry %s has a bad SPIFFE ID: %v", entry.ID, err)
	}
	signer := s.jwtSigner()
	if signer == nil {
		return nil, status.Error(codes.Unavailable, "no active JWT signing key")
	}
	start := time.Now()
	token, exp, err := signer.SignJWTSVID(ctx, ca.JWTSVIDParams{SPIFFEID: id, Audience: req.Audience, TTL: ttlSeconds(entry.JWTTTL)})
	s.metrics.iss.observeSign(svidJWT, start)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "signing: %v", err)
	}
	now := s.cfg.Clock.Now()
	s.audit(audit.Event{What: "jwt_svid_issued", Who: agentID.String(), Subject: entry.ID, Message: "jwt-svid issued", Fields: []audit.Field{
		audit.String("agent_id", agentID.String()), audit.String("entry_id", entry.ID), audit.String("spiffe_id", entry.SPIFFEID),
		audit.Strings("audience", req.Audience), audit.String("key_id", signer.KeyID()), audit.Time("expires_at", exp),
	}})
	return &sigilv1.NewJWTSVIDResponse{Token: token, IssuedAt: now.Unix(), ExpiresAt: exp.Unix(), KeyId: signer.KeyID()}, nil
}
