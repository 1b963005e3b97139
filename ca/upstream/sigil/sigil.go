// Package sigil is the upstream authority of a downstream Sigil cluster
// in a nested topology: it has the CA certificates of this cluster's
// servers signed by an upstream Sigil cluster of the same trust domain,
// so that the workloads of both clusters trust one set of roots and talk
// to each other.
//
// On each server of the downstream cluster, an agent of the UPSTREAM
// cluster serves its Workload API; in the upstream cluster a registration
// entry marked downstream names this server's process. The upstream
// authority takes its X.509-SVID and the trust bundle from that Workload
// API (go-spiffe's X509Source, which follows every rotation), dials the
// upstream servers' node API with mutual TLS (accepting only a Sigil
// server's SVID of the trust domain) and calls Downstream/MintX509CA,
// which an upstream server with allow_downstream answers. Its roots are
// the Workload API's X.509 bundle of the trust domain: the upstream
// cluster's trust anchors, kept current by the upstream agent.
package sigil

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/registration"
)

// DefaultTimeout bounds each call to the upstream (and the wait for the
// first SVID of the Workload API).
const DefaultTimeout = 10 * time.Second

// Config configures an Upstream.
type Config struct {
	// TrustDomain is the trust domain of both clusters. Required.
	TrustDomain spiffeid.TrustDomain
	// ServerAddresses are the host:port node API addresses of the
	// upstream cluster's servers; calls go to the first that answers.
	// At least one is required.
	ServerAddresses []string
	// WorkloadAPISocket is the path of the Workload API socket of the
	// upstream cluster's agent on this machine. Required.
	WorkloadAPISocket string
	// Timeout bounds each MintX509CA and Roots call; 0 means
	// DefaultTimeout.
	Timeout time.Duration
	// Logger; nil means none.
	Logger *zap.Logger
	// Clock checks the upstream's answers; nil means the real clock.
	Clock clock.Clock
}

// DefaultConfig returns a Config with the defaults filled in.
func DefaultConfig() Config {
	return Config{Timeout: DefaultTimeout, Logger: zap.NewNop(), Clock: clock.New()}
}

// Validate fills unset fields with their defaults and reports the first
// field that is invalid.
func (c *Config) Validate() error {
	d := DefaultConfig()
	if c.Timeout == 0 {
		c.Timeout = d.Timeout
	}
	if c.Logger == nil {
		c.Logger = d.Logger
	}
	if c.Clock == nil {
		c.Clock = d.Clock
	}
	switch {
	case c.TrustDomain.IsZero():
		return errors.New("upstream/sigil: the trust domain is required")
	case len(c.ServerAddresses) == 0:
		return errors.New("upstream/sigil: server_address is required: the host:port of the upstream cluster's node API")
	case c.WorkloadAPISocket == "":
		return errors.New("upstream/sigil: workload_api_socket is required: the Workload API socket of the upstream cluster's agent on this machine")
	case !strings.HasPrefix(c.WorkloadAPISocket, "/"):
		return fmt.Errorf("upstream/sigil: workload_api_socket %q must be an absolute path", c.WorkloadAPISocket)
	case c.Timeout < 0:
		return fmt.Errorf("upstream/sigil: timeout %v is negative", c.Timeout)
	}
	for _, a := range c.ServerAddresses {
		if err := checkAddress(a); err != nil {
			return err
		}
	}
	return nil
}

// checkAddress refuses what is not host:port.
func checkAddress(a string) error {
	host, port, err := net.SplitHostPort(a)
	if err != nil || host == "" || port == "" {
		return fmt.Errorf("upstream/sigil: server_address %q is not host:port", a)
	}
	return nil
}

// reconnectBackoff is the backoff between connection attempts to the
// upstream servers.
var reconnectBackoff = backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 3 * time.Second}

