// Package server wires a Sigil server node: the replicated store, this
// node's CA, the node API that agents call over TLS, the admin API on a
// local unix socket (and with AdminAddress on TCP with mutual TLS for
// admin SVIDs: adminremote.go), and federation with other trust domains
// (the bundle endpoint, and on the leader the refresh of federated
// bundles).
package server

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
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
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/sigil-id/sigil/alert"
	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/audit"
	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/cluster"
	"github.com/sigil-id/sigil/internal/trustbundle"
	"github.com/sigil-id/sigil/internal/unixsock"
	"github.com/sigil-id/sigil/raftstore"
	"github.com/sigil-id/sigil/registration"
)

// Server is one server node.
type Server struct {
	cfg       Config
	log       *zap.Logger
	td        spiffeid.TrustDomain
	id        spiffeid.ID
	verifiers map[string]node.Verifier

	store   *raftstore.Store
	cluster *cluster.Cluster // nil for a single server without a cluster port
	metrics *metrics
	auth    *authorities // see authority.go; read through s.x509CA() and s.jwtSigner()
	keys    *keyHealth   // see keyhealth.go
	// upstream is the state of the upstream authority (upstreamhealth.go).
	upstream *upstreamHealth

	svid atomic.Pointer[tls.Certificate]

	bundleMu  sync.Mutex
	bundleSeq uint64
	bundleSet *x509bundle.Bundle
	bundleIdx uint64

	ready    chan struct{}
	nodeAddr atomic.Value // net.Addr

	nodeLimits nodeLimits // see nodeapi_limits.go; tests may change them before Run
	nodeGuard  *nodeGuard // set by Run

	// adminAddr and adminGuard: the TCP admin listener (adminremote.go).
	adminAddr  atomic.Value // net.Addr
	adminGuard *nodeGuard

	auditSink audit.Sink        // see audit.go
	alerts    *alert.Dispatcher // see alert_admin.go; Run runs it
	eval      healthEval        // see health_eval.go; tests may set its funcs before Run

	fed    federationState // see federation.go
	runCtx context.Context // Run's context; set before the APIs serve

	// reports and instance: see report.go; gather: see health_gather.go.
	reports  *reportStore
	instance string
	gather   gatherCache

	// Tests may set these before Run: Raft's transport instead of the
	// cluster port (an in-memory transport whose addresses are the
	// cluster addresses), and changes to the cluster's tuning.
	raftTransport raft.Transport
	clusterTuning func(*cluster.Config)
	// applyFault, when a test sets it before Run, is called by apply
	// before each write; an error it returns is the write's result (fault
	// injection at the apply seam).
	applyFault applyFaultFunc
}

// New checks cfg and returns a server that Run starts.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	id, err := registration.ServerID(cfg.TrustDomain, cfg.NodeName)
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	s := &Server{
		cfg:        cfg,
		log:        cfg.Logger.With(zap.String("server_id", id.String())),
		td:         cfg.TrustDomain,
		id:         id,
		ready:      make(chan struct{}),
		metrics:    newServerMetrics(!cfg.DisableMetrics),
		nodeLimits: defaultNodeLimits(),
		reports:    newReportStore(defaultReportLimits()),
		instance:   newInstanceID(),
	}
	s.metrics.registerStateCollector(s)
	s.keys = newKeyHealth(cfg.Clock, s.metrics.reg, !cfg.DisableMetrics)
	s.upstream = newUpstreamHealth(cfg.UpstreamAuthority != nil, s.metrics.reg)
	s.auditSink = cfg.AuditSink
	if s.auditSink == nil {
		s.auditSink = audit.NewZap(s.log)
	}
	if s.alerts, err = newDispatcher(cfg, s.log, s.metrics.reg); err != nil {
		return nil, err
	}
	s.eval = newHealthEval(s)
	// Verifiers check evidence against the local store before the
	// server signs or writes anything.
	s.verifiers = make(map[string]node.Verifier, len(cfg.NodeVerifiers))
	for _, v := range cfg.NodeVerifiers {
		s.verifiers[v.Name()] = v
	}
	return s, nil
}

