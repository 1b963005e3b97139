package server

import (
	"context"
	"crypto/x509"
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/sigil-id/sigil/alert"
	"github.com/sigil-id/sigil/audit"
	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/federation"
	"github.com/sigil-id/sigil/health"
	"github.com/sigil-id/sigil/internal/storepb"
	"github.com/sigil-id/sigil/raftstore"
)

// Rotation-health evaluation (issue 13). The leader, every
// EvaluateInterval, builds a health.Snapshot from the cluster-wide view
// (gatherHealth) and the replicated state, asks health.Evaluate which
// alerts fire, and compares them with the alerts recorded in Raft: a new
// or changed alert is fired on the dispatcher and recorded (keeping the
// StartsAt of the first record), one that stopped firing is resolved and
// removed. A new leader adopts the recorded alerts when its term starts
// (so their repeats go on from it) and resolves, at its first evaluation,
// those that no longer fire; a leader that loses its term forgets them
// without resolving them. Every server, leader or not, raises
// ClusterNoLeader itself (not through Raft: without a leader nothing can
// be written).

// DefaultEvaluateInterval is how often the leader evaluates the alert
// conditions when Config.EvaluateInterval is zero.
const DefaultEvaluateInterval = 15 * time.Second

// healthEval is the server's evaluation state. The func fields default
// to the real gather, health.Evaluate and health.NoLeader; tests may
// replace them before Run.
type healthEval struct {
	gather   func(ctx context.Context) healthView
	evaluate func(health.Config, health.Snapshot) []alert.Alert
	noLeader func(cfg health.Config, source string, now, since time.Time) (alert.Alert, bool)
	// window counts failures across terms (used by one leader loop at a
	// time): a *health.Window.
	window failureWindow

	mu sync.Mutex
	// local are this server's own alerts (ClusterNoLeader), by key.
	local map[string]alert.Alert
}

// failureWindow is what the evaluation needs of a *health.Window.
type failureWindow interface {
	Observe(now time.Time, server, instance string, f health.Failures)
	Count(now time.Time) health.Failures
}

func newHealthEval(s *Server) healthEval {
	return healthEval{
		gather:   s.gatherHealth,
		evaluate: health.Evaluate,
		noLeader: health.NoLeader,
		window:   health.NewWindow(s.cfg.Health.FailureWindow),
		local:    map[string]alert.Alert{},
	}
}

// recordOf is the Raft record of a.
func recordOf(a alert.Alert) *storepb.AlertRecord {
	return &storepb.AlertRecord{
		Key: a.Key, Name: a.Name, Severity: string(a.Severity), Summary: a.Summary,
		Details: maps.Clone(a.Details), Source: a.Source, StartsAt: a.StartsAt.Unix(), GeneratorUrl: a.GeneratorURL,
	}
}

// alertOf is the firing alert of a Raft record.
func alertOf(r *storepb.AlertRecord) alert.Alert {
	return alert.Alert{
		Key: r.Key, Name: r.Name, Severity: alert.Severity(r.Severity), Summary: r.Summary,
		Details: maps.Clone(r.Details), Source: r.Source, StartsAt: time.Unix(r.StartsAt, 0).UTC(), GeneratorURL: r.GeneratorUrl,
	}
}

// sameAlert reports whether the recorded r says what a says: the source
// (the leader that raised it) and the start are not compared.
func sameAlert(r *storepb.AlertRecord, a alert.Alert) bool {
	return r.Name == a.Name && r.Severity == string(a.Severity) && r.Summary == a.Summary &&
		r.GeneratorUrl == a.GeneratorURL && maps.Equal(r.Details, a.Details)
}

// Audit events of alerts: one fired (or changed), one resolved.
const (
	auditAlertFired    = "alert_fired"
	auditAlertResolved = "alert_resolved"
)

// auditAlert records that an alert fired (or changed) or was resolved.
func (s *Server) auditAlert(what string, a alert.Alert) {
	msg := "alert fired"
	if what == auditAlertResolved {
		msg = "alert resolved"
	}
	s.audit(audit.Event{What: what, Who: s.id.String(), Subject: a.Key, Message: msg,
		Fields: []audit.Field{
			audit.String("name", a.Name), audit.String("severity", string(a.Severity)), audit.String("source", a.Source),
			audit.Time("starts_at", a.StartsAt), audit.String("summary", a.Summary),
		}})
}

