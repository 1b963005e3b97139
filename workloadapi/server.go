// Package workloadapi is the agent's node-local SPIFFE Workload API server.
//
// A workload connects to a unix socket (Listen) without any credentials of
// its own. The server learns who it is from the kernel: the transport
// credentials read the peer's pid, uid and gid (SO_PEERCRED) and pin the
// process with a pidfd at connect time. On every call the configured
// attestors turn the pid into selectors (all at once, each within
// Config.AttestorTimeout; if any fails or runs out of time the caller gets
// no identity, never a partial selector set), and the server then checks that
// the pinned process is still alive and still owns the pid (its start time
// is unchanged), so a process that dies and whose pid is reused during
// attestation gets nothing. The selectors are matched against the agent's
// Cache, and the workload receives a stream of its X.509-SVIDs and trust
// bundles, with a new message on every rotation or bundle change.
//
// A workload whose selectors match no entry is told PermissionDenied ("no
// identity issued"), which go-spiffe's client treats as "retry later"; so is
// a workload whose last entry is deleted while it watches.
//
// JWT-SVIDs are served when the Cache also implements JWTCache (see jwt.go);
// otherwise those methods answer Unimplemented.
//
// The same server also answers Envoy's Secret Discovery Service (SDS v3,
// sds.go), with the same attestation, on the Workload API socket or on a
// socket of its own (Config.SeparateSDS, ServeSDS).
package workloadapi

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"path"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/workload"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/grpcstream"
)

// securityHeader is the metadata every Workload API call must carry, so
// that a browser or other SSRF-able client cannot reach the API by accident.
const securityHeader = "workload.spiffe.io"

// staleConnGrace is how long a connection whose process is no longer the
// one that connected stays open after its refusal, for the refusal to
// reach the client.
const staleConnGrace = time.Second

// staticWindow is the fixed HTTP/2 flow-control window of a stream and
// of a connection: gRPC's default initial window (64 KiB).
const staticWindow = 64 << 10

// readBuffer is the size of each connection's read buffer. gRPC's default
// (32 KiB, allocated for every connection and kept for its life: a
// connection wrapped as peerConn is not one whose reads gRPC can pool)
// is sized for bulk transfers; requests here are a few hundred bytes,
// and a read larger than the buffer goes to the socket directly. It is
// per-connection memory in an agent holding one or more connections per
// workload.
const readBuffer = 4 << 10

// maxRequestSize caps a Workload API request. The largest is a
// ValidateJWTSVID request, whose token is a few KiB.
const maxRequestSize = 256 << 10

// shutdownTimeout bounds how long Serve waits for calls to finish once its
// context is done.
const shutdownTimeout = 5 * time.Second

// DefaultAttestorTimeout is Config.AttestorTimeout when zero.
const DefaultAttestorTimeout = 5 * time.Second

// Config configures a Server.
type Config struct {
	// Cache is the source of SVIDs and bundles. Required.
	Cache Cache
	// Attestors are run concurrently on the caller's pid; their selectors
	// are concatenated in the order of this list. If any of them fails or
	// outlasts AttestorTimeout, the call gets no identity. Required.
	Attestors []workload.Attestor
	// AttestorTimeout bounds each attestor's run on a call; its context is
	// canceled then. Zero is DefaultAttestorTimeout; negative is an error.
	AttestorTimeout time.Duration
	// Logger logs each call at debug level; nil logs nothing.
	Logger *zap.Logger
	// Clock times calls; nil is the wall clock.
	Clock clock.Clock
	// Meter receives call metrics; nil records nothing.
	Meter Meter
	// Limits bound the connections and calls local processes may hold
	// open; zero fields take their defaults.
	Limits Limits

	// SeparateSDS serves Envoy's Secret Discovery Service not on the
	// Workload API's listener (Serve) but on one of its own (ServeSDS),
	// under the same limits and attestation. By default SDS is served
	// with the Workload API.
	SeparateSDS bool
}

