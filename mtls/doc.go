// Package mtls gives Go services mutual TLS with SPIFFE identities from the
// Workload API and deny-by-default, identity-based authorization at the
// point where a call arrives.
//
// A server in a few lines:
//
//	src, err := mtls.NewSource(ctx) // $SPIFFE_ENDPOINT_SOCKET or mtls.WithSocket
//	if err != nil { ... }           // ErrSocketMissing, ErrNoIdentity: say what to fix
//	defer src.Close()
//
//	pol, err := policy.Watch("/etc/myservice/policy.hcl") // hot-reloaded
//	enf := mtls.NewEnforcer(pol, mtls.WithServiceName("users"),
//		mtls.WithMetrics(registry), mtls.WithLogger(logger))
//
//	srv := &http.Server{
//		Handler:   mtls.HTTPMiddleware(enf.Authorize)(mux),
//		TLSConfig: mtls.ServerConfig(src),
//	}
//	srv.ListenAndServeTLS("", "")
//
// and a client:
//
//	client := &http.Client{Transport: &http.Transport{
//		TLSClientConfig:   mtls.ClientConfig(src, mtls.WithServerID(usersID)),
//		ForceAttemptHTTP2: true,
//	}}
//
// # Rotation
//
// Source follows the Workload API stream; ServerConfig and ClientConfig
// read the current SVID at every handshake (GetCertificate,
// GetClientCertificate) and the current bundles at every verification, so
// a rotated SVID or a new CA in the bundle is used by the next handshake
// and nothing restarts. Established connections, HTTP/2 and gRPC ones
// included, keep working: TLS authenticates a connection once.
//
// # Authorization
//
// An Authorizer decides whether a peer may reach a target (a service, an
// HTTP method and path, a gRPC method). The TLS layer applies one per
// connection (WithAuthorizer): servers accept any workload whose SVID
// verifies against the bundles by default; a client has no default and
// must name the server it accepts (WithServerID, or WithAuthorizer),
// otherwise its handshakes fail with ErrNoServerAuthorizer. Sigil's own
// agent and server identities (reserved path /sigil/) are never accepted
// as workloads: AuthorizeAny, AuthorizeMemberOf and policy patterns do
// not match them, only AuthorizeID or a policy rule naming the exact ID.
//
// The TLS layer verifies the peer's chain against the current bundles and
// applies the authorizer at every handshake, including a resumed TLS
// session (tls.Config.VerifyConnection): a peer denied by a changed
// policy, or whose CA has left the bundle, cannot come back by resuming
// an earlier session.
//
// HTTPMiddleware and the gRPC interceptors apply one per request,
// with the method and path: that is where a policy belongs. An Enforcer
// applies a policy (package policy) and counts and logs every decision;
// hooks (WithHook) and custom Authorizer functions add custom logic.
//
// Denials are answered with a reason the caller can act on: HTTP 403 or
// gRPC PermissionDenied with, for example, "mtls: permission denied:
// spiffe://example.org/web may not call DELETE /v1/users/1 on service users:
// no rule in policy.hcl allows it (deny by default; ...)".
//
// # Observability
//
// With WithMetrics(reg) an Enforcer registers, on reg only,
// sigil_mtls_policy_decisions_total{decision,rule} (decision is allowed,
// denied or shadow_denied) and the histogram
// sigil_mtls_policy_decision_duration_seconds. Decisions are logged with
// zap at the rates set by WithLogSampling. policy.WithWatchRegisterer adds
// reload metrics.
//
// # JWT-SVIDs
//
// Behind a proxy that terminates TLS, JWTBearer authenticates the caller by
// a JWT-SVID bearer token checked against JWT bundles and an audience, and
// HTTPMiddleware then authorizes the ID it found.
package mtls
