package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/audit"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/trustbundle"
	"github.com/sigil-id/sigil/internal/unixsock"
	"github.com/sigil-id/sigil/workloadapi"
)

// Timing of the agent's loops.
const (
	syncRetryBase  = 100 * time.Millisecond
	syncRetryMax   = 5 * time.Second
	agentRetryBase = 5 * time.Second
	agentRetryMax  = time.Minute
	// connDrainTime is how long a replaced connection (after an agent
	// SVID renewal) stays open for the calls still running on it.
	connDrainTime = 30 * time.Second
	// maxBatchesInFlight bounds concurrent BatchNewX509SVID calls.
	maxBatchesInFlight = 4
)

// Agent is the node daemon. Create it with New and start it with Run.
type Agent struct {
	cfg   Config
	log   *zap.Logger
	clk   clock.Clock
	cache *cache
	// metrics is the agent's Prometheus registry (metrics.go).
	metrics *agentMetrics

	ready     chan struct{}
	readyOnce sync.Once
	running   atomic.Bool

	mu          sync.Mutex
	ident       *identity
	conn        *grpc.ClientConn
	connChanged chan struct{}
	oldConns    []*grpc.ClientConn
	listening   bool
	syncUp      bool
	syncErr     error
	authErr     error
	reattestErr error
	// reattestKick wakes agentLoop when a call was refused because the
	// server does not know this agent (evicted, or forgotten in a restore
	// from an older snapshot), so that it attests again. Buffered (1).
	reattestKick chan struct{}
	// agentAttempt is the last renewal of the agent SVID, and reportSeq
	// numbers the rotation reports (report.go).
	agentAttempt agentAttempt
	reportSeq    reportSeq
	// reportLoops counts the report loops running (at most one).
	reportLoops atomic.Int32
	// releaseHeap returns the free heap to the kernel after a full sync
	// of releaseAfterSync entries or more (debug.FreeOSMemory; tests
	// count its calls).
	releaseHeap func()
}

// New checks cfg and returns an agent that is not running yet.
func New(cfg Config) (*Agent, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger.With(zap.String("trust_domain", cfg.TrustDomain.Name()))
	if cfg.AuditSink == nil {
		cfg.AuditSink = audit.NewZap(log)
	}
	a := &Agent{
		cfg:          cfg,
		log:          log,
		clk:          cfg.Clock,
		cache:        newCache(cfg.TrustDomain, log.Named("cache"), cfg.Clock),
		ready:        make(chan struct{}),
		connChanged:  make(chan struct{}),
		reattestKick: make(chan struct{}, 1),
		releaseHeap:  debug.FreeOSMemory,
	}
	a.cache.setPolicy(newCachePolicy(cfg.SVIDCache))
	m, err := newAgentMetrics(a)
	if err != nil {
		return nil, err
	}
	a.metrics = m
	return a, nil
}

// Ready is closed once the agent has an SVID and a bundle, has received
// its first full set of entries and serves the Workload API.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// SPIFFEID is the agent's own SPIFFE ID; valid after Ready.
func (a *Agent) SPIFFEID() spiffeid.ID {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ident == nil {
		return spiffeid.ID{}
	}
	return a.ident.id
}

// Cache is the agent's store of entries, SVIDs and bundles as the
// Workload API sees it.
func (a *Agent) Cache() workloadapi.Cache { return a.cache }