// Server is the Workload API server. Create it with New and run it with
// Serve.
type Server struct {
	workloadpb.UnimplementedSpiffeWorkloadAPIServer

	cache           Cache
	attestors       []workload.Attestor
	attestorTimeout time.Duration
	log             *zap.Logger
	clk             clock.Clock
	meter           Meter
	grpc            *grpc.Server
	// sdsGRPC serves SDS alone (Config.SeparateSDS); nil when SDS is
	// served by grpc.
	sdsGRPC *grpc.Server

	// proc reads /proc; its functions are replaced in tests to simulate
	// pid reuse, exec and credential changes.
	proc  procReader
	conns *connLimits
	// staleGrace is how long a refused stale connection stays open
	// (staleConnGrace; tests change it).
	staleGrace time.Duration
	// afterAttest, if set, runs between attestation and the liveness
	// re-check; tests use it to kill the caller mid-attestation.
	afterAttest func(pid int32)
	// denials and failures rate-limit, per uid and pid, the log lines
	// about callers whose selectors matched no entry and those whose
	// attestation failed.
	denials, failures *logLimiter
	// sdsRefusals rate-limits the log lines about SDS resources refused.
	sdsRefusals *logLimiter

	mu        sync.Mutex
	served    bool
	sdsServed bool
	stopping  chan struct{}
	stopOnce  sync.Once
}

// New returns a Server for cfg.
func New(cfg Config) (*Server, error) {
	if cfg.Cache == nil {
		return nil, errors.New("workloadapi: Config.Cache is required")
	}
	if len(cfg.Attestors) == 0 {
		return nil, errors.New("workloadapi: at least one attestor is required")
	}
	for i, a := range cfg.Attestors {
		if a == nil {
			return nil, fmt.Errorf("workloadapi: attestor %d is nil", i)
		}
	}
	if cfg.AttestorTimeout < 0 {
		return nil, fmt.Errorf("workloadapi: AttestorTimeout %v must not be negative", cfg.AttestorTimeout)
	}
	if cfg.AttestorTimeout == 0 {
		cfg.AttestorTimeout = DefaultAttestorTimeout
	}
	s := &Server{
		cache:           cfg.Cache,
		attestors:       append([]workload.Attestor(nil), cfg.Attestors...),
		attestorTimeout: cfg.AttestorTimeout,
		log:             cfg.Logger,
		clk:             cfg.Clock,
		meter:           cfg.Meter,
		proc:            procReader{startTime: pinnedStartTime, exe: procExe, status: procStatus},
		staleGrace:      staleConnGrace,
		stopping:        make(chan struct{}),
	}
	if s.log == nil {
		s.log = zap.NewNop()
	}
	if s.clk == nil {
		s.clk = clock.New()
	}
	if s.meter == nil {
		s.meter = NopMeter{}
	}
	s.denials, s.failures = newLogLimiter(s.clk), newLogLimiter(s.clk)
	s.sdsRefusals = newLogLimiter(s.clk)
	s.conns = newConnLimits(cfg.Limits, s.clk, func(uid uint32, reason string) {
		s.log.Warn("workload API connection refused", zap.Uint32("uid", uid), zap.String("reason", reason))
	})
	opts := append(TransportOptions(s.conns.limits),
		grpc.Creds(&peerCreds{proc: &s.proc, limits: s.conns}),
		grpc.ChainUnaryInterceptor(s.unaryInterceptor),
		grpc.ChainStreamInterceptor(s.streamInterceptor),
		// Responses shared between callers are sent in the wire form
		// built once for all of them.
		grpc.ForceServerCodecV2(newWireCodec()),
	)
	s.grpc = grpc.NewServer(opts...)
	workloadpb.RegisterSpiffeWorkloadAPIServer(s.grpc, s)
	sds := s.grpc
	if cfg.SeparateSDS {
		s.sdsGRPC = grpc.NewServer(opts...)
		sds = s.sdsGRPC
	}
	secretv3.RegisterSecretDiscoveryServiceServer(sds, &sdsServer{s: s})
	return s, nil
}

// TransportOptions are the gRPC transport options of the Workload API
// server under limits (zero fields take their defaults): stream and
// connection bounds, stream workers, flow-control windows and buffers.
// Besides them the server has its own credentials, interceptors and
// codec. They are exported so that a server measured beside this one
// (bench's limit of a cached fetch: a plain gRPC server answering a
// fixed response) runs with the same transport.
func TransportOptions(limits Limits) []grpc.ServerOption {
	limits = limits.withDefaults()
	return []grpc.ServerOption{
		grpc.MaxConcurrentStreams(limits.MaxStreamsPerConn),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: limits.IdleTimeout}),
		// Requests are tiny; a peer gets no more than this buffered.
		grpc.MaxRecvMsgSize(maxRequestSize),
		// Reuse goroutines for short calls instead of starting one per
		// stream: fetches are many and small.
		grpc.NumStreamWorkers(uint32(runtime.GOMAXPROCS(0))),
		// Fixed flow-control windows (gRPC's default initial size):
		// with dynamic windows the server sends a bandwidth-estimation
		// PING, and a window update, for the request of nearly every
		// call and handles its ack, two frames each way per fetch for
		// requests of a few bytes on a local socket.
		grpc.StaticStreamWindowSize(staticWindow),
		grpc.StaticConnWindowSize(staticWindow),
		grpc.ReadBufferSize(readBuffer),
	}
}

