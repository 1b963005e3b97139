package server

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/audit"
	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/federation"
	"github.com/sigil-id/sigil/internal/storepb"
)

// The server half of federation (issue 12): the bundle endpoint and its
// SVID, the refresher on the leader, the configuration's relationships and
// the federation metrics. The admin API is in federation_admin.go, the
// federated bundles of the sync stream in sync.go.

// endpointSVIDID is the SPIFFE ID of the bundle endpoint's SVID:
// spiffe://<td>/sigil/server, the same on every server of the trust
// domain.
func endpointSVIDID(td spiffeid.TrustDomain) (spiffeid.ID, error) {
	return spiffeid.FromSegments(td, "sigil", "server")
}

// federationState is the server's federation runtime state.
type federationState struct {
	// svid is the endpoint SVID (https_spiffe endpoint certificate and
	// client certificate of fetches).
	svid     atomic.Pointer[tls.Certificate]
	endpoint *federation.Endpoint // nil without a bundle endpoint
	// rootCAs, when set by a test before Run, verifies https_web
	// endpoints instead of the system roots.
	rootCAs *x509.CertPool

	mu       sync.Mutex
	inFlight map[string]bool              // partner td → a RecordPartnerFetch is in flight
	writes   sync.WaitGroup               // the RecordPartnerFetch writes in flight; Run waits for them
	stopped  bool                         // Run is stopping: no new writes
	parsed   map[string]parsedAuthorities // partner td → its parsed X.509 authorities
	// refreshing is true while this server runs the refresher.
	refreshing bool
}

