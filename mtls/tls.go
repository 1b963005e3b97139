package mtls

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/sigil-id/sigil/mtls/policy"
)

// Authorizer decides whether peer may reach target; a non-nil error
// refuses the call and is reported to the caller. Enforcer.Authorize is an
// Authorizer, and so is any function with this signature: that is the hook
// for custom authorization logic.
type Authorizer func(ctx context.Context, peer spiffeid.ID, target policy.Target) error

// ErrNoServerAuthorizer is returned (wrapped) by Dial, and by the
// handshakes of a ClientConfig or ClientCredentials, when the client was
// not told which server to accept: a client must name its server
// (WithServerID) or pass an authorizer (WithAuthorizer), because any SVID
// of the trust domain, an agent's included, would otherwise pass.
var ErrNoServerAuthorizer = errors.New("mtls: the client does not say which server it accepts: pass mtls.WithServerID(serverID) (or mtls.WithAuthorizer) to ClientConfig, ClientCredentials or Dial")

// AuthorizeAny accepts every workload peer whose SVID verifies against the
// trust bundles of the source: this trust domain's and every federated
// one the source holds. With Sigil, a workload's source holds the bundle
// of a foreign trust domain only when one of its registration entries
// federates with it (federates_with), so federating an entry with a trust
// domain opts the workload into accepting that trust domain's workloads
// at the TLS layer; per-request decisions (HTTPMiddleware, the gRPC
// interceptors, a policy) still apply. To accept only the own trust
// domain at the TLS layer, use AuthorizeMemberOf with it.
//
// It refuses Sigil's own identities (agents and servers, under the
// reserved /sigil/ path; see policy.IsReserved), of any trust domain:
// only AuthorizeID, naming the exact ID, accepts those.
func AuthorizeAny() Authorizer {
	return func(_ context.Context, peer spiffeid.ID, _ policy.Target) error {
		return refuseReserved(peer)
	}
}

// refuseReserved refuses a Sigil agent or server identity where a workload
// is expected.
func refuseReserved(peer spiffeid.ID) error {
	if policy.IsReserved(peer) {
		return fmt.Errorf("mtls: peer %s is a Sigil agent or server identity (reserved path %s), not a workload: accept it only by naming this exact ID (mtls.AuthorizeID or mtls.WithServerID)", peer, policy.ReservedPath)
	}
	return nil
}

// AuthorizeID accepts only the given SPIFFE IDs (a Sigil agent or server
// ID too, when it is listed).
func AuthorizeID(allowed ...spiffeid.ID) Authorizer {
	return func(_ context.Context, peer spiffeid.ID, _ policy.Target) error {
		for _, id := range allowed {
			if peer == id {
				return nil
			}
		}
		want := make([]string, len(allowed))
		for i, id := range allowed {
			want[i] = id.String()
		}
		return fmt.Errorf("mtls: unexpected peer %s: want %s", peer, strings.Join(want, " or "))
	}
}

// AuthorizeMemberOf accepts the workload peers of the given trust
// domains; like AuthorizeAny it refuses Sigil's own agent and server
// identities (reserved /sigil/ path).
func AuthorizeMemberOf(tds ...spiffeid.TrustDomain) Authorizer {
	return func(_ context.Context, peer spiffeid.ID, _ policy.Target) error {
		for _, td := range tds {
			if peer.MemberOf(td) {
				return refuseReserved(peer)
			}
		}
		return fmt.Errorf("mtls: peer %s is not in an accepted trust domain (%v)", peer, tds)
	}
}

// TLSOption configures ServerConfig, ClientConfig, Listen and Dial.
type TLSOption interface {
	applyTLS(*tlsConfig)
}

type tlsOptionFunc func(*tlsConfig)

func (f tlsOptionFunc) applyTLS(c *tlsConfig) { f(c) }

type tlsConfig struct {
	authz      Authorizer
	service    string
	minVersion uint16
	nextProtos []string
}

// WithAuthorizer sets who the peer may be; it is checked at every
// handshake, resumed ones included. Defaults: a server accepts any
// workload peer whose SVID verifies against the bundles (AuthorizeAny),
// leaving per-request decisions to HTTPMiddleware or the gRPC
// interceptors; a client has no default and refuses every server with
// ErrNoServerAuthorizer: it must say which server it accepts (WithServerID,
// or WithAuthorizer with AuthorizeID, AuthorizeMemberOf or an Enforcer).
func WithAuthorizer(a Authorizer) TLSOption {
	return tlsOptionFunc(func(c *tlsConfig) { c.authz = a })
}

// WithServerID makes a client accept only servers presenting one of ids.
// With no ids it accepts none.
func WithServerID(ids ...spiffeid.ID) TLSOption { return WithAuthorizer(AuthorizeID(ids...)) }

// WithService names the service a connection-level authorizer is asked
// about (the Target of a TLS-level check is policy.ServiceTarget(name)).
func WithService(name string) TLSOption {
	return tlsOptionFunc(func(c *tlsConfig) { c.service = name })
}

// WithMinVersion lowers or raises the minimum TLS version (default 1.3).
func WithMinVersion(v uint16) TLSOption {
	return tlsOptionFunc(func(c *tlsConfig) { c.minVersion = v })
}

// WithNextProtos sets the ALPN protocols (e.g. "h2", "http/1.1").
func WithNextProtos(protos ...string) TLSOption {
	return tlsOptionFunc(func(c *tlsConfig) { c.nextProtos = protos })
}

func newTLSConfig(opts []TLSOption) tlsConfig {
	c := tlsConfig{minVersion: tls.VersionTLS13}
	for _, o := range opts {
		o.applyTLS(&c)
	}
	return c
}