// Healthy returns nil while the agent can do its job: the sync stream is
// up, or the material it holds is still valid. Otherwise it says what is
// wrong: a server refused the agent (evicted, forgotten or banned; with a
// node attestor that can attest again, whether it is attesting again or
// was refused that too), or its SVID expired and the stream is down.
func (a *Agent) Healthy() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ident == nil {
		return errors.New("agent: no agent identity yet")
	}
	if a.authErr != nil {
		if a.reattestErr != nil {
			return fmt.Errorf("agent was evicted or banned: %w; attesting again was refused: %v", a.authErr, a.reattestErr)
		}
		if a.canReattest() {
			return fmt.Errorf("agent was evicted or banned: %w; attesting again", a.authErr)
		}
		return fmt.Errorf("agent was evicted or banned: %w", a.authErr)
	}
	if a.syncUp {
		return nil
	}
	now := a.clk.Now()
	if now.Before(a.ident.notAfter) {
		return nil
	}
	if a.reattestErr != nil {
		return fmt.Errorf("agent SVID expired and cannot re-attest: %w", a.reattestErr)
	}
	return fmt.Errorf("agent SVID expired at %s and the sync stream is down: %v",
		a.ident.notAfter.UTC().Format(time.RFC3339), a.syncErr)
}

func (a *Agent) identity() *identity {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ident
}

func (a *Agent) setIdentity(id *identity) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.ident = id
}

func (a *Agent) setAuthErr(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.authErr = err
}

// refused records that the server refused the agent itself (err is an
// auth error: it was evicted, forgotten or banned, or its SVID is no
// longer accepted) and, if the node attestor can attest again, wakes
// agentLoop to do so.
func (a *Agent) refused(err error, msg string) {
	a.setAuthErr(err)
	if !a.canReattest() {
		a.log.Error("agent was evicted or banned: "+msg, zap.Error(err))
		return
	}
	a.log.Warn("agent was evicted, forgotten or banned: "+msg+"; attesting again", zap.Error(err))
	select {
	case a.reattestKick <- struct{}{}:
	default:
	}
}

// mustReattest reports whether the server refused the agent and its node
// attestor can attest again.
func (a *Agent) mustReattest() bool {
	a.mu.Lock()
	refused := a.authErr != nil
	a.mu.Unlock()
	return refused && a.canReattest()
}

// client returns the current node API client and a channel closed when
// the connection is replaced.
func (a *Agent) client() (sigilv1.NodeClient, <-chan struct{}) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return sigilv1.NewNodeClient(a.conn), a.connChanged
}

// tlsConfig is the mTLS configuration of the connection to the server: it
// presents the current agent SVID and verifies the server against the
// current bundle.
func (a *Agent) tlsConfig() *tls.Config {
	return serverTLSConfig(a.cfg.TrustDomain, a.cache, func() (*tls.Certificate, error) {
		return a.identity().tlsCertificate()
	})
}

// replaceConn opens a new connection, so that the server sees the current
// agent SVID, and retires the old one after a grace period.
func (a *Agent) replaceConn() error {
	conn, err := dial(a.cfg.ServerAddress, a.tlsConfig())
	if err != nil {
		return err
	}
	a.mu.Lock()
	old := a.conn
	a.conn = conn
	close(a.connChanged)
	a.connChanged = make(chan struct{})
	if old != nil {
		a.oldConns = append(a.oldConns, old)
	}
	a.mu.Unlock()
	if old != nil {
		time.AfterFunc(connDrainTime, func() { old.Close() })
	}
	return nil
}

func (a *Agent) closeConns() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.conn != nil {
		a.conn.Close()
	}
	for _, c := range a.oldConns {
		c.Close()
	}
	a.oldConns = nil
}

func (a *Agent) maybeReady() {
	a.mu.Lock()
	ok := a.ident != nil && a.listening
	a.mu.Unlock()
	if ok && a.cache.Bundle() != nil && a.cache.Synced() {
		a.readyOnce.Do(func() {
			entries, svids := a.cache.stats()
			a.log.Info("agent ready", zap.String("spiffe_id", a.SPIFFEID().String()),
				zap.Int("entries", entries), zap.Int("svids", svids))
			close(a.ready)
		})
	}
}