// JoinTokenIssuer is implemented by the node verifier whose tokens the
// admin API creates (node_attestor "join_token"). Without one in
// Config.NodeVerifiers, CreateJoinToken fails with FailedPrecondition.
type JoinTokenIssuer interface {
	// Name is the attestor name, the one in the agent's SPIFFE ID.
	Name() string
	// NewJoinToken returns a new secret token, the hash the servers
	// store in its place and the id an agent attesting with it gets.
	NewJoinToken() (token, hash, agentID string, err error)
}

// joinTokenIssuer returns the configured JoinTokenIssuer, if any.
func (s *Server) joinTokenIssuer() (JoinTokenIssuer, bool) {
	for _, v := range s.cfg.NodeVerifiers {
		if i, ok := v.(JoinTokenIssuer); ok {
			return i, true
		}
	}
	return nil, false
}

// Ready is closed once the server is serving both APIs.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// NodeAddr is the node API's listen address; valid after Ready.
func (s *Server) NodeAddr() net.Addr {
	a, _ := s.nodeAddr.Load().(net.Addr)
	return a
}

// ID is the server's SPIFFE ID.
func (s *Server) ID() spiffeid.ID { return s.id }

// Bundle returns the trust domain's current X.509 authorities; valid after
// Ready.
func (s *Server) Bundle() []*x509.Certificate {
	b, err := s.currentBundle()
	if err != nil {
		return nil
	}
	return b.X509Authorities()
}