// leadHealth is the leader's evaluation loop of one term, until ctx is
// done: it adopts the recorded alerts, then evaluates every
// EvaluateInterval. When the term ends, the alerts it tracks are
// forgotten on this server's dispatcher (the next leader resolves them).
func (s *Server) leadHealth(ctx context.Context) {
	t := &healthTerm{s: s, log: s.log.Named("health"), start: s.cfg.Clock.Now(), unreachable: map[string]time.Time{}, firing: map[string]bool{}}
	defer t.forget()
	for _, r := range s.store.Read().Alerts() {
		a := alertOf(r)
		s.alerts.Fire(a)
		t.firing[a.Key] = true
	}
	if n := len(t.firing); n > 0 {
		t.log.Info("adopted the recorded alerts", zap.Int("alerts", n))
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.cfg.Clock.After(s.cfg.EvaluateInterval):
		}
		t.round(ctx)
	}
}

// healthTerm is the state of one term's evaluation loop.
type healthTerm struct {
	s     *Server
	log   *zap.Logger
	start time.Time
	// unreachable: member name → since when this term has seen it
	// unreachable.
	unreachable map[string]time.Time
	// firing: the keys this term fired on the dispatcher.
	firing map[string]bool
}

func (t *healthTerm) forget() {
	for key := range t.firing {
		t.s.alerts.Forget(key)
	}
}

// round runs one evaluation and applies its outcome. An evaluation that
// fails changes nothing (it never resolves what it could not see).
func (t *healthTerm) round(ctx context.Context) {
	s := t.s
	alerts, ok := t.evaluate(ctx)
	if !ok || ctx.Err() != nil {
		return
	}
	recorded := map[string]*storepb.AlertRecord{}
	for _, r := range s.store.Read().Alerts() {
		recorded[r.Key] = r
	}
	upd := &storepb.UpdateAlerts{}
	var fire, changed []alert.Alert
	want := map[string]bool{}
	for _, a := range alerts {
		if a.Key == "" || a.Key == health.KeyClusterNoLeader || want[a.Key] {
			continue
		}
		if len(want) == raftstore.MaxAlerts {
			t.log.Warn("more alerts fire than the store keeps; the rest are left out", zap.Int("max", raftstore.MaxAlerts), zap.Int("firing", len(alerts)))
			break
		}
		a.EndsAt = time.Time{}
		r, had := recorded[a.Key]
		if had {
			a.StartsAt = time.Unix(r.StartsAt, 0).UTC()
		}
		rec := recordOf(a)
		if err := raftstore.CheckAlertRecord(rec); err != nil {
			t.log.Error("alert left out: not within the store's bounds", zap.String("key", a.Key), zap.Error(err))
			continue
		}
		want[a.Key] = true
		if had && sameAlert(r, a) {
			// Already recorded: keep the record (and its source).
			fire = append(fire, alertOf(r))
			continue
		}
		upd.Fired = append(upd.Fired, rec)
		changed = append(changed, a)
	}
	var gone []*storepb.AlertRecord
	for key, r := range recorded {
		if !want[key] {
			upd.Resolved = append(upd.Resolved, key)
			gone = append(gone, r)
		}
	}
	sort.Strings(upd.Resolved)
	if len(upd.Fired) > 0 || len(upd.Resolved) > 0 {
		cmd := &storepb.Command{Op: &storepb.Command_UpdateAlerts{UpdateAlerts: upd}}
		if _, err := s.apply(ctx, cmd); err != nil {
			// Retried at the next evaluation; the receivers hear of the
			// change once it is recorded.
			t.log.Warn("recording alerts failed", zap.Error(err))
			changed, gone = nil, nil
		}
	}
	for _, a := range fire {
		s.alerts.Fire(a)
		t.firing[a.Key] = true
	}
	// Each audit event is emitted once the change is recorded, before
	// the receivers hear of it.
	for _, a := range changed {
		s.auditAlert(auditAlertFired, a)
		s.alerts.Fire(a)
		t.firing[a.Key] = true
	}
	now := s.cfg.Clock.Now()
	for _, r := range gone {
		a := alertOf(r)
		a.EndsAt = now
		s.auditAlert(auditAlertResolved, a)
		s.alerts.Resolve(r.Key, now)
		delete(t.firing, r.Key)
	}
}