// Run attests the node or loads the saved identity, then syncs entries,
// mints and renews SVIDs and serves the Workload API (and, on its admin
// socket, the AgentAdmin API) until ctx is done.
// It returns nil on a clean shutdown.
func (a *Agent) Run(ctx context.Context) error {
	if !a.running.CompareAndSwap(false, true) {
		return errors.New("agent: Run called more than once")
	}
	// Refuse an unsafe or taken socket path before attesting or writing
	// anything; Listen below checks again.
	if err := workloadapi.CheckSocket(a.cfg.SocketPath); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	if err := unixsock.Check(a.cfg.AdminSocket, adminSocketOptions(a.cfg.DataDir)); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	if a.cfg.SDSSocket != "" {
		if err := workloadapi.CheckSocket(a.cfg.SDSSocket); err != nil {
			return fmt.Errorf("agent: SDS socket: %w", err)
		}
	}
	if err := os.MkdirAll(a.cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("agent: data directory: %w", err)
	}
	if fi, err := os.Stat(a.cfg.DataDir); err == nil && fi.Mode().Perm()&0o077 != 0 {
		a.log.Warn("data directory is accessible to other users; it holds the agent's private key",
			zap.String("path", a.cfg.DataDir), zap.Stringer("mode", fi.Mode().Perm()))
	}
	svidFiles, err := a.prepareSVIDFiles()
	if err != nil {
		return err
	}
	ident, bundle, err := a.loadOrAttest(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	a.setIdentity(ident)
	a.cache.SetBundle(bundle)
	defer a.closeConns()
	if err := a.replaceConn(); err != nil {
		return err
	}

	l, err := workloadapi.ListenFor(a.cfg.SocketPath, a.cfg.DataDir)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	srv, err := workloadapi.New(workloadapi.Config{
		Cache:           a.cache,
		Attestors:       a.cfg.WorkloadAttestors,
		AttestorTimeout: a.cfg.WorkloadAttestorTimeout,
		Logger:          a.log.Named("workloadapi"),
		Clock:           a.clk,
		Limits:          a.cfg.WorkloadAPILimits,
		Meter:           a.workloadMeter(),
		SeparateSDS:     a.cfg.SDSSocket != "",
	})
	if err != nil {
		l.Close()
		return fmt.Errorf("agent: %w", err)
	}
	var sdsLis net.Listener
	if a.cfg.SDSSocket != "" {
		if sdsLis, err = workloadapi.ListenFor(a.cfg.SDSSocket, a.cfg.DataDir); err != nil {
			l.Close()
			return fmt.Errorf("agent: SDS socket: %w", err)
		}
	}
	a.metrics.wlServer.Store(srv)
	adminLis, err := a.listenAdmin()
	if err != nil {
		l.Close()
		if sdsLis != nil {
			sdsLis.Close()
		}
		return err
	}
	adminSrv := newAdminServer(&adminAPI{a: a, wl: srv, procRoot: "/proc"})

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	serveErr := make(chan error, 2) // the Workload API's and SDS's
	wg.Go(func() {
		defer l.Close()
		if err := srv.Serve(ctx, l); err != nil && ctx.Err() == nil {
			serveErr <- err
			cancel()
		}
	})
	if sdsLis != nil {
		wg.Go(func() {
			defer sdsLis.Close()
			if err := srv.ServeSDS(ctx, sdsLis); err != nil && ctx.Err() == nil {
				serveErr <- err
				cancel()
			}
		})
	}
	wg.Go(func() {
		defer adminLis.Close() // removes the socket only if it is still ours
		go func() {
			<-ctx.Done()
			adminSrv.Stop()
		}()
		if err := adminSrv.Serve(adminLis); err != nil && ctx.Err() == nil {
			a.log.Error("agent admin API stopped", zap.Error(err))
		}
	})
	a.mu.Lock()
	a.listening = true
	a.mu.Unlock()
	sdsSocket := a.cfg.SDSSocket
	if sdsSocket == "" {
		sdsSocket = a.cfg.SocketPath
	}
	a.log.Info("workload API listening", zap.String("socket", a.cfg.SocketPath),
		zap.String("admin_socket", a.cfg.AdminSocket), zap.String("sds_socket", sdsSocket))
	a.maybeReady()

	wg.Go(func() { a.syncLoop(ctx) })
	wg.Go(func() { a.mintLoop(ctx) })
	wg.Go(func() { a.agentLoop(ctx) })
	for _, run := range svidFiles {
		wg.Go(func() { run(ctx) })
	}
	wg.Wait()
	a.log.Info("agent stopped")
	select {
	case err := <-serveErr:
		return fmt.Errorf("agent: workload API: %w", err)
	default:
		return nil
	}
}

// bootstrapBundle is what the agent trusts to authenticate a server when
// it attests: the configured bundle and the saved one.
func (a *Agent) bootstrapBundle() (*x509bundle.Bundle, error) {
	b := x509bundle.New(a.cfg.TrustDomain)
	for _, c := range a.cfg.TrustBundle {
		b.AddX509Authority(c)
	}
	if a.cfg.TrustBundlePath != "" {
		data, err := os.ReadFile(a.cfg.TrustBundlePath)
		if err != nil {
			return nil, fmt.Errorf("agent: trust bundle: %w", err)
		}
		certs, err := parsePEMCerts(data)
		if err != nil {
			return nil, fmt.Errorf("agent: trust bundle %s: %w", a.cfg.TrustBundlePath, err)
		}
		for i, c := range certs {
			if err := checkBundleCA(c); err != nil {
				return nil, fmt.Errorf("agent: trust bundle %s: certificate %d: %w", a.cfg.TrustBundlePath, i+1, err)
			}
			b.AddX509Authority(c)
		}
	}
	saved, err := loadBundle(a.cfg.DataDir, a.cfg.TrustDomain)
	if err != nil {
		a.log.Warn("ignoring unreadable saved bundle", zap.Error(err))
	} else if saved != nil {
		for _, c := range saved.X509Authorities() {
			b.AddX509Authority(c)
		}
	}
	if b.Empty() {
		return nil, errors.New("agent: no trust bundle to authenticate the server: set TrustBundlePath or TrustBundle")
	}
	return b, nil
}

// checkBundleCA refuses a certificate that is not a CA certificate: a
// trust bundle holds the trust domain's CAs (`sigil bundle show`), and a
// leaf put there would be trusted as a root.
func checkBundleCA(c *x509.Certificate) error {
	if !c.BasicConstraintsValid || !c.IsCA {
		return fmt.Errorf("%q is not a CA certificate; a trust bundle holds the trust domain's CA certificates, as `sigil bundle show` prints them", c.Subject.String())
	}
	return nil
}

// loadOrAttest returns the saved identity if it is still valid, or attests
// the node.
func (a *Agent) loadOrAttest(ctx context.Context) (*identity, *x509bundle.Bundle, error) {
	ident, err := loadIdentity(a.cfg.DataDir, a.cfg.TrustDomain)
	if err != nil {
		a.log.Warn("saved agent identity is unusable; attesting again", zap.Error(err))
	}
	expired := false
	if ident != nil {
		if a.clk.Now().Before(ident.notAfter) {
			bundle, err := loadBundle(a.cfg.DataDir, a.cfg.TrustDomain)
			if err != nil || bundle == nil {
				bundle, err = a.bootstrapBundle()
			}
			if err == nil {
				a.log.Info("loaded agent identity", zap.String("spiffe_id", ident.id.String()),
					zap.String("serial", ident.chain[0].SerialNumber.Text(16)),
					zap.Time("expires_at", ident.notAfter))
				return ident, bundle, nil
			}
			a.log.Warn("no bundle for the saved agent identity; attesting again", zap.Error(err))
		} else {
			expired = true
			a.log.Info("saved agent SVID has expired; attesting again",
				zap.String("spiffe_id", ident.id.String()), zap.Time("expired_at", ident.notAfter))
		}
	}
	for attempt := 0; ; attempt++ {
		ident, bundle, err := a.attest(ctx)
		if err == nil {
			return ident, bundle, nil
		}
		if !retryable(err) {
			if spent, ok := a.spentMessage(); expired && ok {
				err = fmt.Errorf("agent SVID expired and cannot re-attest: %s: %w", spent, err)
			}
			return nil, nil, err
		}
		d := backoff(syncRetryBase, syncRetryMax, attempt)
		a.log.Warn("attestation failed; retrying", zap.Duration("retry_in", d), zap.Error(err))
		select {
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		case <-a.clk.After(d):
		}
	}
}

// retryable reports whether a call failed for a reason that may go away.
func retryable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Aborted:
		return true
	}
	return false
}