// Run starts the server and blocks until ctx is done. It returns an error
// if the server cannot start: a port or the admin socket is taken (found
// before any state is written), the data directory is unusable, or the
// join through JoinAddresses was refused for good (cluster.ErrJoinRefused,
// e.g. a join secret that differs from the cluster's).
func (s *Server) Run(ctx context.Context) error {
	// Refuse an unsafe or taken admin socket path, and take the node API
	// and cluster ports, before writing any state: a server that cannot
	// start leaves a new data directory empty. listenAdmin checks the
	// socket again.
	if err := unixsock.Check(s.cfg.AdminSocket, adminSocketOptions(s.cfg.DataDir)); err != nil {
		return fmt.Errorf("server: %w", err)
	}
	nodeLis, err := net.Listen("tcp", s.cfg.BindAddress)
	if err != nil {
		return fmt.Errorf("server: node API listen: %w", err)
	}
	defer nodeLis.Close()
	var adminTCPLis net.Listener
	if s.cfg.AdminAddress != "" {
		if adminTCPLis, err = net.Listen("tcp", s.cfg.AdminAddress); err != nil {
			return fmt.Errorf("server: admin API listen: %w", err)
		}
		defer adminTCPLis.Close()
	}
	var clusterLis net.Listener
	if s.cfg.ClusterAddress != "" {
		if clusterLis, err = net.Listen("tcp", s.cfg.ClusterAddress); err != nil {
			return fmt.Errorf("server: cluster listen: %w", err)
		}
		defer clusterLis.Close()
	}
	var fedLis net.Listener
	if s.cfg.Federation.BundleEndpoint.Address != "" {
		if s.fed.endpoint, err = s.newBundleEndpoint(); err != nil {
			return err
		}
		if fedLis, err = net.Listen("tcp", s.cfg.Federation.BundleEndpoint.Address); err != nil {
			return fmt.Errorf("server: bundle endpoint listen: %w", err)
		}
		defer fedLis.Close()
	}
	s.runCtx = ctx
	if err := os.MkdirAll(s.cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("server: data dir: %w", err)
	}
	if err := raftstore.RemoveRestoreSpools(s.cfg.DataDir); err != nil {
		return fmt.Errorf("server: %w", err)
	}
	rcfg := raftstore.DefaultConfig()
	rcfg.TrustDomain = s.td
	rcfg.NodeID = s.cfg.NodeName
	rcfg.DataDir = filepath.Join(s.cfg.DataDir, "raft")
	rcfg.Bootstrap = true
	rcfg.Logger = s.log.Named("raft")
	rcfg.Clock = s.cfg.Clock
	if clusterLis != nil {
		defer func() {
			if s.cluster != nil {
				s.cluster.Close()
			}
		}()
		trans, err := s.startCluster(ctx, clusterLis)
		if err != nil {
			return err
		}
		rcfg.Transport = trans
		rcfg.Bootstrap = len(s.cfg.JoinAddresses) == 0 && !s.cfg.NoBootstrap
		rcfg.HeartbeatTimeout = s.raftTimeout()
	}
	store, err := raftstore.Open(rcfg)
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	s.store = store
	defer func() {
		if err := store.Close(); err != nil {
			s.log.Warn("closing store", zap.Error(err))
		}
	}()
	defer s.waitPartnerFetchWrites() // before the store closes

	// The admin socket serves the cluster admin API from now on (a server
	// waiting for `sigil cluster join` needs it); the other admin
	// services answer Unavailable until the server is ready.
	adminLis, err := listenAdmin(s.cfg.AdminSocket, s.cfg.DataDir)
	if err != nil {
		return err
	}
	adminSrv := grpc.NewServer(grpc.Creds(unixPeerCreds{}),
		grpc.ChainUnaryInterceptor(s.adminUnary(adminTransportUnix), s.adminStarting, s.adminConsistency),
		grpc.ChainStreamInterceptor(s.adminStream(adminTransportUnix), s.adminStartingStream))
	s.registerAdminServices(adminSrv)
	errc := make(chan error, 4)
	go func() { errc <- adminSrv.Serve(adminLis) }()
	defer func() {
		stopped := make(chan struct{})
		go func() { adminSrv.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(5 * time.Second):
			adminSrv.Stop()
		}
		adminLis.Close() // removes the socket only if it is still ours
	}()
	go s.metrics.raftLoop(ctx, store)
	alertsCtx, alertsCancel := context.WithCancel(ctx)
	alertsDone := make(chan struct{})
	go func() { defer close(alertsDone); s.alerts.Run(alertsCtx) }()
	defer func() { alertsCancel(); <-alertsDone }()

	if s.cluster != nil {
		s.cluster.SetStore(store)
		if err := s.cluster.JoinAtStart(ctx); err != nil {
			return fmt.Errorf("server: %w", err)
		}
	}
	if err := s.waitForLeader(ctx); err != nil {
		return err
	}
	if s.cluster != nil {
		// A restarted follower knows the leader before it has applied the
		// log: catch up first, so that what follows (the CA, the bundle
		// checks of the rotation loop) reads the current state.
		if err := s.cluster.ConsistentRead(ctx); err != nil {
			s.log.Warn("catching up with the leader", zap.Error(err))
		}
		if err := s.cluster.PublishIdentity(ctx); err != nil {
			return fmt.Errorf("server: %w", err)
		}
	}

	if err := s.initCA(ctx); err != nil {
		return err
	}
	if err := s.rotateServerSVID(ctx); err != nil {
		return err
	}

	s.nodeAddr.Store(nodeLis.Addr())

	// The node API is open to the network: nodeGuard bounds what a caller
	// without a valid agent SVID costs (see nodeapi_limits.go).
	lim := s.nodeLimits
	s.nodeGuard = newNodeGuard(lim, s.cfg.Clock, s.log.Named("node_api"), s.verifiedCaller, s.refuseUnauthenticated)
	nodeSrv := grpc.NewServer(
		grpc.Creds(s.nodeGuard.credentials(credentials.NewTLS(s.nodeTLSConfig()))),
		grpc.InTapHandle(s.nodeGuard.tap),
		grpc.ChainUnaryInterceptor(s.authUnary),
		grpc.ChainStreamInterceptor(s.authStream),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.MaxRecvMsgSize(lim.MaxRecvMsgSize),
		grpc.MaxConcurrentStreams(lim.MaxConcurrentStreams),
		grpc.MaxHeaderListSize(lim.MaxHeaderListSize),
		grpc.ConnectionTimeout(lim.HandshakeTimeout),
		grpc.ForceServerCodecV2(newSyncCodec()), // pre-encoded sync messages (syncwire.go)
		// No read buffer of gRPC's own: a TLS connection reads whole
		// records into its own buffer and serves frames from it, so
		// gRPC's 32 KiB per connection (kept for the connection's life,
		// as gRPC cannot pool reads from a TLS connection) would only
		// copy it again, for every connected agent.
		grpc.ReadBufferSize(0),
	)
	sigilv1.RegisterNodeServer(nodeSrv, &nodeAPI{s: s})
	sigilv1.RegisterDownstreamServer(nodeSrv, newDownstreamAPI(s)) // Unimplemented without AllowDownstream

	go func() { errc <- nodeSrv.Serve(nodeLis) }()
	if adminTCPLis != nil {
		// Remote administration (adminremote.go): from now on the server
		// has its SVID to present and a bundle to verify callers with.
		adminTCPSrv := s.newAdminTCPServer()
		s.adminAddr.Store(adminTCPLis.Addr())
		go func() { errc <- adminTCPSrv.Serve(adminTCPLis) }()
		defer func() {
			stopped := make(chan struct{})
			go func() { adminTCPSrv.GracefulStop(); close(stopped) }()
			select {
			case <-stopped:
			case <-time.After(5 * time.Second):
				adminTCPSrv.Stop()
			}
		}()
	}
	if s.cluster != nil {
		s.cluster.Run(ctx)
	}
	go s.svidRotationLoop(ctx)
	go s.rotationLoop(ctx)
	if fedLis != nil {
		go s.serveBundleEndpoint(ctx, fedLis, errc)
	}
	fedCtx, fedCancel := context.WithCancel(ctx)
	fedDone := make(chan struct{})
	go func() {
		defer close(fedDone)
		s.federationLeaderLoop(fedCtx)
	}()
	defer func() { fedCancel(); <-fedDone }()
	localCtx, localCancel := context.WithCancel(ctx)
	localDone := make(chan struct{})
	go func() {
		defer close(localDone)
		s.localHealthLoop(localCtx)
	}()
	defer func() { localCancel(); <-localDone }()
	s.log.Info("server ready",
		zap.String("trust_domain", s.td.Name()),
		zap.String("node_api", nodeLis.Addr().String()),
		zap.String("admin_socket", s.cfg.AdminSocket),
		zap.String("admin_address", s.cfg.AdminAddress))
	close(s.ready)

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		runErr = fmt.Errorf("server: serving: %w", runErr)
	}
	stopped := make(chan struct{})
	go func() {
		nodeSrv.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		nodeSrv.Stop()
	}
	return runErr
}

