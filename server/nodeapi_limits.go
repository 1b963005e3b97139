package server

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/sourcelimit"
)

// nodeLimits bound what a node API caller can cost the server. A
// connection whose TLS handshake did not present a valid agent SVID
// ("unauthenticated": an agent that is attesting, or anyone else) may only
// attest, may read a few KiB, lives a minute at most, and attests at a
// bounded rate; agents with a valid SVID keep the server-wide limits,
// which fit the largest batch an agent sends.
type nodeLimits struct {
	// MaxRecvMsgSize bounds one message of any caller; a batch of
	// MaxBatchSize CSRs (about 200 bytes each) fits several times over.
	MaxRecvMsgSize int
	// MaxConcurrentStreams bounds the concurrent calls of one connection.
	MaxConcurrentStreams uint32
	// MaxHeaderListSize bounds the request headers of one call.
	MaxHeaderListSize uint32
	// HandshakeTimeout bounds a connection's TLS handshake.
	HandshakeTimeout time.Duration

	// MaxAttestRequestSize bounds an AttestRequest (token or evidence,
	// and CSR), and every message of AttestStream either way (the
	// agent's answers and the verifier's challenges).
	MaxAttestRequestSize int
	// MaxAttestRounds bounds the challenge rounds of one attestation on
	// AttestStream (the unary Attest allows none). A caller without an
	// agent SVID is also held to UnauthReadBudget, which its request and
	// answers must fit in.
	MaxAttestRounds int
	// MaxAttestDuration bounds one attestation on AttestStream, from the
	// call's start to the verifier's decision: a caller that stalls
	// (never sends its evidence or an answer) is cut off then, and its
	// in-flight slot freed.
	MaxAttestDuration time.Duration
	// UnauthReadBudget is how many bytes the server reads, handshake
	// included, from a connection without a valid agent SVID before it
	// closes it: room for a few attestations, not for a large message.
	UnauthReadBudget int64
	// UnauthConnLifetime is how long a connection without a valid agent
	// SVID may stay open.
	UnauthConnLifetime time.Duration
	// MaxUnauthConns bounds the established connections without a valid
	// agent SVID; one over it is closed right after its handshake, so
	// that it never keeps an agent from connecting.
	MaxUnauthConns int
	// MaxUnauthConnsPerSource bounds the connections from one source
	// address (IPv4 address or IPv6 /64) that are in their handshake or
	// established without a valid agent SVID.
	MaxUnauthConnsPerSource int
	// MaxHandshakes bounds the TLS handshakes in progress.
	MaxHandshakes int
	// ConnRatePerSource (new connections per second) and
	// ConnBurstPerSource bound how fast one source address opens
	// connections, each of which costs the server a TLS handshake (a
	// signature). The client's certificate is not known before the
	// handshake, so this applies to agents too; it is generous enough
	// for a rack of agents behind one NAT address reconnecting at once.
	ConnRatePerSource  float64
	ConnBurstPerSource int

	// MaxAttestsInFlight and MaxAttestsInFlightPerSource bound the
	// attestation calls in progress.
	MaxAttestsInFlight          int
	MaxAttestsInFlightPerSource int
	// AttestRatePerSource (calls per second) and AttestBurstPerSource
	// are the token bucket of one source address; AttestRate and
	// AttestBurst the one of all sources together.
	AttestRatePerSource  float64
	AttestBurstPerSource int
	AttestRate           float64
	AttestBurst          int
	// MaxSources bounds the source addresses tracked at once; idle ones
	// are forgotten when it is reached.
	MaxSources int
}

func defaultNodeLimits() nodeLimits {
	return nodeLimits{
		MaxRecvMsgSize:       4 << 20,
		MaxConcurrentStreams: 128,
		MaxHeaderListSize:    64 << 10,
		HandshakeTimeout:     10 * time.Second,

		MaxAttestRequestSize:    32 << 10,
		MaxAttestRounds:         4,
		MaxAttestDuration:       20 * time.Second,
		UnauthReadBudget:        64 << 10,
		UnauthConnLifetime:      time.Minute,
		MaxUnauthConns:          256,
		MaxUnauthConnsPerSource: 32,
		MaxHandshakes:           1024,
		ConnRatePerSource:       50,
		ConnBurstPerSource:      200,

		// A refused attestation costs a TLS handshake and a local
		// lookup; these bound that work and the log lines it writes,
		// and leave room for a rack of agents behind one NAT address
		// starting at once (they retry ResourceExhausted).
		MaxAttestsInFlight:          128,
		MaxAttestsInFlightPerSource: 32,
		AttestRatePerSource:         10,
		AttestBurstPerSource:        50,
		AttestRate:                  200,
		AttestBurst:                 400,
		MaxSources:                  16384,
	}
}

