package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
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
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/internal/clusterpb"
	"github.com/sigil-id/sigil/internal/storepb"
	"github.com/sigil-id/sigil/raftstore"
	"github.com/sigil-id/sigil/registration"
)

// Cluster tuning.
const (
	// ekmLabel is the TLS exporter label of the join proof.
	ekmLabel = "EXPORTER-sigil-cluster-join"
	// joinRetryMax bounds the wait between rounds of join attempts.
	joinRetryMax = 5 * time.Second
	// forwardRetryFor bounds how long a write waits for a leader.
	forwardRetryFor = 10 * time.Second
	// localCatchUp bounds how long a forwarded write waits until this
	// server has applied it too (read-your-writes on followers).
	localCatchUp = 5 * time.Second
	// healthInterval is how often members ask each other for their status.
	healthInterval = 2 * time.Second
	// oldConnGrace is how long a peer connection replaced after a server
	// SVID rotation stays open for the calls already on it.
	oldConnGrace = 30 * time.Second
)

// cluster is the multi-server part of a server: the TLS cluster port that
// carries Raft and the Cluster gRPC service, joining, forwarding, member
// health.
type cluster struct {
	s      *Server
	log    *zap.Logger
	dir    string
	secret []byte // the join secret's key (joinproto.go); nil refuses joins

	// joinLimit rate-limits join attempts on this server.
	joinLimit *joinLimiter

	mux   *raftstore.Mux
	trans *raft.NetworkTransport
	grpc  *grpc.Server

	// idCA is the CA that signed the server SVID used until initCA has
	// published the CA and the SVID is re-minted from x509CA.
	idCA *ca.CA

	// extra are authorities trusted besides the store's bundle: the
	// bundle saved on disk at the last change (a restarted server trusts
	// members that joined after its last snapshot) and the bundle a Join
	// returned (before the first replication).
	extraMu sync.Mutex
	extra   []*x509.Certificate
	cacheMu sync.Mutex
	cache   struct {
		store *x509bundle.Bundle
		extra int
		b     *x509bundle.Bundle
	}

	connsMu sync.Mutex
	conns   map[string]peerConn

	healthMu sync.Mutex
	health   map[string]memberHealth

	// store is set once Run has opened it; handlers run before that.
	store atomic.Pointer[raftstore.Store]
	// idTrusted: the identity CA was in the bundle saved at the last run.
	idTrusted bool
	joined    atomic.Bool
}

type memberHealth struct {
	ok      bool
	at      time.Time
	status  *clusterpb.StatusResponse
	lastErr string
}

func newCluster(s *Server) *cluster {
	return &cluster{
		s:      s,
		log:    s.log.Named("cluster"),
		dir:    filepath.Join(s.cfg.DataDir, "cluster"),
		secret: joinKey(s.cfg.JoinSecret),
		conns:  make(map[string]peerConn),
		health: make(map[string]memberHealth),

		joinLimit: newJoinLimiter(s.cfg.Clock),
	}
}

// loadIdentityCA loads (or creates) this node's cluster identity CA. It
// signs the server SVID that authenticates this server to its peers until
// initCA has published the signing CA and the SVID is re-minted from
// x509CA (a restarted member must reach the leader before it can publish
// anything). Its key is kept like the CA keys (disk or memory) under
// DataDir/cluster and never leaves the node; its certificate is in the
// cluster peer bundle under the server ID "cluster/<node>", which
// authenticates servers to each other only: it is not in the bundle that
// agents and workloads trust (raftstore Reader.Bundle leaves it out).
func (c *cluster) loadIdentityCA(ctx context.Context) (*ca.CA, error) {
	s := c.s
	km, certPath, err := s.identityKeyManager(ctx)
	if err != nil {
		return nil, err
	}
	ccfg := ca.DefaultConfig()
	ccfg.TrustDomain = s.td
	ccfg.ServerID = "cluster-" + s.cfg.NodeName
	ccfg.KeyManager = km
	ccfg.CertPath = certPath
	ccfg.CATTL = s.cfg.CATTL
	ccfg.X509SVIDTTL = s.cfg.X509SVIDTTL
	ccfg.Clock = s.cfg.Clock
	cc, err := ca.New(ctx, ccfg)
	if err != nil {
		return nil, fmt.Errorf("server: cluster identity CA: %w", err)
	}
	return cc, nil
}