// evaluate builds the snapshot and evaluates it. ok is false when the
// gather or the evaluation failed: a panic there is logged, not allowed
// to stop the server (the CA matters more than its alerts).
func (t *healthTerm) evaluate(ctx context.Context) (alerts []alert.Alert, ok bool) {
	s := t.s
	defer func() {
		if r := recover(); r != nil {
			t.log.Error("alert evaluation failed", zap.String("panic", fmt.Sprint(r)))
			alerts, ok = nil, false
		}
	}()
	gctx, cancel := context.WithTimeout(ctx, s.cfg.EvaluateInterval)
	view := s.eval.gather(gctx)
	cancel()
	now := s.cfg.Clock.Now()
	for _, c := range view.Counters {
		s.eval.window.Observe(now, c.Server, c.Instance, c.Failures)
	}
	snap := health.Snapshot{
		Now:         now,
		Source:      s.cfg.NodeName,
		TermStart:   t.start,
		Reports:     view.Reports,
		Agents:      s.healthAgents(),
		Authorities: s.healthAuthorities(),
		Federation:  s.healthFederation(),
		Members:     t.members(now, view.Unreachable),
		Servers:     view.Servers,
		Failures:    s.eval.window.Count(now),
	}
	return s.eval.evaluate(s.cfg.Health, snap), true
}

// healthAgents lists the attested agents of the store.
func (s *Server) healthAgents() []health.Agent {
	var out []health.Agent
	r := s.store.Read()
	token := ""
	for {
		nodes, next, err := r.ListNodes(token, 0)
		if err != nil {
			return out
		}
		for _, n := range nodes {
			out = append(out, health.Agent{
				ID:         n.SpiffeId,
				AttestedAt: unixTime(n.CreatedAt),
				ExpiresAt:  unixTime(n.CertNotAfter),
				Banned:     n.Banned,
			})
		}
		if next == "" {
			return out
		}
		token = next
	}
}

// healthAuthorities lists the CA and JWT keys of every server: this
// server's from its key slots (with their states), the others' from the
// trust bundle. The bundle does not say which of a server's keys is
// active and which prepared, so of each server's untainted keys of a kind
// the one that expires last is given as "active" and the others as
// "retired": a server whose last key expires soon has no successor,
// which is what the condition asks.
func (s *Server) healthAuthorities() []health.Authority {
	var out []health.Authority
	if s.auth != nil {
		for _, mgr := range []*ca.Manager{s.auth.x509, s.auth.jwt} {
			for _, sl := range mgr.Slots() {
				st := string(sl.State)
				if sl.Tainted {
					st = "tainted"
				}
				out = append(out, health.Authority{Kind: string(mgr.Kind()), Server: s.cfg.NodeName, ID: sl.ID, State: st, ExpiresAt: sl.NotAfter})
			}
		}
	}
	b, err := s.store.Read().Bundle(s.td.Name())
	if err != nil {
		return out
	}
	type group struct{ kind, server string }
	latest := map[group]int{}
	var others []health.Authority
	add := func(kind, server, id string, notAfter int64, tainted bool) {
		if server == s.cfg.NodeName || server == "" {
			return
		}
		a := health.Authority{Kind: kind, Server: server, ID: id, State: "retired", ExpiresAt: time.Unix(notAfter, 0).UTC()}
		if tainted {
			a.State = "tainted"
			others = append(others, a)
			return
		}
		others = append(others, a)
		g := group{kind, server}
		if i, ok := latest[g]; !ok || others[i].ExpiresAt.Before(a.ExpiresAt) {
			latest[g] = len(others) - 1
		}
	}
	for _, x := range append(slices.Clip(b.X509Authorities), b.X509Intermediates...) {
		if x.Upstream {
			continue // no server holds it: nothing of Sigil's succeeds it
		}
		id := ""
		if c, err := x509.ParseCertificate(x.Certificate); err == nil {
			id = raftstore.X509AuthorityID(c)
		}
		add("x509", x.ServerId, id, x.NotAfter, x.Tainted)
	}
	for _, j := range b.JwtAuthorities {
		add("jwt", j.ServerId, j.KeyId, j.ExpiresAt, j.Tainted)
	}
	for _, i := range latest {
		others[i].State = string(ca.StateActive)
	}
	return append(out, others...)
}

