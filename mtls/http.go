package mtls

import (
	"context"
	"fmt"
	"net/http"
	"path"
	"strings"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"

	"github.com/sigil-id/sigil/mtls/policy"
)

type peerKey struct{}

type jwtKey struct{}

// WithPeerID returns a copy of ctx carrying the caller's SPIFFE ID.
func WithPeerID(ctx context.Context, id spiffeid.ID) context.Context {
	return context.WithValue(ctx, peerKey{}, id)
}

// PeerIDFromContext returns the caller's SPIFFE ID that HTTPMiddleware,
// JWTBearer or the gRPC interceptors put in the request context.
func PeerIDFromContext(ctx context.Context) (spiffeid.ID, bool) {
	id, ok := ctx.Value(peerKey{}).(spiffeid.ID)
	return id, ok && !id.IsZero()
}

// JWTSVIDFromContext returns the JWT-SVID that JWTBearer validated.
func JWTSVIDFromContext(ctx context.Context) (*jwtsvid.SVID, bool) {
	s, ok := ctx.Value(jwtKey{}).(*jwtsvid.SVID)
	return s, ok
}

// HTTPMiddleware authorizes every request: it takes the caller's SPIFFE ID
// (from JWTBearer if it ran first, otherwise from the client certificate
// of the mutual TLS connection), asks authz about the request's method and
// cleaned path, and either puts the ID in the request context and calls
// next, or answers 401 (no identity) or 403 with the reason as the body.
func HTTPMiddleware(authz Authorizer) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ctx := r.Context()
			id, ok := PeerIDFromContext(ctx)
			if !ok {
				if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
					http.Error(w, "mtls: no client identity: connect with mutual TLS and an X.509-SVID (or send a JWT-SVID bearer token where one is accepted)", http.StatusUnauthorized)
					return
				}
				var err error
				if id, err = PeerID(*r.TLS); err != nil {
					http.Error(w, err.Error(), http.StatusUnauthorized)
					return
				}
				ctx = WithPeerID(ctx, id)
			}
			if err := authz(ctx, id, policy.HTTPTarget("", r.Method, cleanPath(r.URL.Path))); err != nil {
				w.Header().Set("X-Content-Type-Options", "nosniff")
				http.Error(w, prefixed(err).Error(), http.StatusForbidden)
				return
			}
			next.ServeHTTP(w, r.WithContext(ctx))
		})
	}
}

// cleanPath is the path a request is routed by (ServeMux cleans paths the
// same way), so "/public/../admin" is authorized as "/admin".
func cleanPath(p string) string {
	if p == "" {
		return "/"
	}
	if p[0] != '/' {
		p = "/" + p
	}
	if !strings.Contains(p, "/.") && !strings.Contains(p, "//") && (len(p) == 1 || p[len(p)-1] != '/') {
		return p
	}
	return path.Clean(p)
}

// JWTBearer authenticates requests by a JWT-SVID in the Authorization
// header ("Bearer <token>"), for callers behind a proxy that terminates
// TLS: the token must be signed by a key in bundles for the trust domain
// of its subject, unexpired, and issued for audience. The caller's SPIFFE
// ID goes into the request context (where HTTPMiddleware finds it); a
// request without a valid token gets 401 with the reason.
func JWTBearer(bundles jwtbundle.Source, audience string) func(http.Handler) http.Handler {
	if audience == "" {
		panic("mtls: JWTBearer needs an audience")
	}
	aud := []string{audience}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h := r.Header.Get("Authorization")
			scheme, token, ok := strings.Cut(h, " ")
			if h == "" || !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(token) == "" {
				w.Header().Set("WWW-Authenticate", `Bearer realm="spiffe"`)
				http.Error(w, "mtls: missing JWT-SVID: send Authorization: Bearer <JWT-SVID for audience "+audience+">", http.StatusUnauthorized)
				return
			}
			svid, err := jwtsvid.ParseAndValidate(strings.TrimSpace(token), bundles, aud)
			if err != nil {
				w.Header().Set("WWW-Authenticate", `Bearer realm="spiffe", error="invalid_token"`)
				http.Error(w, fmt.Sprintf("mtls: invalid JWT-SVID: %v", err), http.StatusUnauthorized)
				return
			}
			ctx := WithPeerID(r.Context(), svid.ID)
			ctx = context.WithValue(ctx, jwtKey{}, svid)
			next.ServeHTTP(w, r.WithContext(ctx))
		})
	}
}
