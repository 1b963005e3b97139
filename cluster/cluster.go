package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/audit"
	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/clusterpb"
	"github.com/sigil-id/sigil/internal/storepb"
	"github.com/sigil-id/sigil/raftstore"
	"github.com/sigil-id/sigil/registration"
)

// ekmLabel is the TLS exporter label of the join proof.
const ekmLabel = "EXPORTER-sigil-cluster-join"

// Cluster is one server's membership in a cluster. Its methods are safe
// for concurrent use once Start has returned.
type Cluster struct {
	cfg     Config
	log     *zap.Logger
	clock   clock.Clock
	metrics Metrics
	audit   audit.Sink

	// joinLimit rate-limits join attempts on this server.
	joinLimit *joinLimiter

	mux   *raftstore.Mux
	trans raft.Transport
	grpc  *grpc.Server

	// idCA is the identity CA (see New).
	idCA *ca.CA

	// extra are authorities trusted besides the store's peer bundle: the
	// bundle saved on disk at the last change (a restarted server trusts
	// members that joined after its last snapshot) and the bundle a Join
	// returned (before the first replication).
	extraMu sync.Mutex
	extra   []*x509.Certificate
	cacheMu sync.Mutex
	cache   struct {
		pb    *sigilv1.Bundle
		extra int
		b     *x509bundle.Bundle
	}

	connsMu sync.Mutex
	conns   map[string]peerConn
	closed  bool

	healthMu sync.Mutex
	health   map[string]MemberHealth
	// probeNow asks the health loop for a round of probes at once.
	probeNow chan struct{}

	// store is set by SetStore; handlers that need it answer Unavailable
	// before.
	store atomic.Pointer[raftstore.Store]
	// idTrusted: the identity CA was in the bundle saved at the last run.
	idTrusted bool
}