// raftTimeout is Raft's heartbeat and election timeout on the cluster
// port: RaftHeartbeatTimeout, or cluster.DefaultRaftTimeout (see package
// cluster, "Raft timing").
func (s *Server) raftTimeout() time.Duration {
	if s.cfg.RaftHeartbeatTimeout > 0 {
		return s.cfg.RaftHeartbeatTimeout
	}
	return cluster.DefaultRaftTimeout
}

// adminSocketOptions: the admin socket's 0700 directory is the admin API's
// access control.
func adminSocketOptions(dataDir string) unixsock.Options {
	return unixsock.Options{Name: "admin API socket", DirMode: 0o700, SocketMode: 0o600, DataDir: dataDir}
}

// listenAdmin listens on the admin socket in a 0700 directory, with the
// checks of package unixsock: it refuses directories another user could
// write to and never replaces a socket another process serves (the error
// names that process's data directory). Closing the listener removes the
// socket if it is still this one.
func listenAdmin(path, dataDir string) (net.Listener, error) {
	l, err := unixsock.Listen(path, adminSocketOptions(dataDir))
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	return l, nil
}

// currentBundle returns the trust domain's bundle from the store, parsing
// it only when it changed.
func (s *Server) currentBundle() (*x509bundle.Bundle, error) {
	r := s.store.Read()
	pb, err := r.Bundle(s.td.Name())
	if err != nil {
		return nil, fmt.Errorf("server: reading bundle: %w", err)
	}
	s.bundleMu.Lock()
	defer s.bundleMu.Unlock()
	if s.bundleSet != nil && s.bundleSeq == pb.SequenceNumber {
		return s.bundleSet, nil
	}
	b, err := trustbundle.FromProto(s.td, pb)
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	s.bundleSet, s.bundleSeq = b, pb.SequenceNumber
	return b, nil
}