// ServerConfig returns a server *tls.Config that presents src's current
// SVID at every handshake (so rotation needs no restart), requires a
// client SVID that verifies against src's current bundles (federated
// ones included), and applies the authorizer. TLS 1.3 is the minimum
// unless WithMinVersion says otherwise.
//
// The client's SVID is verified and authorized at every handshake, a
// resumed TLS session included (VerifyConnection): a session resumed after
// the policy changed, or after the client's CA left the bundle, is refused
// like a new one.
func ServerConfig(src X509Source, opts ...TLSOption) *tls.Config {
	c := newTLSConfig(opts)
	authz := c.authz
	if authz == nil {
		authz = AuthorizeAny()
	}
	return &tls.Config{
		MinVersion:     c.minVersion,
		NextProtos:     c.nextProtos,
		ClientAuth:     tls.RequireAnyClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return certificate(src) },
		// Not VerifyPeerCertificate: Go skips it when a session resumes.
		VerifyConnection: verifyConnection(src, authz, c.service, "client"),
	}
}

// ClientConfig returns a client *tls.Config that presents src's current
// SVID, verifies the server's SVID against src's current bundles and
// applies the authorizer, at every handshake, resumed sessions included.
// The client must say which server it accepts (WithServerID, or
// WithAuthorizer); without either every handshake fails with
// ErrNoServerAuthorizer. Host names are not checked: the SPIFFE ID is the
// server's identity.
func ClientConfig(src X509Source, opts ...TLSOption) *tls.Config {
	c := newTLSConfig(opts)
	authz := c.authz
	if authz == nil {
		authz = func(context.Context, spiffeid.ID, policy.Target) error { return ErrNoServerAuthorizer }
	}
	return &tls.Config{
		MinVersion:           c.minVersion,
		NextProtos:           c.nextProtos,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return certificate(src) },
		// The chain is verified against the SPIFFE bundles in
		// VerifyConnection instead of against web PKI roots.
		InsecureSkipVerify: true,
		VerifyConnection:   verifyConnection(src, authz, c.service, "server"),
	}
}

func certificate(src X509Source) (*tls.Certificate, error) {
	svid, err := src.GetX509SVID()
	if err != nil {
		return nil, fmt.Errorf("mtls: no SVID to present: %w", err)
	}
	chain := make([][]byte, len(svid.Certificates))
	for i, c := range svid.Certificates {
		chain[i] = c.Raw
	}
	return &tls.Certificate{Certificate: chain, PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}, nil
}

// verifyConnection verifies the peer's chain against src's current
// bundles and authorizes its SPIFFE ID. It runs at every handshake: on a
// resumed session the certificates come from the session, which was
// verified against the bundles of its time, so the chain is verified
// again here and VerifiedChains is not trusted.
func verifyConnection(src X509Source, authz Authorizer, service, role string) func(tls.ConnectionState) error {
	target := policy.ServiceTarget(service)
	return func(cs tls.ConnectionState) error {
		what := role + " certificate"
		if cs.DidResume {
			what = role + " certificate of the resumed TLS session"
		}
		if len(cs.PeerCertificates) == 0 {
			return fmt.Errorf("mtls: the %s presented no certificate (an X.509-SVID is required)", role)
		}
		id, _, err := x509svid.Verify(cs.PeerCertificates, src)
		if err != nil {
			return fmt.Errorf("mtls: %s rejected: %v", what, err)
		}
		if err := authz(context.Background(), id, target); err != nil {
			return prefixed(err)
		}
		return nil
	}
}

func prefixed(err error) error {
	if strings.HasPrefix(err.Error(), "mtls: ") {
		return err
	}
	return fmt.Errorf("mtls: %w", err)
}

// Listen announces on the local network address and returns a listener
// whose connections are mutual TLS with ServerConfig(src, opts...).
func Listen(network, addr string, src X509Source, opts ...TLSOption) (net.Listener, error) {
	l, err := tls.Listen(network, addr, ServerConfig(src, opts...))
	if err != nil {
		return nil, fmt.Errorf("mtls: listen %s: %w", addr, err)
	}
	return l, nil
}

// Dial connects to addr and completes the mutual TLS handshake with
// ClientConfig(src, opts...). With TLS 1.3, a server that refuses the
// client's SVID reports it at the first read or write.
//
// Without WithServerID or WithAuthorizer it fails with
// ErrNoServerAuthorizer before connecting.
func Dial(ctx context.Context, network, addr string, src X509Source, opts ...TLSOption) (*tls.Conn, error) {
	if newTLSConfig(opts).authz == nil {
		return nil, fmt.Errorf("mtls: dial %s: %w", addr, ErrNoServerAuthorizer)
	}
	d := tls.Dialer{Config: ClientConfig(src, opts...)}
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("mtls: dial %s: %w", addr, err)
	}
	return c.(*tls.Conn), nil
}

// PeerID returns the SPIFFE ID in the peer certificate of a completed
// handshake.
func PeerID(state tls.ConnectionState) (spiffeid.ID, error) {
	if len(state.PeerCertificates) == 0 {
		return spiffeid.ID{}, errors.New("mtls: the peer presented no certificate")
	}
	id, err := x509svid.IDFromCert(state.PeerCertificates[0])
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("mtls: peer certificate has no SPIFFE ID: %v", err)
	}
	return id, nil
}

// PeerIDFromConn returns the peer's SPIFFE ID of a TLS connection,
// completing the handshake first if needed.
func PeerIDFromConn(c net.Conn) (spiffeid.ID, error) {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return spiffeid.ID{}, errors.New("mtls: not a TLS connection")
	}
	if err := tc.Handshake(); err != nil {
		return spiffeid.ID{}, fmt.Errorf("mtls: handshake: %w", err)
	}
	return PeerID(tc.ConnectionState())
}