// healthFederation lists the refresh state of every relationship.
func (s *Server) healthFederation() []health.FederatedBundle {
	r := s.store.Read()
	var out []health.FederatedBundle
	for _, rel := range r.FederationRelationships() {
		fb := health.FederatedBundle{TrustDomain: rel.TrustDomain, CreatedAt: unixTime(rel.CreatedAt)}
		var hint time.Duration
		if b, err := r.FederatedBundle(rel.TrustDomain); err == nil {
			hint = time.Duration(b.RefreshHint) * time.Second
		}
		fb.RefreshHint = federation.NextRefresh(hint, s.cfg.Federation.MinRefresh, s.cfg.Federation.MaxRefresh, 0)
		if st, err := r.FederationStatus(rel.TrustDomain); err == nil {
			fb.LastSuccess = unixTime(st.LastSuccessAt)
			fb.LastError = st.LastError
		}
		out = append(out, fb)
	}
	return out
}

// members lists the other cluster members as this leader sees them: a
// member is unreachable when its last health probe failed or its reports
// could not be gathered, since the first evaluation of the term that saw
// it so.
func (t *healthTerm) members(now time.Time, gatherErrs map[string]error) []health.Member {
	s := t.s
	if s.cluster == nil {
		return nil
	}
	ms, err := s.store.Members()
	if err != nil {
		return nil
	}
	var out []health.Member
	seen := map[string]bool{}
	for _, m := range ms {
		if m.ID == s.cfg.NodeName {
			continue
		}
		seen[m.ID] = true
		hm := health.Member{Name: m.ID, Address: m.Address, Reachable: true}
		if h, ok := s.cluster.MemberHealth(m.ID); ok && !h.OK {
			hm.Reachable, hm.LastError = false, h.LastErr
		}
		if err, ok := gatherErrs[m.ID]; ok && err != nil {
			hm.Reachable = false
			if hm.LastError == "" {
				hm.LastError = err.Error()
			}
		}
		if hm.Reachable {
			delete(t.unreachable, m.ID)
		} else {
			since, ok := t.unreachable[m.ID]
			if !ok {
				since = now
				t.unreachable[m.ID] = since
			}
			hm.UnreachableSince = since
		}
		out = append(out, hm)
	}
	for name := range t.unreachable {
		if !seen[name] {
			delete(t.unreachable, name)
		}
	}
	return out
}

// localHealthLoop raises ClusterNoLeader on this server while it knows
// no leader for longer than Health.NoLeaderAfter, and resolves it once a
// leader is known, checking every EvaluateInterval until ctx is done.
func (s *Server) localHealthLoop(ctx context.Context) {
	log := s.log.Named("health")
	var since time.Time // zero: a leader is known
	for {
		now := s.cfg.Clock.Now()
		if _, id := s.store.Leader(); id != "" {
			since = time.Time{}
			s.resolveLocal(health.KeyClusterNoLeader, now)
		} else {
			if since.IsZero() {
				since = now
			}
			// NoLeader decides; it is asked only once the bound passed.
			if now.Sub(since) > s.cfg.Health.NoLeaderAfter {
				s.checkNoLeader(log, now, since)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-s.cfg.Clock.After(s.cfg.EvaluateInterval):
		}
	}
}

func (s *Server) checkNoLeader(log *zap.Logger, now, since time.Time) {
	defer func() {
		if r := recover(); r != nil {
			log.Error("no-leader check failed", zap.String("panic", fmt.Sprint(r)))
		}
	}()
	a, ok := s.eval.noLeader(s.cfg.Health, s.cfg.NodeName, now, since)
	if !ok {
		s.resolveLocal(health.KeyClusterNoLeader, now)
		return
	}
	e := &s.eval
	e.mu.Lock()
	prev, had := e.local[a.Key]
	if had {
		a.StartsAt = prev.StartsAt
	}
	e.local[a.Key] = a
	e.mu.Unlock()
	if !had || !maps.Equal(prev.Details, a.Details) || prev.Summary != a.Summary || prev.Severity != a.Severity {
		s.auditAlert(auditAlertFired, a)
	}
	s.alerts.Fire(a)
}

// resolveLocal resolves this server's own alert key, if it fires.
func (s *Server) resolveLocal(key string, now time.Time) {
	e := &s.eval
	e.mu.Lock()
	a, had := e.local[key]
	delete(e.local, key)
	e.mu.Unlock()
	if !had {
		return
	}
	a.EndsAt = now
	s.auditAlert(auditAlertResolved, a)
	s.alerts.Resolve(key, now)
}
