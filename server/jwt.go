package server

import (
	"context"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/ca"
)

// NewJWTSVID mints a JWT-SVID for an entry the calling agent is authorized
// for, with this node's active JWT key.
func (n *nodeAPI) NewJWTSVID(ctx context.Context, req *sigilv1.NewJWTSVIDRequest) (*sigilv1.NewJWTSVIDResponse, error) {
	s := n.s
	agentID, _ := agentFrom(ctx)
	if err := ca.CheckAudience(req.Audience); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	authorized, err := s.store.Read().AuthorizedEntries(agentID.String())
	if err != nil {
		return nil, agentStateError(agentID, err)
	}
	var entry *sigilv1.Entry
	for _, e := range authorized {
		if e.Id == req.EntryId {
			entry = e
			break
		}
	}
	if entry == nil {
		s.log.Warn("jwt-svid refused", zap.Bool("audit", true), zap.String("agent_id", agentID.String()),
			zap.String("entry_id", req.EntryId), zap.String("reason", "not authorized"))
		return nil, status.Errorf(codes.PermissionDenied, "agent is not authorized for entry %q", req.EntryId)
	}
	id, err := spiffeid.FromString(entry.SpiffeId)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "entry %s has a bad SPIFFE ID: %v", entry.Id, err)
	}
	signer := s.jwtSigner()
	if signer == nil {
		return nil, status.Error(codes.Unavailable, "no active JWT signing key")
	}
	token, exp, err := signer.SignJWTSVID(ctx, ca.JWTSVIDParams{SPIFFEID: id, Audience: req.Audience, TTL: ttlSeconds(entry.JwtSvidTtl)})
	if err != nil {
		return nil, status.Errorf(codes.Internal, "signing: %v", err)
	}
	now := s.cfg.Clock.Now()
	s.log.Info("jwt-svid issued", zap.Bool("audit", true), zap.String("agent_id", agentID.String()),
		zap.String("entry_id", entry.Id), zap.String("spiffe_id", entry.SpiffeId),
		zap.Strings("audience", req.Audience), zap.String("key_id", signer.KeyID()), zap.Time("expires_at", exp))
	return &sigilv1.NewJWTSVIDResponse{Token: token, IssuedAt: now.Unix(), ExpiresAt: exp.Unix(), KeyId: signer.KeyID()}, nil
}