// New checks cfg, loads (or creates) the identity CA and the bundle saved
// at the last run, and returns a Cluster that Start opens.
//
// The identity CA signs the server SVID that authenticates this server to
// its peers until the trust domain's CA is published and the SVID is
// re-minted from it (a restarted member must reach the leader before it
// can publish anything). Its key stays in cfg.IdentityKeyManager; its
// certificate is in the cluster peer bundle under the server ID
// "cluster/<node>" (IdentityAuthorityID), which authenticates servers to
// each other only: it is not in the bundle that agents and workloads
// trust (raftstore Reader.Bundle leaves it out).
func New(ctx context.Context, cfg Config) (*Cluster, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.New()
	}
	c := &Cluster{
		cfg:       cfg,
		log:       cfg.Logger,
		clock:     cfg.Clock,
		metrics:   cfg.Metrics,
		joinLimit: newJoinLimiter(cfg.Clock),
		conns:     make(map[string]peerConn),
		health:    make(map[string]MemberHealth),
		probeNow:  make(chan struct{}, 1),
	}
	if c.metrics == nil {
		c.metrics = nopMetrics{}
	}
	c.audit = cfg.AuditSink
	if c.audit == nil {
		c.audit = audit.NewZap(c.log)
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("cluster: directory: %w", err)
	}
	ccfg := ca.DefaultConfig()
	ccfg.TrustDomain = cfg.TrustDomain
	ccfg.ServerID = "cluster-" + cfg.NodeName
	ccfg.KeyManager = cfg.IdentityKeyManager
	ccfg.CertPath = cfg.IdentityCertPath
	if cfg.IdentityCATTL > 0 {
		ccfg.CATTL = cfg.IdentityCATTL
	}
	if cfg.IdentitySVIDTTL > 0 {
		ccfg.X509SVIDTTL = cfg.IdentitySVIDTTL
	}
	ccfg.Clock = cfg.Clock
	ccfg.KeyObserver = cfg.KeyObserver
	idCA, err := ca.New(ctx, ccfg)
	if err != nil {
		return nil, fmt.Errorf("cluster: identity CA: %w", err)
	}
	c.idCA = idCA
	if certs, err := readPEMCerts(c.bundlePath()); err == nil {
		c.TrustExtra(certs)
		for _, cert := range certs {
			if bytes.Equal(cert.Raw, idCA.Certificate().Raw) {
				c.idTrusted = true
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		c.log.Warn("ignoring saved cluster bundle", zap.Error(err))
	}
	// A server always trusts its own identity CA.
	c.TrustExtra([]*x509.Certificate{idCA.Certificate()})
	return c, nil
}

// IdentityCA is this server's cluster identity CA.
func (c *Cluster) IdentityCA() *ca.CA { return c.idCA }

// IdentityAuthorityID is the bundle server_id of a node's identity CA.
func IdentityAuthorityID(node string) string { return "cluster/" + node }

// PublishIdentity puts the identity CA into the bundle (idempotent).
func (c *Cluster) PublishIdentity(ctx context.Context) error {
	cert := c.idCA.Certificate()
	_, err := c.Apply(ctx, &storepb.Command{Op: &storepb.Command_PutX509Authority{PutX509Authority: &storepb.PutX509Authority{
		TrustDomain: c.cfg.TrustDomain.Name(),
		Authority:   &sigilv1.X509Authority{Certificate: cert.Raw, ServerId: IdentityAuthorityID(c.cfg.NodeName), NotAfter: cert.NotAfter.Unix()},
	}}})
	if err != nil {
		return fmt.Errorf("cluster: publishing the identity CA: %w", err)
	}
	return nil
}

// Start opens the cluster port and returns the Raft transport
// (Config.RaftTransport if set). The Cluster service serves at once; its
// handlers wait for SetStore where they need the store. The server SVID
// (Config.SVID) must be ready before peers connect.
func (c *Cluster) Start() (raft.Transport, error) {
	ln := c.cfg.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", c.cfg.ListenAddress); err != nil {
			return nil, fmt.Errorf("cluster: listen: %w", err)
		}
	}
	adv := c.cfg.AdvertiseAddress
	if adv == "" {
		adv = ln.Addr().String()
	}
	mux, err := raftstore.NewMux(ln, c.serverTLS(), c.clientTLS, adv, c.log)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("cluster: %w", err)
	}
	c.mux = mux
	if c.cfg.RaftTransport != nil {
		c.trans = c.cfg.RaftTransport
	} else {
		c.trans = raftstore.NewNetworkTransport(mux, c.log)
	}
	c.grpc = grpc.NewServer(
		grpc.Creds(muxCredentials{}),
		grpc.ChainUnaryInterceptor(c.authUnary),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.MaxRecvMsgSize(64<<20),
	)
	clusterpb.RegisterClusterServer(c.grpc, &clusterAPI{c: c})
	go func() {
		if err := c.grpc.Serve(mux.GRPCListener()); err != nil {
			c.log.Debug("cluster gRPC stopped", zap.Error(err))
		}
	}()
	return c.trans, nil
}

// SetStore gives the Cluster the replicated store opened on Start's
// transport.
func (c *Cluster) SetStore(st *raftstore.Store) { c.store.Store(st) }

// Advertise is the address peers reach this server at; valid after Start.
func (c *Cluster) Advertise() string { return c.mux.Addr().String() }

// Close stops serving and closes every peer connection. The store is the
// caller's.
func (c *Cluster) Close() {
	// The mux first: it ends the gRPC server's Accept, which GracefulStop
	// waits for.
	if c.mux != nil {
		c.mux.Close()
	}
	if nt, ok := c.trans.(*raft.NetworkTransport); ok {
		nt.Close()
	}
	if c.grpc != nil {
		done := make(chan struct{})
		go func() { c.grpc.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			c.grpc.Stop()
		}
	}
	c.connsMu.Lock()
	for _, pc := range c.conns {
		pc.cc.Close()
	}
	c.conns = map[string]peerConn{}
	c.closed = true
	c.connsMu.Unlock()
}

func (c *Cluster) bundlePath() string { return c.cfg.Dir + string(os.PathSeparator) + "bundle.pem" }