// errReadBudget ends a connection that read its whole budget.
var errReadBudget = errors.New("server: unauthenticated connection exceeded its read budget")

// nodeGuard enforces nodeLimits on the node API: as transport credentials
// (connection caps and read budgets) and as the gRPC tap handle (checks
// run on a call's headers, before its message is read).
type nodeGuard struct {
	lim nodeLimits
	clk clock.Clock
	log *zap.Logger
	// isAgent reports whether a handshake's peer certificates are a
	// valid agent SVID of the trust domain (or a downstream workload's
	// SVID: see downstream.go).
	isAgent func([]*x509.Certificate) bool
	// refuse returns the error for a call of method other than an
	// attestation on a connection without a valid agent SVID.
	refuse func(ctx context.Context, method string) error
	// isOpen reports whether a method is open to callers without a valid
	// SVID (and then rate-limited); nil means isOpenMethod (the node
	// API's attestations). The admin API's guard opens none.
	isOpen func(method string) bool

	mu          sync.RWMutex
	conns       map[string]*guardedConn // by remote address
	sources     sourcelimit.Table[*source]
	handshakes  int // in progress
	unauthConns int // established without a valid agent SVID
	inFlight    int
	global      *rate.Limiter // attestations of all sources
}

// source is what the guard tracks of one source address.
type source struct {
	attests     *rate.Limiter
	conns       *rate.Limiter // new connections
	unauthConns int           // in their handshake or established without a valid agent SVID
	inFlight    int
}

// idle reports whether forgetting s would change nothing.
func (s *source) Idle(now time.Time) bool {
	return s.inFlight == 0 && s.unauthConns == 0 && sourcelimit.BucketFull(s.attests, now) && sourcelimit.BucketFull(s.conns, now)
}

func newNodeGuard(lim nodeLimits, clk clock.Clock, log *zap.Logger, isAgent func([]*x509.Certificate) bool, refuse func(context.Context, string) error) *nodeGuard {
	return &nodeGuard{
		lim: lim, clk: clk, log: log, isAgent: isAgent, refuse: refuse,
		conns: make(map[string]*guardedConn),
		// Sweep a full table at most once a second, so that a flood of
		// new sources does not make every one of them scan it.
		sources: sourcelimit.NewTable(lim.MaxSources, time.Second, func() *source {
			return &source{
				attests: sourcelimit.NewBucket(lim.AttestRatePerSource, lim.AttestBurstPerSource),
				conns:   sourcelimit.NewBucket(lim.ConnRatePerSource, lim.ConnBurstPerSource),
			}
		}),
		global: sourcelimit.NewBucket(lim.AttestRate, lim.AttestBurst),
	}
}

// credentials wraps the node API's TLS credentials with the guard.
func (g *nodeGuard) credentials(tlsCreds credentials.TransportCredentials) credentials.TransportCredentials {
	return &guardedCreds{TransportCredentials: tlsCreds, g: g}
}

type guardedCreds struct {
	credentials.TransportCredentials
	g *nodeGuard
}

func (c *guardedCreds) Clone() credentials.TransportCredentials {
	return &guardedCreds{TransportCredentials: c.TransportCredentials.Clone(), g: c.g}
}

// ServerHandshake admits the connection as unauthenticated (refusing it
// over the caps), runs the TLS handshake within the read budget, and
// lifts the budget if the client presented a valid agent SVID.
func (c *guardedCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	g := c.g
	gc := &guardedConn{Conn: raw, g: g, addr: raw.RemoteAddr().String(), src: sourcelimit.Key(raw.RemoteAddr()), closed: make(chan struct{})}
	if err := g.admit(gc); err != nil {
		raw.Close()
		return nil, nil, err
	}
	gc.limited.Store(true)
	gc.budget.Store(g.lim.UnauthReadBudget)
	conn, info, err := c.TransportCredentials.ServerHandshake(gc)
	if err != nil {
		gc.release()
		return nil, nil, err
	}
	authed := false
	if ti, ok := info.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
		authed = g.isAgent(ti.State.PeerCertificates)
	}
	if err := g.established(gc, authed); err != nil {
		conn.Close()
		return nil, nil, err
	}
	if !authed {
		go gc.expire(g.lim.UnauthConnLifetime)
	}
	return conn, info, nil
}