// rotateServerSVID mints a fresh TLS certificate for the node API, and a
// fresh bundle endpoint SVID (see federation.go), with keys that exist
// only in this process.
func (s *Server) rotateServerSVID(ctx context.Context) error {
	if err := s.mintServerSVID(ctx, s.x509CA()); err != nil {
		return err
	}
	return s.mintEndpointSVID(ctx, s.x509CA())
}

// mintServerSVID mints the server SVID with c. It is this server's TLS
// certificate on the node API and the cluster port.
func (s *Server) mintServerSVID(ctx context.Context, c *ca.CA) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("server: generating server key: %w", err)
	}
	chain, err := c.SignX509SVID(ctx, ca.X509SVIDParams{
		PublicKey: key.Public(),
		SPIFFEID:  s.id,
		TTL:       s.cfg.AgentSVIDTTL,
	})
	if err != nil {
		return fmt.Errorf("server: minting server SVID: %w", err)
	}
	cert := &tls.Certificate{PrivateKey: crypto.Signer(key), Leaf: chain[0]}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	s.svid.Store(cert)
	return nil
}

func (s *Server) svidRotationLoop(ctx context.Context) {
	for {
		leaf := s.svid.Load().Leaf
		half := leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)
		wait := half.Sub(s.cfg.Clock.Now())
		select {
		case <-ctx.Done():
			return
		case <-s.cfg.Clock.After(wait):
		}
		if err := s.rotateServerSVID(ctx); err != nil {
			s.log.Error("server SVID rotation failed", zap.Error(err))
			select {
			case <-ctx.Done():
				return
			case <-s.cfg.Clock.After(10 * time.Second):
			}
		}
	}
}

func (s *Server) nodeTLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.svid.Load(), nil
		},
		// Attest is open to callers without a certificate; every other
		// method checks the agent SVID in the auth interceptors.
		ClientAuth: tls.RequestClientCert,
	}
}

// waitForLeader waits until the store has a leader. A single server
// elects itself at once (30 s bound); a cluster member waits as long as it
// takes a quorum to form, logging while it waits.
func (s *Server) waitForLeader(ctx context.Context) error {
	if s.cluster == nil {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := s.store.WaitForLeader(wctx); err != nil {
			return fmt.Errorf("server: waiting for a raft leader: %w", err)
		}
		return nil
	}
	for {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := s.store.WaitForLeader(wctx)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("server: waiting for a raft leader: %w", ctx.Err())
		}
		s.log.Warn("no raft leader yet; waiting for a quorum", zap.Bool("has_configuration", s.store.HasConfiguration()))
	}
}

// isReady reports whether Run has finished starting.
func (s *Server) isReady() bool {
	select {
	case <-s.ready:
		return true
	default:
		return false
	}
}

func (s *Server) adminStarting(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if !s.isReady() && !strings.HasPrefix(info.FullMethod, "/sigil.v1.ClusterAdmin/") {
		return nil, status.Error(codes.Unavailable, "server is starting")
	}
	return handler(ctx, req)
}

func (s *Server) adminStartingStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if !s.isReady() && !strings.HasPrefix(info.FullMethod, "/sigil.v1.ClusterAdmin/") {
		return status.Error(codes.Unavailable, "server is starting")
	}
	return handler(srv, ss)
}