// TrustExtra adds authorities that peers' SVIDs are checked against
// besides the store's peer bundle (a restore keeps the members trusted
// this way until their authorities are back in the restored bundle).
func (c *Cluster) TrustExtra(certs []*x509.Certificate) {
	c.extraMu.Lock()
	defer c.extraMu.Unlock()
	for _, n := range certs {
		dup := false
		for _, o := range c.extra {
			if bytes.Equal(o.Raw, n.Raw) {
				dup = true
				break
			}
		}
		if !dup {
			c.extra = append(c.extra, n)
		}
	}
}

// peerBundle is the bundle peers' SVIDs are checked against: the store's
// cluster peer bundle (the bundle and the members' identity CAs) and the
// extra authorities.
func (c *Cluster) peerBundle() *x509bundle.Bundle {
	var pb *sigilv1.Bundle
	if st := c.store.Load(); st != nil {
		if b, err := st.Read().PeerBundle(c.cfg.TrustDomain.Name()); err == nil {
			pb = b
		}
	}
	c.extraMu.Lock()
	extra := c.extra
	c.extraMu.Unlock()
	c.cacheMu.Lock()
	defer c.cacheMu.Unlock()
	if c.cache.b != nil && c.cache.pb == pb && c.cache.extra == len(extra) {
		return c.cache.b
	}
	b := x509bundle.New(c.cfg.TrustDomain)
	if pb != nil {
		for _, a := range pb.X509Authorities {
			if cert, err := x509.ParseCertificate(a.Certificate); err == nil {
				b.AddX509Authority(cert)
			}
		}
	}
	for _, a := range extra {
		b.AddX509Authority(a)
	}
	c.cache.pb, c.cache.extra, c.cache.b = pb, len(extra), b
	return b
}

// verifyPeer checks a peer's certificate chain: a valid SVID of a Sigil
// server of this trust domain, and, with requireMember, a server that is
// in the Raft configuration (while this server knows no configuration,
// any server of the cluster bundle is accepted: the leader that adds it).
// It returns the peer's node name.
func (c *Cluster) verifyPeer(certs []*x509.Certificate, requireMember bool) (string, error) {
	if len(certs) == 0 {
		return "", errors.New("no server SVID presented")
	}
	id, _, err := x509svid.Verify(certs, c.peerBundle(), x509svid.WithTime(c.clock.Now()))
	if err != nil {
		return "", fmt.Errorf("server SVID is not valid: %w", err)
	}
	name, ok := serverName(c.cfg.TrustDomain, id)
	if !ok {
		return "", fmt.Errorf("%s is not a server of %s", id, c.cfg.TrustDomain)
	}
	if st := c.store.Load(); requireMember && st != nil && st.HasConfiguration() && !st.IsMember(name) {
		return "", fmt.Errorf("server %q is not a member of the cluster", name)
	}
	return name, nil
}

// serverName returns the node name of a server SPIFFE ID.
func serverName(td spiffeid.TrustDomain, id spiffeid.ID) (string, bool) {
	if id.TrustDomain() != td || !registration.IsServerID(id) {
		return "", false
	}
	name := strings.TrimPrefix(id.Path(), "/sigil/server/")
	if name == "" || strings.Contains(name, "/") {
		return "", false
	}
	return name, true
}

func (c *Cluster) certificate() (*tls.Certificate, error) {
	cert := c.cfg.SVID()
	if cert == nil {
		return nil, errors.New("server SVID not ready")
	}
	return cert, nil
}

// serverTLS authenticates inbound cluster connections. Raft requires the
// SVID of a member; gRPC accepts connections without a certificate (Join)
// and checks the caller per method.
func (c *Cluster) serverTLS() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{raftstore.ALPNRaft, raftstore.ALPNGRPC},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return c.certificate()
		},
		ClientAuth: tls.RequestClientCert,
		VerifyConnection: func(cs tls.ConnectionState) error {
			switch cs.NegotiatedProtocol {
			case raftstore.ALPNRaft:
				if _, err := c.verifyPeer(cs.PeerCertificates, true); err != nil {
					c.audit.Audit(audit.Event{What: "cluster_peer_refused", Outcome: audit.Denied, Message: "raft peer refused",
						Fields: []audit.Field{audit.Err(err)}})
					return err
				}
				return nil
			case raftstore.ALPNGRPC:
				if len(cs.PeerCertificates) > 0 {
					_, err := c.verifyPeer(cs.PeerCertificates, false)
					return err
				}
				return nil
			default:
				return fmt.Errorf("protocol %q is not served here", cs.NegotiatedProtocol)
			}
		},
	}
}