// admit counts a new connection as a handshake in progress from its
// source, or refuses it.
func (g *nodeGuard) admit(gc *guardedConn) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.handshakes >= g.lim.MaxHandshakes {
		g.log.Debug("node API: refusing connection: too many TLS handshakes in progress", zap.String("remote", gc.addr))
		return fmt.Errorf("server: too many TLS handshakes in progress (%d)", g.lim.MaxHandshakes)
	}
	now := g.clk.Now()
	s, ok := g.sources.Add(gc.src, now)
	if !ok {
		return errors.New("server: too many source addresses")
	}
	if !s.conns.AllowN(now, 1) {
		g.log.Debug("node API: refusing connection: its source opens connections too fast", zap.String("remote", gc.addr))
		return fmt.Errorf("server: %s opens connections faster than %g per second", gc.src, g.lim.ConnRatePerSource)
	}
	if s.unauthConns >= g.lim.MaxUnauthConnsPerSource {
		g.log.Debug("node API: refusing connection: too many unauthenticated connections from its source", zap.String("remote", gc.addr))
		return fmt.Errorf("server: too many unauthenticated connections from %s (%d)", gc.src, g.lim.MaxUnauthConnsPerSource)
	}
	g.handshakes++
	s.unauthConns++
	gc.handshaking, gc.counted = true, true
	return nil
}

// established records a connection after its handshake. A connection
// without a valid agent SVID over MaxUnauthConns is refused (the caller
// closes it).
func (g *nodeGuard) established(gc *guardedConn, authed bool) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if gc.released {
		return errors.New("server: connection closed during its handshake")
	}
	if gc.handshaking {
		gc.handshaking = false
		g.handshakes--
	}
	gc.authed = authed
	switch {
	case authed:
		gc.limited.Store(false)
		g.uncountLocked(gc)
	case g.unauthConns >= g.lim.MaxUnauthConns:
		g.log.Debug("node API: closing connection: too many unauthenticated connections", zap.String("remote", gc.addr))
		return fmt.Errorf("server: too many unauthenticated connections (%d)", g.lim.MaxUnauthConns)
	default:
		g.unauthConns++
		gc.global = true
	}
	g.conns[gc.addr] = gc
	return nil
}

// uncountLocked stops counting gc against the limits.
func (g *nodeGuard) uncountLocked(gc *guardedConn) {
	if gc.handshaking {
		gc.handshaking = false
		g.handshakes--
	}
	if gc.global {
		gc.global = false
		g.unauthConns--
	}
	if !gc.counted {
		return
	}
	gc.counted = false
	if s, ok := g.sources.Get(gc.src); ok {
		s.unauthConns--
		g.sources.Forget(gc.src, s, g.clk.Now())
	}
}

// unauthConnCount is the number of connections counted as
// unauthenticated, for tests.
func (g *nodeGuard) unauthConnCount() int {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.unauthConns
}

// guardedConn is the raw connection under TLS. Without a valid agent SVID
// it reads at most its budget, then fails (and gRPC closes it).
type guardedConn struct {
	net.Conn
	g       *nodeGuard
	addr    string
	src     string
	limited atomic.Bool
	budget  atomic.Int64

	// guarded by g.mu
	handshaking bool // counted in g.handshakes
	counted     bool // counted in its source's unauthConns
	global      bool // counted in g.unauthConns
	authed      bool
	released    bool

	once   sync.Once
	closed chan struct{}
}

func (c *guardedConn) Read(p []byte) (int, error) {
	if !c.limited.Load() {
		return c.Conn.Read(p)
	}
	left := c.budget.Load()
	if left <= 0 {
		c.g.log.Warn("node API: closing an unauthenticated connection that exceeded its read budget",
			zap.String("remote", c.addr), zap.Int64("budget_bytes", c.g.lim.UnauthReadBudget))
		return 0, errReadBudget
	}
	if int64(len(p)) > left {
		p = p[:left]
	}
	n, err := c.Conn.Read(p)
	c.budget.Add(-int64(n))
	return n, err
}