// Serve serves the Workload API on l until ctx is done, then stops
// gracefully: open streams end with Unavailable (clients reconnect to the
// next server), and calls still running after a few seconds are cut. It
// closes l. Serve may be called once.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	s.mu.Lock()
	if s.served {
		s.mu.Unlock()
		return errors.New("workloadapi: Serve called twice")
	}
	s.served = true
	s.mu.Unlock()
	return s.serve(ctx, s.grpc, l)
}

// ServeSDS serves Envoy's Secret Discovery Service alone on l, as Serve
// does the Workload API (and stops likewise when ctx is done), for a
// server made with Config.SeparateSDS; without it, SDS is served by
// Serve and ServeSDS fails. It closes l. ServeSDS may be called once.
func (s *Server) ServeSDS(ctx context.Context, l net.Listener) error {
	if s.sdsGRPC == nil {
		l.Close()
		return errors.New("workloadapi: ServeSDS needs Config.SeparateSDS; SDS is served with the Workload API")
	}
	s.mu.Lock()
	if s.sdsServed {
		s.mu.Unlock()
		return errors.New("workloadapi: ServeSDS called twice")
	}
	s.sdsServed = true
	s.mu.Unlock()
	return s.serve(ctx, s.sdsGRPC, l)
}

// serve runs g on l until ctx is done, then stops it gracefully (open
// streams of every listener end with Unavailable), cutting calls still
// running after shutdownTimeout.
func (s *Server) serve(ctx context.Context, g *grpc.Server, l net.Listener) error {
	errCh := make(chan error, 1)
	go func() { errCh <- g.Serve(l) }()
	select {
	case err := <-errCh:
		return err
	case <-ctx.Done():
	}
	s.stopOnce.Do(func() { close(s.stopping) })
	stopped := make(chan struct{})
	go func() {
		g.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-s.clk.After(shutdownTimeout):
		s.log.Warn("workload API calls did not finish in time; closing them")
		g.Stop()
		<-stopped
	}
	return <-errCh
}

// FetchX509SVID streams the caller's X.509-SVIDs and bundles.
func (s *Server) FetchX509SVID(_ *workloadpb.X509SVIDRequest, stream grpc.ServerStreamingServer[workloadpb.X509SVIDResponse]) error {
	return streamX509(s, stream, func(snap *X509Snapshot) (*workloadpb.X509SVIDResponse, any, error) {
		enc, err := snap.encodedSVIDs()
		if err != nil {
			s.log.Error("building X509SVIDResponse", zap.Error(err))
			return nil, nil, status.Error(codes.Internal, "cannot encode SVID")
		}
		return enc.resp, enc.wire, nil
	})
}

// FetchX509Bundles streams the trust bundles (own and federated) to a
// caller entitled to at least one identity.
func (s *Server) FetchX509Bundles(_ *workloadpb.X509BundlesRequest, stream grpc.ServerStreamingServer[workloadpb.X509BundlesResponse]) error {
	return streamX509(s, stream, func(snap *X509Snapshot) (*workloadpb.X509BundlesResponse, any, error) {
		return snap.x509BundlesResponse(), nil, nil
	})
}

// streamX509 is the loop of both X.509 fetch streams: it attests the
// caller, subscribes to its identities and sends build(snapshot) each
// time that changes what the caller would receive. A caller that has
// (or is left with) no identity gets PermissionDenied. build returns the
// message and, when it has one, its wire form (a *wireMessage), which is
// what is sent.
func streamX509[T any, PT protoPtr[T]](s *Server, stream grpc.ServerStreamingServer[T], build func(*X509Snapshot) (PT, any, error)) error {
	ctx := stream.Context()
	sels, err := s.attest(ctx)
	if err != nil {
		return err
	}
	sub := s.cache.SubscribeX509(sels)
	defer sub.Close()

	out := changeSender[T, PT]{s: s, stream: stream}
	for {
		snap, err := s.next(ctx, sub)
		if err != nil {
			return err
		}
		if len(snap.Identities) == 0 {
			return s.noIdentity(ctx, sels)
		}
		resp, wire, err := build(snap)
		if err != nil {
			return err
		}
		if err := out.sendWire(ctx, resp, wire); err != nil {
			return err
		}
	}
}