// Upstream is a ca.UpstreamAuthority backed by an upstream Sigil
// cluster. It connects on first use and holds the Workload API stream and
// the gRPC connection until Close. It is safe for concurrent use.
type Upstream struct {
	cfg Config

	mu     sync.Mutex
	source *workloadapi.X509Source
	conn   *grpc.ClientConn
	closed bool
}

var _ ca.UpstreamAuthority = (*Upstream)(nil)

// New checks cfg and returns an Upstream; it does not connect yet.
func New(cfg Config) (*Upstream, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Upstream{cfg: cfg}, nil
}

// connect returns the X.509 source and the Downstream client, making them
// on first use within ctx.
func (u *Upstream) connect(ctx context.Context) (*workloadapi.X509Source, sigilv1.DownstreamClient, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return nil, nil, errors.New("upstream/sigil: closed")
	}
	if u.source == nil {
		src, err := u.newSource(ctx)
		if err != nil {
			return nil, nil, err
		}
		u.source = src
	}
	if u.conn == nil {
		conn, err := u.dial(u.source)
		if err != nil {
			return nil, nil, err
		}
		u.conn = conn
	}
	return u.source, sigilv1.NewDownstreamClient(u.conn), nil
}

// newSource opens the Workload API stream and waits for its first SVID.
func (u *Upstream) newSource(ctx context.Context) (*workloadapi.X509Source, error) {
	path := u.cfg.WorkloadAPISocket
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("upstream/sigil: the Workload API socket %s does not exist: is the upstream cluster's agent running on this machine?", path)
	} else if err != nil {
		return nil, fmt.Errorf("upstream/sigil: the Workload API socket: %w", err)
	}
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+path)))
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("upstream/sigil: no X.509-SVID from the Workload API at %s (is an entry marked downstream registered for this server in the upstream cluster?): %w", path, ctx.Err())
		}
		return nil, fmt.Errorf("upstream/sigil: Workload API at %s: %w", path, err)
	}
	svid, err := src.GetX509SVID()
	if err != nil {
		src.Close()
		return nil, fmt.Errorf("upstream/sigil: Workload API at %s: %w", path, err)
	}
	if svid.ID.TrustDomain() != u.cfg.TrustDomain {
		src.Close()
		return nil, fmt.Errorf("upstream/sigil: the Workload API at %s serves %s, not an identity of trust domain %s: nested clusters share one trust domain", path, svid.ID, u.cfg.TrustDomain)
	}
	u.cfg.Logger.Info("upstream identity from the Workload API", zap.String("spiffe_id", svid.ID.String()), zap.String("socket", path))
	return src, nil
}

// dial makes the gRPC connection to the upstream servers: mutual TLS with
// the source's SVID, accepting a Sigil server of the trust domain only.
func (u *Upstream) dial(src *workloadapi.X509Source) (*grpc.ClientConn, error) {
	td := u.cfg.TrustDomain
	authorize := tlsconfig.AdaptMatcher(func(id spiffeid.ID) error {
		if id.TrustDomain() != td || !registration.IsServerID(id) {
			return fmt.Errorf("upstream/sigil: %s is not a Sigil server of %s", id, td)
		}
		return nil
	})
	tlsCfg := tlsconfig.MTLSClientConfig(src, src, authorize)
	r := manual.NewBuilderWithScheme("sigil-upstream")
	var state resolver.State
	for _, a := range u.cfg.ServerAddresses {
		state.Endpoints = append(state.Endpoints, resolver.Endpoint{Addresses: []resolver.Address{{Addr: a}}})
	}
	r.InitialState(state)
	conn, err := grpc.NewClient("sigil-upstream:///servers", grpc.WithResolvers(r),
		grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)),
		// An upstream that was down is tried again within seconds of a
		// call, not after gRPC's default backoff of up to two minutes.
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: reconnectBackoff, MinConnectTimeout: u.cfg.Timeout}))
	if err != nil {
		return nil, fmt.Errorf("upstream/sigil: connecting to %s: %w", strings.Join(u.cfg.ServerAddresses, ","), err)
	}
	return conn, nil
}