// clientTLS authenticates the peer a cluster connection goes to.
func (c *Cluster) clientTLS() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// Peers are authenticated by SPIFFE ID against the cluster bundle
		// in VerifyConnection, not by host name against system roots.
		InsecureSkipVerify: true, //nolint:gosec // verified below
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return c.certificate()
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := c.verifyPeer(cs.PeerCertificates, false)
			return err
		},
	}
}

// peerConn is a pooled connection to a peer and the server SVID this
// server held when it was made.
type peerConn struct {
	cc   *grpc.ClientConn
	svid *tls.Certificate
}

// peerBackoff is the reconnection backoff of peer connections: a member
// that restarts is back within a second or two, and waiting gRPC's
// default (up to two minutes) would keep it "unreachable" long after.
var peerBackoff = backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second}

// Conn returns the pooled gRPC connection to a peer's cluster port.
//
// The peer checks the certificate presented in the TLS handshake on every
// call (authUnary), and a connection lives as long as both servers do, so
// a connection outlives the server SVID it was made with: once that SVID
// expires, or its CA leaves the bundle, every call on it is refused. So a
// connection made before this server's SVID was last rotated is replaced
// by a new one (a new handshake with the current SVID); the old one is
// closed after Config.OldConnGrace for the calls already on it.
// Connections to addresses that left the Raft configuration are closed by
// the health loop.
func (c *Cluster) Conn(addr string) (*grpc.ClientConn, error) {
	c.connsMu.Lock()
	defer c.connsMu.Unlock()
	if c.closed {
		return nil, errors.New("cluster: closed")
	}
	cur := c.cfg.SVID()
	if pc, ok := c.conns[addr]; ok {
		if pc.svid == cur {
			return pc.cc, nil
		}
		old := pc.cc
		time.AfterFunc(c.cfg.OldConnGrace, func() { old.Close() })
		delete(c.conns, addr)
	}
	d := &net.Dialer{LocalAddr: c.mux.LocalDialAddr()}
	cc, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(credentials.NewTLS(c.clientTLS())),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", a)
		}),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: peerBackoff, MinConnectTimeout: 5 * time.Second}),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)),
	)
	if err != nil {
		return nil, fmt.Errorf("cluster: connecting to %s: %w", addr, err)
	}
	c.conns[addr] = peerConn{cc: cc, svid: cur}
	go c.watchConn(cc)
	return cc, nil
}

// watchConn keeps a peer connection connecting and asks for a round of
// probes whenever it becomes ready again, so that a peer that restarted
// is reported healthy as soon as it is back, not a health period (and a
// reconnection backoff) later. gRPC leaves a connection idle once it is
// lost, until the next call: it is reconnected at once instead.
func (c *Cluster) watchConn(cc *grpc.ClientConn) {
	st := cc.GetState()
	for {
		switch st {
		case connectivity.Ready:
			c.kickProbes()
		case connectivity.Idle:
			cc.Connect()
		case connectivity.Shutdown:
			return
		}
		if !cc.WaitForStateChange(context.Background(), st) {
			return
		}
		st = cc.GetState()
	}
}

// kickProbes asks the health loop for a round of probes now.
func (c *Cluster) kickProbes() {
	select {
	case c.probeNow <- struct{}{}:
	default:
	}
}

// dropConns closes the pooled connections to addresses not in keep.
func (c *Cluster) dropConns(keep map[string]bool) {
	c.connsMu.Lock()
	defer c.connsMu.Unlock()
	for addr, pc := range c.conns {
		if !keep[addr] {
			pc.cc.Close()
			delete(c.conns, addr)
		}
	}
}

// pooled returns the pooled connections by address (tests).
func (c *Cluster) pooled() map[string]*grpc.ClientConn {
	c.connsMu.Lock()
	defer c.connsMu.Unlock()
	out := map[string]*grpc.ClientConn{}
	for a, pc := range c.conns {
		out[a] = pc.cc
	}
	return out
}