// protoPtr is a pointer to a generated message type T.
type protoPtr[T any] interface {
	*T
	proto.Message
}

// changeSender sends the messages of one server stream: a message equal
// to the last one sent is skipped, the caller is checked again to still
// be the process that connected before every message after the first,
// and the first message is counted.
type changeSender[T any, PT protoPtr[T]] struct {
	s      *Server
	stream grpc.ServerStreamingServer[T]
	last   PT
}

func (c *changeSender[T, PT]) send(ctx context.Context, resp PT) error {
	return c.sendWire(ctx, resp, nil)
}

// sendWire is send for a message whose wire form, when not nil, is sent
// in its place (see wireCodec).
func (c *changeSender[T, PT]) sendWire(ctx context.Context, resp PT, wire any) error {
	first := c.last == nil
	// Responses are shared between streams (memoized per snapshot): the
	// same one again is a repeat without comparing it.
	if !first && (c.last == resp || proto.Equal(c.last, resp)) {
		return nil
	}
	if !first {
		if err := c.s.recheck(ctx); err != nil {
			return err
		}
	}
	var err error
	if wire != nil {
		err = c.stream.SendMsg(wire)
	} else {
		err = c.stream.Send((*T)(resp))
	}
	if err != nil {
		return err
	}
	if first {
		c.s.firstResponse(ctx)
	}
	c.last = resp
	return nil
}

var (
	errNoIdentity = status.Error(codes.PermissionDenied, "no identity issued")
	errNoJWT      = status.Error(codes.Unimplemented, "this Workload API's cache does not serve JWT-SVIDs")
)

// next waits for the subscription's next snapshot.
func (s *Server) next(ctx context.Context, sub X509Subscription) (*X509Snapshot, error) {
	select {
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	case <-s.stopping:
		return nil, status.Error(codes.Unavailable, "workload API is shutting down")
	case snap, ok := <-sub.Updates():
		if !ok || snap == nil {
			return nil, status.Error(codes.Unavailable, "workload API cache subscription ended")
		}
		return snap, nil
	}
}

// stillCaller checks that the process behind a connection is still the
// one that connected: alive, under the same pid, with the credentials and
// the program it connected with.
func (s *Server) stillCaller(info *PeerInfo) error {
	err := info.alive(&s.proc)
	if err == nil {
		return nil
	}
	s.log.Warn("caller is not the process that connected; denying and closing its connection",
		zap.Int32("pid", info.PID), zap.Uint32("uid", info.UID), zap.Error(err))
	// The connection will never serve again: close it once the refusal
	// has been sent, so that a client such as go-spiffe's, which retries
	// on the connection it has, opens a new one and is attested afresh
	// (as the process that connects then).
	info.closeAfter(s.clk, s.staleGrace)
	switch {
	case errors.Is(err, errCredsChanged):
		return status.Error(codes.PermissionDenied, "caller process changed its user or group since it connected; reconnect")
	case errors.Is(err, errExecd):
		return status.Error(codes.PermissionDenied, "caller process runs another program than when it connected; reconnect")
	}
	return status.Error(codes.PermissionDenied, "caller process exited or was replaced during attestation")
}

// recheck is stillCaller for a call already attested: a stream checks
// its caller again before each message after the first.
func (s *Server) recheck(ctx context.Context) error {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return status.Error(codes.PermissionDenied, "caller could not be identified")
	}
	info, ok := p.AuthInfo.(*PeerInfo)
	if !ok {
		return status.Error(codes.PermissionDenied, "caller could not be identified")
	}
	return s.stillCaller(info)
}

type selectorString struct{ s *sigilv1.Selector }

func (s selectorString) String() string { return s.s.GetType() + ":" + s.s.GetValue() }

func selectorStrings(sels []*sigilv1.Selector) []selectorString {
	out := make([]selectorString, len(sels))
	for i, s := range sels {
		out[i] = selectorString{s}
	}
	return out
}

// x509SVIDResponse returns the snapshot's X509SVIDResponse, built on
// the first call and shared, unmodified, by every later caller: the
// snapshot does not change once handed out. A response that cannot be
// built is not memoized.
func (snap *X509Snapshot) x509SVIDResponse() (*workloadpb.X509SVIDResponse, error) {
	enc, err := snap.encodedSVIDs()
	if err != nil {
		return nil, err
	}
	return enc.resp, nil
}

