package agent

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"github.com/sigil-id/sigil/registration"
)

// Transport settings of the connection to the server.
const (
	// keepaliveTime is how long the connection may be idle before the
	// agent pings the server; a server that does not answer within
	// keepaliveTimeout is considered dead and the connection is dropped.
	// The server must permit pings this often (keepalive enforcement
	// policy MinTime <= keepaliveTime, PermitWithoutStream).
	keepaliveTime    = 30 * time.Second
	keepaliveTimeout = 10 * time.Second
	// maxRecvMsgSize bounds one message from the server.
	maxRecvMsgSize = 64 << 20
	// rpcTimeout bounds unary calls.
	rpcTimeout = 30 * time.Second
)

// authorizeServer accepts only the SPIFFE IDs of Sigil server nodes of td.
func authorizeServer(td spiffeid.TrustDomain) tlsconfig.Authorizer {
	return func(id spiffeid.ID, _ [][]*x509.Certificate) error {
		if id.TrustDomain() != td {
			return fmt.Errorf("agent: server ID %q is not in trust domain %q", id, td)
		}
		if !registration.IsServerID(id) {
			return fmt.Errorf("agent: peer %q is not a Sigil server", id)
		}
		return nil
	}
}

// serverTLSConfig authenticates the server by its SVID against bundle and
// presents the client certificate returned by getCert (nil: none).
func serverTLSConfig(td spiffeid.TrustDomain, bundle x509bundle.Source, getCert func() (*tls.Certificate, error)) *tls.Config {
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		// The server is authenticated by its SPIFFE ID against the trust
		// bundle in VerifyPeerCertificate, not by host name against the
		// system roots.
		InsecureSkipVerify:    true, //nolint:gosec // verified below
		VerifyPeerCertificate: tlsconfig.VerifyPeerCertificate(bundle, authorizeServer(td)),
	}
	if getCert != nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return getCert()
		}
	}
	return cfg
}

// dial opens a client connection to addr with tlsCfg. The connection is
// established lazily and re-established by gRPC after failures.
//
// addr is one host:port or several separated by commas. gRPC's pick_first
// policy keeps one connection, to the first address that answers (the
// list is shuffled, so agents spread over the servers), and moves to the
// next when it breaks: an agent fails over within a reconnect. A host name
// goes through the DNS resolver, so a name with several addresses works
// the same way.
func dial(addr string, tlsCfg *tls.Config) (*grpc.ClientConn, error) {
	target, opts := dialTarget(addr)
	conn, err := grpc.NewClient(target, append(opts,
		grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:                keepaliveTime,
			Timeout:             keepaliveTimeout,
			PermitWithoutStream: true,
		}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvMsgSize)),
		// A dead server is noticed at once on a broken connection; a
		// reconnect should not wait long for one that is down.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoffConfig,
			MinConnectTimeout: 5 * time.Second,
		}),
	)...)
	if err != nil {
		return nil, fmt.Errorf("agent: connect to %s: %w", addr, err)
	}
	return conn, nil
}

// tlsCertificate turns an identity into a TLS client certificate.
func (id *identity) tlsCertificate() (*tls.Certificate, error) {
	if id == nil {
		return nil, errors.New("agent: no agent SVID")
	}
	cert := &tls.Certificate{PrivateKey: id.key, Leaf: id.chain[0]}
	for _, c := range id.chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return cert, nil
}

// backoffConfig is the reconnect backoff: short, since the agent has other
// servers to try.
var backoffConfig = grpcbackoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 3 * time.Second}

// serverListScheme names the resolver of comma-separated address lists.
const serverListScheme = "sigil-servers"

// dialTarget turns the configured address(es) into a gRPC target.
func dialTarget(addr string) (string, []grpc.DialOption) {
	var addrs []string
	for _, a := range strings.Split(addr, ",") {
		if a = strings.TrimSpace(a); a != "" {
			addrs = append(addrs, a)
		}
	}
	if len(addrs) == 1 {
		host, _, _ := net.SplitHostPort(addrs[0])
		if net.ParseIP(host) == nil && host != "" {
			// A name: every address it resolves to.
			return "dns:///" + addrs[0], nil
		}
		return "passthrough:///" + addrs[0], nil
	}
	rand.Shuffle(len(addrs), func(i, j int) { addrs[i], addrs[j] = addrs[j], addrs[i] })
	r := manual.NewBuilderWithScheme(serverListScheme)
	state := resolver.State{}
	for _, a := range addrs {
		state.Endpoints = append(state.Endpoints, resolver.Endpoint{Addresses: []resolver.Address{{Addr: a}}})
	}
	r.InitialState(state)
	return serverListScheme + ":///servers", []grpc.DialOption{grpc.WithResolvers(r)}
}