// MintX509CA asks the upstream cluster to sign the CA certificate of
// req.CSR's key, within the configured timeout, and checks the answer
// with ca.CheckUpstreamResponse.
func (u *Upstream) MintX509CA(ctx context.Context, req ca.X509CARequest) (*ca.X509CAResponse, error) {
	if req.TrustDomain != u.cfg.TrustDomain {
		return nil, fmt.Errorf("upstream/sigil: a CA of trust domain %q asked for; the upstream is of %q", req.TrustDomain, u.cfg.TrustDomain)
	}
	pub, err := ca.VerifyCSR(req.CSR)
	if err != nil {
		return nil, fmt.Errorf("upstream/sigil: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, u.cfg.Timeout)
	defer cancel()
	_, client, err := u.connect(ctx)
	if err != nil {
		return nil, err
	}
	ttl := int64(req.TTL / time.Second)
	if ttl < 1 {
		ttl = 1
	}
	resp, err := client.MintX509CA(ctx, &sigilv1.MintX509CARequest{Csr: req.CSR, TtlSeconds: ttl})
	if err != nil {
		return nil, fmt.Errorf("upstream/sigil: MintX509CA at %s: %w", strings.Join(u.cfg.ServerAddresses, ","), err)
	}
	out, err := ParseResponse(resp)
	if err != nil {
		return nil, err
	}
	if err := ca.CheckUpstreamResponse(out, u.cfg.TrustDomain, pub, u.cfg.Clock.Now()); err != nil {
		return nil, fmt.Errorf("upstream/sigil: the upstream's answer: %w", err)
	}
	return out, nil
}

// ParseResponse parses the certificates of a MintX509CA answer, refusing
// more than ca.MaxUpstreamChain chain certificates or ca.MaxUpstreamRoots
// roots before parsing any.
func ParseResponse(resp *sigilv1.MintX509CAResponse) (*ca.X509CAResponse, error) {
	if len(resp.GetCaChain()) > ca.MaxUpstreamChain {
		return nil, fmt.Errorf("upstream/sigil: CA chain of %d certificates (at most %d)", len(resp.CaChain), ca.MaxUpstreamChain)
	}
	if len(resp.GetRoots()) > ca.MaxUpstreamRoots {
		return nil, fmt.Errorf("upstream/sigil: %d roots (at most %d)", len(resp.Roots), ca.MaxUpstreamRoots)
	}
	out := &ca.X509CAResponse{}
	for i, der := range resp.GetCaChain() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("upstream/sigil: CA chain certificate %d: %w", i+1, err)
		}
		out.Chain = append(out.Chain, c)
	}
	for i, der := range resp.GetRoots() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("upstream/sigil: root %d: %w", i+1, err)
		}
		out.Roots = append(out.Roots, c)
	}
	return out, nil
}

// Roots returns the X.509 authorities of the trust domain's bundle that
// the upstream agent's Workload API serves now.
func (u *Upstream) Roots(ctx context.Context) ([]*x509.Certificate, error) {
	ctx, cancel := context.WithTimeout(ctx, u.cfg.Timeout)
	defer cancel()
	src, _, err := u.connect(ctx)
	if err != nil {
		return nil, err
	}
	b, err := src.GetX509BundleForTrustDomain(u.cfg.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("upstream/sigil: the Workload API's bundle: %w", err)
	}
	roots := b.X509Authorities()
	if len(roots) == 0 {
		return nil, fmt.Errorf("upstream/sigil: the Workload API's bundle of %s has no X.509 authorities", u.cfg.TrustDomain)
	}
	return roots, nil
}

// Close closes the gRPC connection and the Workload API stream. Calls
// after Close fail.
func (u *Upstream) Close() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.closed = true
	var errs []error
	if u.conn != nil {
		errs = append(errs, u.conn.Close())
		u.conn = nil
	}
	if u.source != nil {
		errs = append(errs, u.source.Close())
		u.source = nil
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("upstream/sigil: closing: %w", err)
	}
	return nil
}