func (c *guardedConn) Close() error {
	c.release()
	return c.Conn.Close()
}

// release forgets the connection; it runs once.
func (c *guardedConn) release() {
	c.once.Do(func() {
		close(c.closed)
		g := c.g
		g.mu.Lock()
		defer g.mu.Unlock()
		c.released = true
		g.uncountLocked(c)
		if g.conns[c.addr] == c {
			delete(g.conns, c.addr)
		}
	})
}

// expire closes the connection after d unless it closes first.
func (c *guardedConn) expire(d time.Duration) {
	select {
	case <-c.closed:
	case <-c.g.clk.After(d):
		c.g.log.Debug("node API: closing an unauthenticated connection at the end of its lifetime", zap.String("remote", c.addr))
		c.Conn.Close()
	}
}

// tap runs on a call's headers, before its message is read: a call other
// than an attestation (Attest, AttestStream) on a connection without a
// valid agent SVID is refused here, and an attestation is subject to the
// in-flight caps and the rate limits.
func (g *nodeGuard) tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	p, _ := peer.FromContext(ctx)
	var remote net.Addr
	if p != nil {
		remote = p.Addr
	}
	addr := ""
	if remote != nil {
		addr = remote.String()
	}
	g.mu.RLock()
	gc := g.conns[addr]
	authed := gc != nil && gc.authed
	g.mu.RUnlock()
	open := isOpenMethod
	if g.isOpen != nil {
		open = g.isOpen
	}
	if !open(info.FullMethodName) {
		if authed {
			return ctx, nil
		}
		// The same check (and error) as the auth interceptor; refused
		// here it costs no goroutine and reads no message.
		if err := g.refuse(ctx, info.FullMethodName); err != nil {
			return nil, err
		}
		return ctx, nil
	}

	src := sourcelimit.Key(remote)
	now := g.clk.Now()
	g.mu.Lock()
	if g.inFlight >= g.lim.MaxAttestsInFlight {
		g.mu.Unlock()
		return nil, status.Errorf(codes.ResourceExhausted, "too many node attestations in progress (%d); retry later", g.lim.MaxAttestsInFlight)
	}
	s, ok := g.sources.Add(src, now)
	if !ok {
		g.mu.Unlock()
		return nil, status.Error(codes.ResourceExhausted, "too many attesting source addresses; retry later")
	}
	if s.inFlight >= g.lim.MaxAttestsInFlightPerSource {
		g.mu.Unlock()
		return nil, status.Errorf(codes.ResourceExhausted, "too many node attestations in progress from %s (%d); retry later", src, g.lim.MaxAttestsInFlightPerSource)
	}
	if !s.attests.AllowN(now, 1) {
		g.mu.Unlock()
		g.log.Debug("node attestation rate-limited", zap.String("source", src))
		return nil, status.Errorf(codes.ResourceExhausted, "node attestation rate limit exceeded for %s (%g per second, burst %d); retry later",
			src, g.lim.AttestRatePerSource, g.lim.AttestBurstPerSource)
	}
	if !g.global.AllowN(now, 1) {
		g.mu.Unlock()
		g.log.Debug("node attestation rate-limited (all sources)", zap.String("source", src))
		return nil, status.Errorf(codes.ResourceExhausted, "node attestation rate limit exceeded (%g per second, burst %d); retry later",
			g.lim.AttestRate, g.lim.AttestBurst)
	}
	g.inFlight++
	s.inFlight++
	g.mu.Unlock()
	release := sync.OnceFunc(func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		g.inFlight--
		s.inFlight--
		g.sources.Forget(src, s, g.clk.Now())
	})
	// gRPC cancels a stream's context when the call ends.
	context.AfterFunc(ctx, release)
	return context.WithValue(ctx, attestSlotKey{}, release), nil
}

type attestSlotKey struct{}

// releaseAttestSlot gives the in-flight slot of the attestation call of
// ctx back before the call ends (for a call that goes on waiting without
// working); it does nothing for a context without one.
func releaseAttestSlot(ctx context.Context) {
	if release, ok := ctx.Value(attestSlotKey{}).(func()); ok {
		release()
	}
}

// attestsInFlight is the number of attestation calls in progress, for
// tests.
func (g *nodeGuard) attestsInFlight() int {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.inFlight
}