// mintEndpointSVID mints the bundle endpoint's SVID with the server's
// X.509 CA (never the cluster identity CA), with a key that exists only
// in this process.
func (s *Server) mintEndpointSVID(ctx context.Context, c *ca.CA) error {
	if c == nil {
		return errors.New("server: no X.509 CA for the bundle endpoint SVID")
	}
	id, err := endpointSVIDID(s.td)
	if err != nil {
		return fmt.Errorf("server: bundle endpoint SVID: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("server: generating bundle endpoint key: %w", err)
	}
	chain, err := c.SignX509SVID(ctx, ca.X509SVIDParams{PublicKey: key.Public(), SPIFFEID: id, TTL: s.cfg.AgentSVIDTTL})
	if err != nil {
		return fmt.Errorf("server: minting bundle endpoint SVID: %w", err)
	}
	cert := &tls.Certificate{PrivateKey: crypto.Signer(key), Leaf: chain[0]}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	s.fed.svid.Store(cert)
	return nil
}

// endpointSVID returns the current bundle endpoint SVID.
func (s *Server) endpointSVID() (*tls.Certificate, error) {
	c := s.fed.svid.Load()
	if c == nil {
		return nil, errors.New("server: no bundle endpoint SVID yet")
	}
	return c, nil
}

// newBundleEndpoint builds the bundle endpoint of the configuration (nil
// when none is configured). It reads nothing yet, so Run calls it before
// writing any state: an https_web endpoint whose files are bad fails the
// start.
func (s *Server) newBundleEndpoint() (*federation.Endpoint, error) {
	ec := s.cfg.Federation.BundleEndpoint
	if ec.Address == "" {
		return nil, nil
	}
	profile := ec.Profile
	if profile == "" {
		profile = federation.ProfileHTTPSSPIFFE
	}
	e, err := federation.NewEndpoint(federation.EndpointConfig{
		Profile:            profile,
		Bundle:             s.publicBundle,
		RefreshHint:        ec.RefreshHint,
		SVID:               s.endpointSVID,
		PartnerAuthorities: s.partnerAuthorities,
		OnPartnerFetch:     s.onPartnerFetch,
		CertFile:           ec.CertFile,
		KeyFile:            ec.KeyFile,
		OnRequest: func(ok bool) {
			outcome := "ok"
			if !ok {
				outcome = "error"
			}
			s.metrics.fed.endpointRequests.WithLabelValues(profile, outcome).Inc()
		},
		Logger: s.log.Named("bundle_endpoint"),
		Clock:  s.cfg.Clock,
	})
	if err != nil {
		return nil, fmt.Errorf("server: bundle endpoint: %w", err)
	}
	return e, nil
}

// publicBundle is the local bundle the endpoint serves (without the
// cluster identity CAs).
func (s *Server) publicBundle() (*sigilv1.Bundle, error) {
	if s.store == nil {
		return nil, errors.New("server: starting")
	}
	b, err := s.store.Read().Bundle(s.td.Name())
	if err != nil {
		return nil, fmt.Errorf("server: reading the local bundle: %w", err)
	}
	return b, nil
}

// partnerAuthorities returns the X.509 authorities of a federated trust
// domain (nil when there is no bundle of it), parsed once per version of
// the bundle.
func (s *Server) partnerAuthorities(td spiffeid.TrustDomain) []*x509.Certificate {
	if s.store == nil || td == s.td {
		return nil
	}
	f := &s.fed
	b, err := s.store.Read().FederatedBundle(td.Name())
	if err != nil {
		f.mu.Lock()
		delete(f.parsed, td.Name()) // a bundle deleted since
		f.mu.Unlock()
		return nil
	}
	f.mu.Lock()
	if c, ok := f.parsed[td.Name()]; ok && c.index == b.ModifyIndex {
		f.mu.Unlock()
		return c.certs
	}
	f.mu.Unlock()
	out := make([]*x509.Certificate, 0, len(b.X509Authorities))
	for _, a := range b.X509Authorities {
		if c, err := x509.ParseCertificate(a.Certificate); err == nil {
			out = append(out, c)
		}
	}
	f.mu.Lock()
	if f.parsed == nil {
		f.parsed = make(map[string]parsedAuthorities)
	}
	// Bounded by the federated bundles: only a trust domain with a bundle
	// here gets an entry, and a lookup after its deletion drops it.
	f.parsed[td.Name()] = parsedAuthorities{index: b.ModifyIndex, certs: out}
	f.mu.Unlock()
	return out
}

// parsedAuthorities caches the parsed X.509 authorities of one version
// (modify_index) of a federated bundle.
type parsedAuthorities struct {
	index uint64
	certs []*x509.Certificate
}

// partnerFetchTimeout bounds one RecordPartnerFetch write.
const partnerFetchTimeout = 10 * time.Second

// onPartnerFetch records, asynchronously, that an authenticated partner
// fetched the local bundle at sequence: only when the sequence is above
// the recorded one, at most one write in flight per partner (others are
// dropped: the next fetch records it). It never blocks the response.
func (s *Server) onPartnerFetch(td spiffeid.TrustDomain, sequence uint64) {
	if s.store == nil || s.runCtx == nil {
		return
	}
	name := td.Name()
	for _, pf := range s.store.Read().PartnerFetches() {
		if pf.TrustDomain == name && pf.SequenceNumber >= sequence {
			return
		}
	}
	f := &s.fed
	f.mu.Lock()
	if f.inFlight[name] || f.stopped {
		f.mu.Unlock()
		return
	}
	if f.inFlight == nil {
		f.inFlight = make(map[string]bool)
	}
	f.inFlight[name] = true
	f.writes.Add(1)
	f.mu.Unlock()
	go func() {
		defer f.writes.Done()
		defer func() {
			f.mu.Lock()
			delete(f.inFlight, name)
			f.mu.Unlock()
		}()
		ctx, cancel := context.WithTimeout(s.runCtx, partnerFetchTimeout)
		defer cancel()
		_, err := s.apply(ctx, &storepb.Command{Op: &storepb.Command_RecordPartnerFetch{RecordPartnerFetch: &storepb.RecordPartnerFetch{
			Fetch: &sigilv1.PartnerFetch{TrustDomain: name, SequenceNumber: sequence, FetchedAt: s.cfg.Clock.Now().Unix()},
		}}})
		if err != nil && s.runCtx.Err() == nil {
			s.log.Warn("recording a partner's bundle fetch", zap.String("trust_domain", name), zap.Uint64("sequence", sequence), zap.Error(err))
		}
	}()
}

// waitPartnerFetchWrites refuses new partner fetch writes and waits for
// those in flight.
func (s *Server) waitPartnerFetchWrites() {
	s.fed.mu.Lock()
	s.fed.stopped = true
	s.fed.mu.Unlock()
	s.fed.writes.Wait()
}

// serveBundleEndpoint serves the bundle endpoint on l until ctx is done;
// an early failure is sent to errc.
func (s *Server) serveBundleEndpoint(ctx context.Context, l net.Listener, errc chan<- error) {
	if err := s.fed.endpoint.Serve(ctx, l); err != nil && ctx.Err() == nil {
		errc <- fmt.Errorf("bundle endpoint: %w", err)
	}
}

// propagationDelay is the CA and JWT propagation delay: the configured one
// (or the default, a sixth of CATTL), raised to the partners' refresh
// bound while a bundle endpoint is served, so that a new key is in the
// published bundle long enough for every partner to fetch it before it
// signs anything.
func (s *Server) propagationDelay() time.Duration {
	d := s.cfg.CAPropagationDelay
	if s.cfg.Federation.BundleEndpoint.Address == "" {
		return d
	}
	if d == 0 {
		d = ca.DefaultPropagation(s.cfg.CATTL)
	}
	return max(d, s.cfg.Federation.partnerRefreshBound())
}

// partnerRefreshBound is PartnerRefreshBound or its default: twice the
// published refresh hint (partners poll at the hint; twice leaves room
// for one failed fetch), at least DefaultPartnerRefreshBound.
func (c FederationConfig) partnerRefreshBound() time.Duration {
	if c.PartnerRefreshBound > 0 {
		return c.PartnerRefreshBound
	}
	return max(DefaultPartnerRefreshBound, 2*c.BundleEndpoint.refreshHint())
}

// refreshHint is the published refresh hint: RefreshHint or its default.
func (b BundleEndpointConfig) refreshHint() time.Duration {
	if b.RefreshHint > 0 {
		return b.RefreshHint
	}
	return federation.DefaultRefreshHint
}

// leaderPoll is how often the leadership loop checks leadership besides
// Raft's leader observations. Like the Raft metrics' sampling it ticks on
// the wall clock: it is a safety net, not a schedule, and ticking on an
// injected fake clock would add to the waiters tests count.
const leaderPoll = time.Second

// federationLeaderLoop runs the refresher and writes the configuration's
// relationships while this server is the leader (a single server always
// is), until ctx is done.
func (s *Server) federationLeaderLoop(ctx context.Context) {
	ch := make(chan raft.Observation, 4)
	unregister := s.store.LeaderObservations(ch)
	defer unregister()
	tick := time.NewTicker(leaderPoll)
	defer tick.Stop()
	var term *leaderTerm
	defer func() { term.end() }()
	for {
		leader := s.store.IsLeader()
		switch {
		case leader && term == nil:
			term = s.startLeaderTerm(ctx)
		case !leader && term != nil:
			term.end()
			term = nil
		}
		select {
		case <-ctx.Done():
			return
		case <-ch:
		case <-tick.C:
		}
	}
}

// leaderTerm is the work of one term as leader: federation and the
// alert evaluation.
type leaderTerm struct {
	cancel context.CancelFunc
	done   chan struct{}
}

func (s *Server) startLeaderTerm(ctx context.Context) *leaderTerm {
	lctx, cancel := context.WithCancel(ctx)
	t := &leaderTerm{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(t.done)
		healthDone := make(chan struct{})
		go func() {
			defer close(healthDone)
			s.leadHealth(lctx) // see health_eval.go
		}()
		s.leadFederation(lctx)
		<-healthDone
	}()
	return t
}

// end stops the term's work and waits for it; a nil term is a no-op.
func (t *leaderTerm) end() {
	if t == nil {
		return
	}
	t.cancel()
	<-t.done
}

// leadFederation is the leader's federation work: the configuration's
// relationships, then the refresher, until ctx is done.
func (s *Server) leadFederation(ctx context.Context) {
	log := s.log.Named("federation")
	s.setRefreshing(true)
	defer s.setRefreshing(false)
	var wg sync.WaitGroup
	defer wg.Wait()
	if len(s.cfg.Federation.Relationships) > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.writeConfigRelationships(ctx, log)
		}()
	}
	fc := federation.FetchConfig{Timeout: s.cfg.Federation.FetchTimeout, ClientSVID: s.endpointSVID, RootCAs: s.fed.rootCAs}
	st := newFedStore(ctx, s)
	r, err := federation.NewRefresher(federation.RefresherConfig{
		Store:       st,
		FetchConfig: fc,
		MinRefresh:  s.cfg.Federation.MinRefresh,
		MaxRefresh:  s.cfg.Federation.MaxRefresh,
		Meter:       s.metrics.fed,
		Logger:      log,
		Clock:       s.cfg.Clock,
	})
	if err != nil {
		log.Error("federation refresher not started", zap.Error(err))
		return
	}
	log.Info("refreshing federated bundles (leader)")
	for {
		err := r.Run(ctx)
		if ctx.Err() != nil {
			return
		}
		log.Error("federation refresher stopped; restarting it", zap.Error(err))
		select {
		case <-ctx.Done():
			return
		case <-s.cfg.Clock.After(refresherRestart):
		}
	}
}