// encodedSVIDs is a snapshot's X509SVIDResponse and its wire form.
type encodedSVIDs struct {
	resp *workloadpb.X509SVIDResponse
	wire *wireMessage
}

// encodedSVIDs returns the snapshot's memoized X509SVIDResponse and wire
// form, building them on the first call.
func (snap *X509Snapshot) encodedSVIDs() (*encodedSVIDs, error) {
	if enc := snap.svidResp.Load(); enc != nil {
		return enc, nil
	}
	resp, err := x509SVIDResponse(snap)
	if err != nil {
		return nil, err
	}
	enc := &encodedSVIDs{resp: resp, wire: encodeX509SVIDResponse(resp)}
	// Concurrent first callers may build it twice; one of the equal
	// results is kept.
	if !snap.svidResp.CompareAndSwap(nil, enc) {
		enc = snap.svidResp.Load()
	}
	return enc, nil
}

// x509BundlesResponse is x509SVIDResponse for FetchX509Bundles.
func (snap *X509Snapshot) x509BundlesResponse() *workloadpb.X509BundlesResponse {
	if resp := snap.bundlesResp.Load(); resp != nil {
		return resp
	}
	resp := x509BundlesResponse(snap)
	if !snap.bundlesResp.CompareAndSwap(nil, resp) {
		resp = snap.bundlesResp.Load()
	}
	return resp
}

// x509SVIDResponse encodes a snapshot with at least one identity.
func x509SVIDResponse(snap *X509Snapshot) (*workloadpb.X509SVIDResponse, error) {
	resp := &workloadpb.X509SVIDResponse{
		Svids: make([]*workloadpb.X509SVID, 0, len(snap.Identities)),
	}
	for _, id := range snap.Identities {
		if len(id.Chain) == 0 && len(id.ChainDER) == 0 {
			return nil, fmt.Errorf("entry %s: empty certificate chain", id.EntryID)
		}
		if id.PrivateKey == nil && len(id.KeyDER) == 0 {
			return nil, fmt.Errorf("entry %s: no private key", id.EntryID)
		}
		key := id.KeyDER
		if len(key) == 0 {
			var err error
			key, err = x509.MarshalPKCS8PrivateKey(id.PrivateKey)
			if err != nil {
				return nil, fmt.Errorf("entry %s: %w", id.EntryID, err)
			}
		}
		chain := id.ChainDER
		if len(chain) == 0 {
			chain = concatDER(id.Chain)
		}
		var bundle []byte
		if b := bundleFor(snap, id.SPIFFEID.TrustDomain()); b != nil {
			bundle = bundleDER(b)
		}
		resp.Svids = append(resp.Svids, &workloadpb.X509SVID{
			SpiffeId:    id.SPIFFEID.String(),
			X509Svid:    chain,
			X509SvidKey: key,
			Bundle:      bundle,
			Hint:        id.Hint,
		})
	}
	resp.FederatedBundles = federatedBundles(snap)
	return resp, nil
}

// bundleFor returns the bundle of trust domain td in snap, or nil.
func bundleFor(snap *X509Snapshot, td spiffeid.TrustDomain) *x509bundle.Bundle {
	if snap.Bundle != nil && snap.Bundle.TrustDomain() == td {
		return snap.Bundle
	}
	if b := snap.Federated[td]; b != nil {
		return b
	}
	return snap.Bundle
}

func federatedBundles(snap *X509Snapshot) map[string][]byte {
	if len(snap.Federated) == 0 {
		return nil
	}
	out := make(map[string][]byte, len(snap.Federated))
	for td, b := range snap.Federated {
		if b == nil || (snap.Bundle != nil && td == snap.Bundle.TrustDomain()) {
			continue
		}
		out[td.IDString()] = federatedDER(b)
	}
	return out
}

// fedDER memoizes the DER encoding of federated bundles by bundle: a cache
// hands out the same *x509bundle.Bundle until the bundle changes, and
// every fetch of a federating workload carries it. Bounded: cleared when
// it holds maxFedDER encodings (old bundles are dropped with it).
var fedDER struct {
	sync.Mutex
	m map[*x509bundle.Bundle][]byte
}

const maxFedDER = 1024