// nodeAttestor is the agent's node attestor (Config.NodeAttestor), and
// false if it has none.
func (a *Agent) nodeAttestor() (node.Attestor, bool) {
	return a.cfg.NodeAttestor, a.cfg.NodeAttestor != nil
}

// canReattest reports whether the node attestor can attest the node
// again (it does not implement node.SingleUse).
func (a *Agent) canReattest() bool {
	att, ok := a.nodeAttestor()
	if !ok {
		return false
	}
	_, single := att.(node.SingleUse)
	return !single
}

// spentMessage is what to tell the operator when the node attestor works
// once (node.SingleUse) and an attestation after its first was refused;
// false if the attestor can attest again.
func (a *Agent) spentMessage() (string, bool) {
	att, ok := a.nodeAttestor()
	if !ok {
		return "", false
	}
	su, ok := att.(node.SingleUse)
	if !ok {
		return "", false
	}
	return su.SpentMessage(), true
}

// attest proves the node to a server with the node attestor and returns
// the agent's new identity and bundle, saved to the data directory.
func (a *Agent) attest(ctx context.Context) (*identity, *x509bundle.Bundle, error) {
	att, ok := a.nodeAttestor()
	if !ok {
		return nil, nil, errors.New("agent: no saved identity and no node attestor to attest with")
	}
	bootstrap, err := a.bootstrapBundle()
	if err != nil {
		return nil, nil, err
	}
	payload, err := att.Payload(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("agent: %s attestation payload: %w", att.Name(), err)
	}
	key, csr, err := newKeyAndCSR()
	if err != nil {
		return nil, nil, fmt.Errorf("agent: %w", err)
	}
	conn, err := dial(a.cfg.ServerAddress, serverTLSConfig(a.cfg.TrustDomain, bootstrap, nil))
	if err != nil {
		return nil, nil, err
	}
	defer conn.Close()
	cctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	resp, err := attestCall(cctx, sigilv1.NewNodeClient(conn), att, &sigilv1.AttestRequest{
		AttestationType: att.Name(),
		Payload:         payload,
		Csr:             csr,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("agent: attestation: %w", err)
	}
	chain, err := parseDERChain(resp.GetSvidChain())
	if err != nil {
		return nil, nil, fmt.Errorf("agent: attestation returned a bad SVID: %w", err)
	}
	id, err := checkAgentSVID(a.cfg.TrustDomain, chain, key)
	if err != nil {
		return nil, nil, fmt.Errorf("agent: attestation returned a bad SVID: %w", err)
	}
	if resp.GetSpiffeId() != "" && resp.GetSpiffeId() != id.String() {
		return nil, nil, fmt.Errorf("agent: attestation returned SPIFFE ID %q but an SVID for %q", resp.GetSpiffeId(), id)
	}
	bundle := bootstrap
	if resp.GetBundle() != nil {
		if bundle, err = trustbundle.FromProto(a.cfg.TrustDomain, resp.GetBundle()); err != nil {
			return nil, nil, fmt.Errorf("agent: attestation returned a bad bundle: %w", err)
		}
	}
	if _, _, err := x509svid.Verify(chain, bundle, x509svid.WithTime(a.clk.Now())); err != nil {
		return nil, nil, fmt.Errorf("agent: attestation returned an SVID that does not verify against the bundle: %w", err)
	}
	ident := newIdentity(chain, key)
	if err := saveIdentity(a.cfg.DataDir, ident); err != nil {
		return nil, nil, fmt.Errorf("agent: save identity: %w", err)
	}
	if err := saveBundle(a.cfg.DataDir, bundle); err != nil {
		return nil, nil, fmt.Errorf("agent: save bundle: %w", err)
	}
	a.cfg.AuditSink.Audit(audit.Event{What: "agent_attested", Subject: id.String(), Message: "node attested",
		Fields: []audit.Field{
			audit.String("spiffe_id", id.String()),
			audit.String("attestation_type", att.Name()),
			audit.String("serial", chain[0].SerialNumber.Text(16)),
			audit.Time("expires_at", ident.notAfter),
			audit.Int("bundle_authorities", len(bundle.X509Authorities())),
		}})
	return ident, bundle, nil
}

// attestCall runs one attestation on the node API: on AttestStream,
// answering the verifier's challenges with att; or, on a server of the
// previous version, which does not serve AttestStream, on the unary
// Attest if att needs no challenge (node.ChallengeFree). Such a server
// answers AttestStream with Unimplemented, or, to a caller without an
// agent SVID, with Unauthenticated (its guard lets such a caller call
// Attest alone); this version's server answers neither for AttestStream.
func attestCall(ctx context.Context, c sigilv1.NodeClient, att node.Attestor, req *sigilv1.AttestRequest) (*sigilv1.AttestResponse, error) {
	resp, err := attestStream(ctx, c, att, req)
	if code := status.Code(err); code == codes.Unimplemented || code == codes.Unauthenticated {
		if cf, ok := att.(node.ChallengeFree); ok && cf.ChallengeFree() {
			return c.Attest(ctx, req)
		}
	}
	return resp, err
}

// attestStream runs one attestation on AttestStream.
func attestStream(ctx context.Context, c sigilv1.NodeClient, att node.Attestor, req *sigilv1.AttestRequest) (*sigilv1.AttestResponse, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the call on every return
	stream, err := c.AttestStream(ctx)
	if err != nil {
		return nil, err
	}
	// A Send that fails with io.EOF means the server ended the call; its
	// status comes with the next Recv.
	err = stream.Send(&sigilv1.AttestStreamRequest{Step: &sigilv1.AttestStreamRequest_Attest{Attest: req}})
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	for rounds := 0; ; rounds++ {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil, errors.New("the server ended the attestation without a result")
		}
		if err != nil {
			return nil, err
		}
		switch step := msg.GetStep().(type) {
		case *sigilv1.AttestStreamResponse_Result:
			return step.Result, nil
		case *sigilv1.AttestStreamResponse_Challenge:
			ans, err := att.Answer(ctx, step.Challenge)
			if err != nil {
				return nil, fmt.Errorf("%s attestor answering challenge %d: %w", att.Name(), rounds+1, err)
			}
			err = stream.Send(&sigilv1.AttestStreamRequest{Step: &sigilv1.AttestStreamRequest_Answer{Answer: ans}})
			if err != nil && !errors.Is(err, io.EOF) {
				return nil, err
			}
		default:
			return nil, errors.New("the server sent an attestation message with neither a challenge nor a result")
		}
	}
}

// applyBundle installs a bundle received from the server and saves it.
func (a *Agent) applyBundle(pb *sigilv1.Bundle) {
	b, err := trustbundle.FromProto(a.cfg.TrustDomain, pb)
	if err != nil {
		a.log.Error("ignoring bad bundle from server", zap.Error(err))
		return
	}
	if cur := a.cache.Bundle(); cur != nil && cur.Equal(b) {
		return
	}
	// Saved first, so that a restart never trusts less than workloads
	// were told to.
	if err := saveBundle(a.cfg.DataDir, b); err != nil {
		a.log.Error("could not save bundle", zap.Error(err))
	}
	if a.cache.SetBundle(b) {
		a.log.Info("trust bundle updated", zap.Int("x509_authorities", len(b.X509Authorities())),
			zap.Uint64("sequence_number", pb.GetSequenceNumber()))
	}
}