// identityAuthorityID is the bundle server_id of a node's identity CA.
func identityAuthorityID(node string) string { return "cluster/" + node }

// publishIdentity puts the identity CA into the bundle (idempotent).
func (c *cluster) publishIdentity(ctx context.Context) error {
	cert := c.idCA.Certificate()
	_, err := c.s.apply(ctx, &storepb.Command{Op: &storepb.Command_PutX509Authority{PutX509Authority: &storepb.PutX509Authority{
		TrustDomain: c.s.td.Name(),
		Authority:   &sigilv1.X509Authority{Certificate: cert.Raw, ServerId: identityAuthorityID(c.s.cfg.NodeName), NotAfter: cert.NotAfter.Unix()},
	}}})
	if err != nil {
		return fmt.Errorf("server: publishing the cluster identity CA: %w", err)
	}
	return nil
}

// start loads the identity, opens the cluster port and returns the Raft
// transport. The gRPC service starts serving at once; its handlers wait
// for the store where they need it.
func (c *cluster) start(ctx context.Context) (raft.Transport, error) {
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return nil, fmt.Errorf("server: cluster dir: %w", err)
	}
	idCA, err := c.loadIdentityCA(ctx)
	if err != nil {
		return nil, err
	}
	c.idCA = idCA
	if err := c.s.mintServerSVID(ctx, idCA); err != nil {
		return nil, err
	}
	if certs, err := readPEMCerts(c.bundlePath()); err == nil {
		c.addExtra(certs)
		for _, cert := range certs {
			if bytes.Equal(cert.Raw, idCA.Certificate().Raw) {
				c.idTrusted = true
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		c.log.Warn("ignoring saved cluster bundle", zap.Error(err))
	}
	// A server always trusts its own CA.
	c.addExtra([]*x509.Certificate{idCA.Certificate()})

	ln, err := net.Listen("tcp", c.s.cfg.ClusterAddress)
	if err != nil {
		return nil, fmt.Errorf("server: cluster listen: %w", err)
	}
	adv := c.s.cfg.AdvertiseAddress
	if adv == "" {
		adv = ln.Addr().String()
	}
	mux, err := raftstore.NewMux(ln, c.serverTLS(), c.clientTLS, adv, c.log)
	if err != nil {
		ln.Close()
		return nil, err
	}
	c.mux = mux
	c.trans = raftstore.NewNetworkTransport(mux, c.log)
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

// advertise is the address peers reach this server at.
func (c *cluster) advertise() string { return c.mux.Addr().String() }

func (c *cluster) stop() {
	if c.grpc != nil {
		done := make(chan struct{})
		go func() { c.grpc.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			c.grpc.Stop()
		}
	}
	if c.trans != nil {
		c.trans.Close()
	}
	if c.mux != nil {
		c.mux.Close()
	}
	c.connsMu.Lock()
	for _, pc := range c.conns {
		pc.cc.Close()
	}
	c.conns = map[string]peerConn{}
	c.connsMu.Unlock()
}

func (c *cluster) bundlePath() string { return filepath.Join(c.dir, "bundle.pem") }

func (c *cluster) addExtra(certs []*x509.Certificate) {
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
func (c *cluster) peerBundle() *x509bundle.Bundle {
	var storeB *x509bundle.Bundle
	if c.store.Load() != nil {
		if b, err := c.s.peerStoreBundle(); err == nil {
			storeB = b
		}
	}
	c.extraMu.Lock()
	extra := c.extra
	c.extraMu.Unlock()
	c.cacheMu.Lock()
	defer c.cacheMu.Unlock()
	if c.cache.b != nil && c.cache.store == storeB && c.cache.extra == len(extra) {
		return c.cache.b
	}
	b := x509bundle.New(c.s.td)
	if storeB != nil {
		for _, a := range storeB.X509Authorities() {
			b.AddX509Authority(a)
		}
	}
	for _, a := range extra {
		b.AddX509Authority(a)
	}
	c.cache.store, c.cache.extra, c.cache.b = storeB, len(extra), b
	return b
}

// verifyPeer checks a peer's certificate chain: a valid SVID of a Sigil
// server of this trust domain, and, with requireMember, a server that is
// in the Raft configuration (while this server knows no configuration,
// any server of the cluster bundle is accepted: the leader that adds it).
// It returns the peer's node name.
func (c *cluster) verifyPeer(certs []*x509.Certificate, requireMember bool) (string, error) {
	if len(certs) == 0 {
		return "", errors.New("no server SVID presented")
	}
	id, _, err := x509svid.Verify(certs, c.peerBundle(), x509svid.WithTime(c.s.cfg.Clock.Now()))
	if err != nil {
		return "", fmt.Errorf("server SVID is not valid: %w", err)
	}
	name, ok := serverName(c.s.td, id)
	if !ok {
		return "", fmt.Errorf("%s is not a server of %s", id, c.s.td)
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

func (c *cluster) certificate() (*tls.Certificate, error) {
	cert := c.s.svid.Load()
	if cert == nil {
		return nil, errors.New("server SVID not ready")
	}
	return cert, nil
}

// serverTLS authenticates inbound cluster connections. Raft requires the
// SVID of a member; gRPC accepts connections without a certificate (Join)
// and checks the caller per method.
func (c *cluster) serverTLS() *tls.Config {
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
				name, err := c.verifyPeer(cs.PeerCertificates, true)
				if err != nil {
					c.log.Warn("raft peer refused", zap.Bool("audit", true), zap.Error(err))
					return err
				}
				_ = name
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
func (c *cluster) clientTLS() *tls.Config {
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

// peerConn is a cached connection to a peer and the server SVID this
// server held when it was made.
type peerConn struct {
	cc   *grpc.ClientConn
	svid *tls.Certificate
}

// conn returns a (cached) gRPC connection to a peer's cluster port.
//
// The peer checks the certificate presented in the TLS handshake on every
// call (authUnary), and a connection lives as long as both servers do, so
// a connection outlives the server SVID it was made with: once that SVID
// expires, or its CA leaves the bundle, every call on it is refused. So a
// connection made before this server's SVID was last rotated is replaced
// by a new one (a new handshake with the current SVID); the old one is
// closed after a grace period for the calls already on it.
func (c *cluster) conn(addr string) (*grpc.ClientConn, error) {
	c.connsMu.Lock()
	defer c.connsMu.Unlock()
	cur := c.s.svid.Load()
	if pc, ok := c.conns[addr]; ok {
		if pc.svid == cur {
			return pc.cc, nil
		}
		old := pc.cc
		time.AfterFunc(oldConnGrace, func() { old.Close() })
		delete(c.conns, addr)
	}
	d := &net.Dialer{LocalAddr: c.mux.LocalDialAddr()}
	cc, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(credentials.NewTLS(c.clientTLS())),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", a)
		}),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)),
	)
	if err != nil {
		return nil, err
	}
	c.conns[addr] = peerConn{cc: cc, svid: cur}
	return cc, nil
}

// joinAtStart joins through the configured addresses: always (and
// until it succeeds) on a first start; on a restart only when this
// server's identity CA is new (it was down longer than its lifetime, or
// keeps keys in memory), in the background, as the members may need this
// server to form a quorum.
func (c *cluster) joinAtStart(ctx context.Context) error {
	addrs := c.s.cfg.JoinAddresses
	if len(addrs) == 0 {
		return nil
	}
	if !c.store.Load().HadState() {
		return c.join(ctx, addrs)
	}
	if !c.idTrusted {
		go func() {
			if err := c.join(ctx, addrs); err != nil {
				c.log.Warn("re-join failed", zap.Error(err))
			}
		}()
	}
	return nil
}

// join asks the servers at addrs, in turn and in rounds with a growing
// pause, to add this server, until one does or ctx ends.
func (c *cluster) join(ctx context.Context, addrs []string) error {
	if len(c.secret) == 0 {
		return errors.New("server: joining needs the cluster join secret (join_secret)")
	}
	wait := 200 * time.Millisecond
	for {
		var errs []error
		for _, a := range addrs {
			err := c.joinOnce(ctx, a, 0)
			if err == nil {
				c.joined.Store(true)
				return nil
			}
			errs = append(errs, fmt.Errorf("%s: %w", a, err))
		}
		c.log.Warn("join failed; retrying", zap.Duration("retry_in", wait), zap.Error(errors.Join(errs...)))
		select {
		case <-ctx.Done():
			return fmt.Errorf("server: join: %w (last: %v)", ctx.Err(), errors.Join(errs...))
		case <-time.After(wait):
		}
		wait = min(2*wait, joinRetryMax)
	}
}

// bundleLoop saves the bundle to disk whenever it changes.
func (c *cluster) bundleLoop(ctx context.Context) {
	var seq uint64
	first := true
	for {
		changed := c.store.Load().Changed()
		if pb, err := c.store.Load().Read().PeerBundle(c.s.td.Name()); err == nil && (first || pb.SequenceNumber != seq) {
			var certs []*x509.Certificate
			for _, a := range pb.X509Authorities {
				if cert, err := x509.ParseCertificate(a.Certificate); err == nil {
					certs = append(certs, cert)
				}
			}
			if err := writePEMCerts(c.bundlePath(), certs); err != nil {
				c.log.Warn("saving cluster bundle", zap.Error(err))
			} else {
				seq, first = pb.SequenceNumber, false
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-time.After(30 * time.Second):
		}
	}
}

// healthLoop asks every other member for its status.
func (c *cluster) healthLoop(ctx context.Context) {
	t := time.NewTicker(healthInterval)
	defer t.Stop()
	for {
		members, err := c.store.Load().Members()
		if err == nil {
			var wg sync.WaitGroup
			for _, m := range members {
				if m.ID == c.s.cfg.NodeName {
					continue
				}
				wg.Add(1)
				go func(m raftstore.Member) {
					defer wg.Done()
					c.probe(ctx, m)
				}(m)
			}
			wg.Wait()
			c.s.metrics.observeCluster(c, members)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (c *cluster) probe(ctx context.Context, m raftstore.Member) {
	h := memberHealth{at: time.Now()}
	cc, err := c.conn(m.Address)
	if err == nil {
		pctx, cancel := context.WithTimeout(ctx, healthInterval)
		var st *clusterpb.StatusResponse
		st, err = clusterpb.NewClusterClient(cc).Status(pctx, &clusterpb.StatusRequest{})
		cancel()
		h.status = st
	}
	if err != nil {
		h.lastErr = err.Error()
	} else {
		h.ok = true
	}
	c.healthMu.Lock()
	c.health[m.ID] = h
	c.healthMu.Unlock()
}

func (c *cluster) memberHealth(id string) (memberHealth, bool) {
	c.healthMu.Lock()
	defer c.healthMu.Unlock()
	h, ok := c.health[id]
	return h, ok
}

func readPEMCerts(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		out = append(out, cert)
	}
	return out, nil
}

func writePEMCerts(path string, certs []*x509.Certificate) error {
	var buf bytes.Buffer
	for _, c := range certs {
		if err := pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}); err != nil {
			return err
		}
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, buf.Bytes(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