func federatedDER(b *x509bundle.Bundle) []byte {
	fedDER.Lock()
	defer fedDER.Unlock()
	if der, ok := fedDER.m[b]; ok {
		return der
	}
	if fedDER.m == nil || len(fedDER.m) >= maxFedDER {
		fedDER.m = make(map[*x509bundle.Bundle][]byte)
	}
	der := concatDER(b.X509Authorities())
	fedDER.m[b] = der
	return der
}

// x509BundlesResponse encodes the own and federated bundles of snap, keyed
// by trust domain ID ("spiffe://example.org").
func x509BundlesResponse(snap *X509Snapshot) *workloadpb.X509BundlesResponse {
	bundles := federatedBundles(snap)
	if bundles == nil {
		bundles = make(map[string][]byte, 1)
	}
	if snap.Bundle != nil {
		bundles[snap.Bundle.TrustDomain().IDString()] = concatDER(snap.Bundle.X509Authorities())
	}
	return &workloadpb.X509BundlesResponse{Bundles: bundles}
}

func concatDER(certs []*x509.Certificate) []byte {
	n := 0
	for _, c := range certs {
		n += len(c.Raw)
	}
	out := make([]byte, 0, n)
	for _, c := range certs {
		out = append(out, c.Raw...)
	}
	return out
}

// callInfo travels in a call's context from the interceptor to the
// handler.
type callInfo struct {
	method string
	start  time.Time
}

type callInfoKey struct{}

func (s *Server) firstResponse(ctx context.Context) {
	if ci, ok := ctx.Value(callInfoKey{}).(*callInfo); ok {
		s.meter.FirstResponse(ci.method, s.clk.Now().Sub(ci.start))
	}
}

// checkHeader rejects calls without the Workload API security header.
func checkHeader(ctx context.Context) error {
	// Only this header's values are copied, not the whole metadata.
	if v := metadata.ValueFromIncomingContext(ctx, securityHeader); len(v) != 1 || v[0] != "true" {
		return status.Error(codes.InvalidArgument, "security header missing from request")
	}
	return nil
}

func (s *Server) begin(ctx context.Context, fullMethod string) (context.Context, *callInfo) {
	if p, ok := peer.FromContext(ctx); ok {
		if info, ok := p.AuthInfo.(*PeerInfo); ok {
			info.markCalled()
		}
	}
	ci := &callInfo{method: path.Base(fullMethod), start: s.clk.Now()}
	s.meter.CallStarted(ci.method)
	return context.WithValue(ctx, callInfoKey{}, ci), ci
}

func (s *Server) end(ctx context.Context, ci *callInfo, err error) {
	d := s.clk.Now().Sub(ci.start)
	code := status.Code(err)
	s.meter.CallDone(ci.method, code, d)
	lvl := zap.DebugLevel
	if code == codes.Internal || code == codes.Unknown {
		lvl = zap.ErrorLevel
	}
	if ce := s.log.Check(lvl, "workload API call"); ce != nil {
		var pid int32
		if p, ok := peer.FromContext(ctx); ok {
			if info, ok := p.AuthInfo.(*PeerInfo); ok {
				pid = info.PID
			}
		}
		ce.Write(zap.String("method", ci.method), zap.Int32("pid", pid),
			zap.Stringer("code", code), zap.Duration("duration", d), zap.Error(err))
	}
}

func (s *Server) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	ctx, ci := s.begin(ctx, info.FullMethod)
	defer func() { s.end(ctx, ci, err) }()
	if err := checkHeader(ctx); err != nil && !isSDSMethod(info.FullMethod) {
		return nil, err
	}
	return handler(ctx, req)
}

func (s *Server) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	ctx, ci := s.begin(ss.Context(), info.FullMethod)
	defer func() { s.end(ctx, ci, err) }()
	if err := checkHeader(ctx); err != nil && !isSDSMethod(info.FullMethod) {
		return err
	}
	return handler(srv, grpcstream.WithContext(ss, ctx))
}

// lastBundle memoizes the DER encoding of the most recent bundle: every
// fetch carries it, and it changes only on rotation.
var lastBundle atomic.Pointer[encodedBundle]

type encodedBundle struct {
	b   *x509bundle.Bundle
	der []byte
}

func bundleDER(b *x509bundle.Bundle) []byte {
	if e := lastBundle.Load(); e != nil && e.b == b {
		return e.der
	}
	der := concatDER(b.X509Authorities())
	lastBundle.Store(&encodedBundle{b: b, der: der})
	return der
}
