package workloadapi

import (
	"context"
	"errors"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// JWTSVID is one JWT-SVID handed to a workload.
type JWTSVID struct {
	SPIFFEID  spiffeid.ID
	Token     string
	Hint      string
	ExpiresAt time.Time
}

// JWTCache is the JWT part of the agent's cache. A Cache that also
// implements it serves FetchJWTSVID, FetchJWTBundles and ValidateJWTSVID;
// otherwise those methods answer Unimplemented.
type JWTCache interface {
	// FetchJWTSVIDs returns a JWT-SVID for audience for every entry the
	// selectors match (only those with SPIFFE ID spiffeID, when it is not
	// empty), minting or refreshing them as needed. It returns
	// ErrNoIdentity when no entry matches.
	FetchJWTSVIDs(ctx context.Context, selectors []*sigilv1.Selector, audience []string, spiffeID string) ([]JWTSVID, error)
	// JWTBundles returns the JWT bundles, by trust domain, of a workload
	// with the given attested selectors: the own trust domain's (absent
	// before the first one) and the federated bundles of the trust
	// domains that the entries the selectors match name in
	// federates_with. It also returns a channel closed when that set may
	// have changed (a bundle in it changed, or the entries' federates_with
	// did); the caller asks again then.
	JWTBundles(selectors []*sigilv1.Selector) (map[spiffeid.TrustDomain]*jwtbundle.Bundle, <-chan struct{})
}

// ErrNoIdentity is returned by JWTCache.FetchJWTSVIDs when the caller is
// entitled to no identity.
var ErrNoIdentity = errors.New("no identity issued")

func (s *Server) jwtCache() (JWTCache, error) {
	jc, ok := s.cache.(JWTCache)
	if !ok {
		return nil, errNoJWT
	}
	return jc, nil
}

// FetchJWTSVID returns JWT-SVIDs for the requested audience: one per
// matching entry, or only the one with the requested SPIFFE ID.
func (s *Server) FetchJWTSVID(ctx context.Context, req *workloadpb.JWTSVIDRequest) (*workloadpb.JWTSVIDResponse, error) {
	jc, err := s.jwtCache()
	if err != nil {
		return nil, err
	}
	if len(req.Audience) == 0 {
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	}
	for _, a := range req.Audience {
		if a == "" {
			return nil, status.Error(codes.InvalidArgument, "audience must not be empty")
		}
	}
	if req.SpiffeId != "" {
		if _, err := spiffeid.FromString(req.SpiffeId); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "invalid requested SPIFFE ID: %v", err)
		}
	}
	sels, err := s.attest(ctx)
	if err != nil {
		return nil, err
	}
	svids, err := jc.FetchJWTSVIDs(ctx, sels, req.Audience, req.SpiffeId)
	switch {
	case errors.Is(err, ErrNoIdentity) || (err == nil && len(svids) == 0):
		return nil, s.noIdentity(ctx, sels)
	case err != nil:
		if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
			return nil, err
		}
		s.log.Warn("JWT-SVID fetch failed", zap.Error(err))
		return nil, status.Errorf(codes.Unavailable, "could not mint JWT-SVID: %v", err)
	}
	resp := &workloadpb.JWTSVIDResponse{Svids: make([]*workloadpb.JWTSVID, 0, len(svids))}
	for _, v := range svids {
		resp.Svids = append(resp.Svids, &workloadpb.JWTSVID{SpiffeId: v.SPIFFEID.String(), Svid: v.Token, Hint: v.Hint})
	}
	s.firstResponse(ctx)
	return resp, nil
}

// FetchJWTBundles streams the caller's JWT bundles (JWKS documents keyed
// by trust domain ID: the own trust domain's and those of the trust
// domains its entries federate with) and a new message whenever they
// change. Bundles are public keys: any attested local process may have
// the own one.
func (s *Server) FetchJWTBundles(_ *workloadpb.JWTBundlesRequest, stream grpc.ServerStreamingServer[workloadpb.JWTBundlesResponse]) error {
	jc, err := s.jwtCache()
	if err != nil {
		return err
	}
	ctx := stream.Context()
	sels, err := s.attest(ctx)
	if err != nil {
		return err
	}
	out := changeSender[workloadpb.JWTBundlesResponse, *workloadpb.JWTBundlesResponse]{s: s, stream: stream}
	for {
		bundles, changed := jc.JWTBundles(sels)
		if len(bundles) > 0 {
			resp, err := jwtBundlesResponse(bundles)
			if err != nil {
				s.log.Error("encoding JWT bundles", zap.Error(err))
				return status.Error(codes.Internal, "cannot encode JWT bundles")
			}
			if err := out.send(ctx, resp); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-s.stopping:
			return status.Error(codes.Unavailable, "workload API is shutting down")
		case <-changed:
		}
	}
}

func jwtBundlesResponse(bundles map[spiffeid.TrustDomain]*jwtbundle.Bundle) (*workloadpb.JWTBundlesResponse, error) {
	resp := &workloadpb.JWTBundlesResponse{Bundles: make(map[string][]byte, len(bundles))}
	for td, b := range bundles {
		doc, err := b.Marshal()
		if err != nil {
			return nil, err
		}
		resp.Bundles[td.IDString()] = doc
	}
	return resp, nil
}

// ValidateJWTSVID checks a JWT-SVID's signature against the caller's JWT
// bundles (JWTCache.JWTBundles: a token of a federated trust domain
// validates only for a caller whose entries federate with it), its expiry
// and that audience is among its audiences, and returns its SPIFFE ID and
// claims.
func (s *Server) ValidateJWTSVID(ctx context.Context, req *workloadpb.ValidateJWTSVIDRequest) (*workloadpb.ValidateJWTSVIDResponse, error) {
	jc, err := s.jwtCache()
	if err != nil {
		return nil, err
	}
	if req.Audience == "" {
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	}
	if req.Svid == "" {
		return nil, status.Error(codes.InvalidArgument, "svid must be specified")
	}
	sels, err := s.attest(ctx)
	if err != nil {
		return nil, err
	}
	bundles, _ := jc.JWTBundles(sels)
	svid, err := jwtsvid.ParseAndValidate(req.Svid, jwtbundle.NewSet(values(bundles)...), []string{req.Audience})
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "JWT-SVID is not valid: %v", err)
	}
	// go-jose allows a minute of leeway past exp; the agent does not.
	if now := s.clk.Now(); !now.Before(svid.Expiry) {
		return nil, status.Errorf(codes.InvalidArgument, "JWT-SVID is not valid: token has expired (at %s)", svid.Expiry.UTC().Format(time.RFC3339))
	}
	claims, err := structpb.NewStruct(svid.Claims)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "encoding claims: %v", err)
	}
	return &workloadpb.ValidateJWTSVIDResponse{SpiffeId: svid.ID.String(), Claims: claims}, nil
}

func values(m map[spiffeid.TrustDomain]*jwtbundle.Bundle) []*jwtbundle.Bundle {
	out := make([]*jwtbundle.Bundle, 0, len(m))
	for _, b := range m {
		out = append(out, b)
	}
	return out
}