// refresherRestart is how long the leader waits before restarting a
// refresher that stopped.
const refresherRestart = 5 * time.Second

func (s *Server) setRefreshing(v bool) {
	s.fed.mu.Lock()
	s.fed.refreshing = v
	s.fed.mu.Unlock()
}

// isRefreshing reports whether this server runs the refresher.
func (s *Server) isRefreshing() bool {
	s.fed.mu.Lock()
	defer s.fed.mu.Unlock()
	return s.fed.refreshing
}

// writeConfigRelationships writes the configuration's relationships
// (upserts, with their bootstrap bundles), retrying failed writes until
// every one is written or ctx is done. A relationship that is stored
// unchanged is not written again.
func (s *Server) writeConfigRelationships(ctx context.Context, log *zap.Logger) {
	pending := s.cfg.Federation.Relationships
	backoff := time.Second
	for len(pending) > 0 {
		var failed []ConfigRelationship
		for _, cr := range pending {
			if err := s.writeConfigRelationship(ctx, cr); err != nil {
				if ctx.Err() != nil {
					return
				}
				log.Warn("writing a relationship of the configuration; will retry", zap.String("trust_domain", cr.Relationship.GetTrustDomain()), zap.Error(err))
				failed = append(failed, cr)
			}
		}
		pending = failed
		if len(pending) == 0 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-s.cfg.Clock.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// writeConfigRelationship upserts one relationship of the configuration.
func (s *Server) writeConfigRelationship(ctx context.Context, cr ConfigRelationship) error {
	rel := proto.Clone(cr.Relationship).(*sigilv1.FederationRelationship)
	rel.FromConfig, rel.CreatedAt, rel.ModifyIndex = true, 0, 0
	td, err := spiffeid.TrustDomainFromString(rel.TrustDomain)
	if err != nil {
		return fmt.Errorf("server: relationship %q: %w", rel.TrustDomain, err)
	}
	r := s.store.Read()
	var boot *sigilv1.Bundle
	if len(cr.BootstrapBundle) > 0 {
		if _, err := r.FederatedBundle(rel.TrustDomain); err != nil {
			if boot, err = federation.Decode(td, cr.BootstrapBundle); err != nil {
				return fmt.Errorf("server: bootstrap bundle of %q: %w", rel.TrustDomain, err)
			}
		}
	}
	if cur, err := r.FederationRelationship(rel.TrustDomain); err == nil && boot == nil &&
		cur.BundleEndpointUrl == rel.BundleEndpointUrl && cur.Profile == rel.Profile &&
		cur.EndpointSpiffeId == rel.EndpointSpiffeId && cur.FromConfig {
		return nil
	}
	cmd := &storepb.PutFederationRelationship{Relationship: rel, BootstrapBundle: boot}
	if _, err := s.apply(ctx, &storepb.Command{Op: &storepb.Command_PutFederationRelationship{PutFederationRelationship: cmd}}); err != nil {
		return err
	}
	s.audit(audit.Event{What: "federation_relationship_configured", Who: s.id.String(), Subject: rel.TrustDomain,
		Message: "federation relationship written from the configuration", Fields: []audit.Field{
			audit.String("trust_domain", rel.TrustDomain), audit.String("bundle_endpoint_url", rel.BundleEndpointUrl),
			audit.String("profile", rel.Profile), audit.Bool("bootstrap_bundle", boot != nil),
		}})
	return nil
}

// fedStore is federation.Store on the replicated store: reads from a
// Reader, writes through s.apply.
type fedStore struct {
	s *Server

	mu      sync.Mutex
	changed chan struct{} // closed at the next change of what Federation reads
}

// newFedStore returns the adapter; a goroutine that lives as long as ctx
// turns the store's watches into its change channels.
func newFedStore(ctx context.Context, s *Server) *fedStore {
	f := &fedStore{s: s}
	ws := f.watch()
	f.changed = make(chan struct{})
	go func() {
		for {
			if err := ws.WatchCtx(ctx); err != nil {
				return
			}
			// Watch the new state before publishing the new channel: a
			// caller that gets it reads a state at least as new as the
			// one watched.
			ws = f.watch()
			next := make(chan struct{})
			f.mu.Lock()
			old := f.changed
			f.changed = next
			f.mu.Unlock()
			close(old)
		}
	}()
	return f
}

// watch reads what Federation returns, registering the watches.
func (f *fedStore) watch() interface{ WatchCtx(context.Context) error } {
	r := f.s.store.Read()
	r.FederationRelationships()
	r.FederatedBundles()
	r.FederationStatuses()
	return r.WatchSet()
}

// Federation implements federation.Store.
func (f *fedStore) Federation() ([]*sigilv1.FederationRelationship, map[string]*sigilv1.Bundle, map[string]*sigilv1.FederationStatus, <-chan struct{}) {
	f.mu.Lock()
	ch := f.changed
	f.mu.Unlock()
	r := f.s.store.Read()
	rels := r.FederationRelationships()
	bundles := make(map[string]*sigilv1.Bundle)
	for _, b := range r.FederatedBundles() {
		bundles[b.TrustDomain] = b
	}
	statuses := make(map[string]*sigilv1.FederationStatus)
	for _, st := range r.FederationStatuses() {
		statuses[st.TrustDomain] = st
	}
	return rels, bundles, statuses, ch
}

// SetBundle implements federation.Store.
func (f *fedStore) SetBundle(ctx context.Context, b *sigilv1.Bundle, st *sigilv1.FederationStatus) error {
	_, err := f.s.apply(ctx, &storepb.Command{Op: &storepb.Command_SetFederatedBundle{SetFederatedBundle: &storepb.SetFederatedBundle{
		Bundle: b, Refresh: true, Status: st,
	}}})
	if err != nil {
		return err
	}
	f.s.audit(audit.Event{What: "federated_bundle_refreshed", Who: f.s.id.String(), Subject: b.TrustDomain, Message: "federated bundle refreshed",
		Fields: []audit.Field{audit.String("trust_domain", b.TrustDomain), audit.Uint64("sequence_number", b.SequenceNumber),
			audit.Int("x509_authorities", len(b.X509Authorities)), audit.Int("jwt_authorities", len(b.JwtAuthorities))}})
	return nil
}

// SetStatus implements federation.Store.
func (f *fedStore) SetStatus(ctx context.Context, st *sigilv1.FederationStatus) error {
	_, err := f.s.apply(ctx, &storepb.Command{Op: &storepb.Command_PutFederationStatus{PutFederationStatus: &storepb.PutFederationStatus{Status: st}}})
	return err
}

// fedMetrics are the federation metrics of the contracts; they implement
// federation.Meter.
type fedMetrics struct {
	refreshes        *prometheus.CounterVec
	bundleAge        *prometheus.GaugeVec
	endpointRequests *prometheus.CounterVec
}

func newFedMetrics(reg *prometheus.Registry) *fedMetrics {
	m := &fedMetrics{
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sigil_federation_refreshes_total",
			Help: "Fetches of federated bundles by this server (the leader), by trust domain and outcome (changed, unchanged, error).",
		}, []string{"trust_domain", "outcome"}),
		bundleAge: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sigil_federation_bundle_age_seconds",
			Help: "Seconds since the last successful fetch of a federated bundle (-1: never).",
		}, []string{"trust_domain"}),
		endpointRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sigil_federation_endpoint_requests_total",
			Help: "Requests of the local bundle endpoint, by profile and outcome (ok, error).",
		}, []string{"profile", "outcome"}),
	}
	reg.MustRegister(m.refreshes, m.bundleAge, m.endpointRequests)
	return m
}

// Refreshed implements federation.Meter.
func (m *fedMetrics) Refreshed(td, outcome string) { m.refreshes.WithLabelValues(td, outcome).Inc() }

// BundleAge implements federation.Meter.
func (m *fedMetrics) BundleAge(td string, age time.Duration) {
	if age < 0 {
		m.bundleAge.WithLabelValues(td).Set(-1)
		return
	}
	m.bundleAge.WithLabelValues(td).Set(age.Seconds())
}
