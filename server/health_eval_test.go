package server

import (
	"context"
	"maps"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/sigil-id/sigil/alert"
	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/health"
	"github.com/sigil-id/sigil/internal/eventually"
	"github.com/sigil-id/sigil/internal/storepb"
)

// fakeEval stands in for health.Evaluate (package health's own tests
// cover the conditions): it returns the alerts the test sets, stamped as
// Evaluate stamps them (Source and StartsAt from the snapshot), and
// keeps the last snapshot.
type fakeEval struct {
	mu     sync.Mutex
	alerts []alert.Alert
	calls  int
	last   health.Snapshot
	// broken makes evaluate panic.
	broken bool
}

func (f *fakeEval) set(as ...alert.Alert) {
	f.mu.Lock()
	f.alerts = as
	f.mu.Unlock()
}

func (f *fakeEval) evaluate(_ health.Config, s health.Snapshot) []alert.Alert {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	f.last = s
	if f.broken {
		panic("evaluation bug")
	}
	out := make([]alert.Alert, len(f.alerts))
	for i, a := range f.alerts {
		a.Source, a.StartsAt = s.Source, s.Now
		a.Details = maps.Clone(a.Details)
		out[i] = a
	}
	return out
}

func (f *fakeEval) snapshot() (health.Snapshot, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last, f.calls
}

// fakeWindow stands in for health.Window: it returns fixed counts and
// records the servers observed.
type fakeWindow struct {
	mu       sync.Mutex
	observed []string
}

func (w *fakeWindow) Observe(_ time.Time, server, instance string, _ health.Failures) {
	w.mu.Lock()
	w.observed = append(w.observed, server+"/"+instance)
	w.mu.Unlock()
}

func (w *fakeWindow) Count(time.Time) health.Failures {
	return health.Failures{Attestation: 3, Signing: 1}
}

// hookEval makes srv evaluate with fe, gather an empty view with one
// server's counters, and count with a fakeWindow.
func hookEval(srv *Server, fe *fakeEval) *fakeWindow {
	w := &fakeWindow{}
	srv.eval.evaluate = fe.evaluate
	srv.eval.window = w
	srv.eval.gather = func(context.Context) healthView {
		return healthView{Counters: []serverCounters{{Server: srv.cfg.NodeName, Instance: "i1"}}}
	}
	return w
}

const testEvalInterval = 15 * time.Second

// startEvalServer starts a single server on the fake clock clk with
// evaluation through fe and the notifiers, and returns it with its log
// and an AlertAdmin client.
func startEvalServer(t *testing.T, clk *clock.Fake, fe *fakeEval, notifiers ...alert.Notifier) (*Server, *observer.ObservedLogs, sigilv1.AlertAdminClient) {
	t.Helper()
	dir := t.TempDir()
	core, logs := observer.New(zap.DebugLevel)
	cfg := DefaultConfig()
	cfg.TrustDomain = testTD
	cfg.NodeName = "s1"
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.BindAddress = "127.0.0.1:0"
	cfg.AdminSocket = filepath.Join(dir, "admin", "admin.sock")
	cfg.Logger = zap.New(core)
	cfg.Clock = clk
	cfg.Notifiers = notifiers
	cfg.EvaluateInterval = testEvalInterval
	withPlugins(t, &cfg, "memory")
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	hookEval(srv, fe)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	select {
	case <-srv.Ready():
	case err := <-done:
		t.Fatalf("server exited: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("server not ready")
	}
	conn, err := grpc.NewClient("unix://"+cfg.AdminSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server run: %v", err)
		}
	})
	return srv, logs, sigilv1.NewAlertAdminClient(conn)
}

// untilEval advances clk one evaluation interval at a time until cond
// holds (each step lets the loops on the clock run).
func untilEval(t *testing.T, clk *clock.Fake, what string, cond func() bool) {
	t.Helper()
	eventually.True(t, 30*time.Second, func() bool {
		if cond() {
			return true
		}
		clk.Add(testEvalInterval)
		return false
	}, "timed out waiting for %s", what)
}

func raftAlerts(s *Server) map[string]*storepb.AlertRecord {
	out := map[string]*storepb.AlertRecord{}
	for _, r := range s.store.Read().Alerts() {
		out[r.Key] = r
	}
	return out
}

// sentTo returns what m received for key: how many firing sends (with
// the last one) and how many resolves.
func sentTo(m *memNotifier, key string) (fired int, last alert.Alert, resolved int) {
	for _, a := range m.received() {
		if a.Key != key {
			continue
		}
		if a.Resolved() {
			resolved++
		} else {
			fired++
			last = a
		}
	}
	return
}

const (
	keyA = "svid_not_renewed/spiffe://example.org/sigil/agent/join_token/a"
	keyB = "svid_expiring/spiffe://example.org/sigil/agent/join_token/b"
)

func evalAlertA() alert.Alert {
	return alert.Alert{Key: keyA, Name: health.NameSVIDNotRenewed, Severity: alert.Warning, Summary: "agent a: 1 SVID not renewed",
		Details: map[string]string{"agent_id": "spiffe://example.org/sigil/agent/join_token/a", "count": "1"}}
}

func evalAlertB(summary string) alert.Alert {
	return alert.Alert{Key: keyB, Name: health.NameSVIDExpiringSoon, Severity: alert.Critical, Summary: summary,
		Details: map[string]string{"agent_id": "spiffe://example.org/sigil/agent/join_token/b"}}
}

// TestHealthEvalFiresRecordsResolves: on the leader, alerts the
// evaluation returns are recorded in Raft, listed by AlertAdmin and sent
// to the notifiers (with an audit event); a changed one keeps its first
// start; one no longer returned is resolved and leaves Raft.
func TestHealthEvalFiresRecordsResolves(t *testing.T) {
	clk := clock.NewFake(time.Now().Truncate(time.Second))
	fe := &fakeEval{}
	m := &memNotifier{name: "mem", min: alert.Info}
	srv, logs, client := startEvalServer(t, clk, fe, m)

	// Two agents: one attested, one banned before it attested.
	agentA := "spiffe://" + testTD.Name() + "/sigil/agent/join_token/a"
	agentB := "spiffe://" + testTD.Name() + "/sigil/agent/join_token/b"
	expires := clk.Now().Add(time.Hour).Truncate(time.Second)
	for _, cmd := range []*storepb.Command{
		{Op: &storepb.Command_AttestNode{AttestNode: &storepb.AttestNode{Node: &sigilv1.AttestedNode{
			SpiffeId: agentA, AttestationType: "join_token", CertSerial: "01", CertNotAfter: expires.Unix()}}}},
		{Op: &storepb.Command_BanNode{BanNode: &storepb.BanNode{SpiffeId: agentB, BanUnknown: true}}},
	} {
		if _, err := srv.apply(context.Background(), cmd); err != nil {
			t.Fatal(err)
		}
	}

	// No alert: an evaluation runs and records nothing.
	untilEval(t, clk, "a first evaluation", func() bool { _, n := fe.snapshot(); return n > 0 })
	snap, _ := fe.snapshot()
	if len(snap.Agents) != 2 {
		t.Fatalf("snapshot agents %+v, want 2", snap.Agents)
	}
	if a := snap.Agents[0]; a.ID != agentA || a.Banned || !a.ExpiresAt.Equal(expires) || !a.AttestedAt.Equal(snap.Agents[0].AttestedAt) || a.AttestedAt.IsZero() {
		t.Errorf("snapshot agent a: %+v", a)
	}
	if b := snap.Agents[1]; b.ID != agentB || !b.Banned || !b.ExpiresAt.IsZero() {
		t.Errorf("snapshot agent b: %+v, want banned with no SVID", b)
	}
	if snap.Source != "s1" || snap.TermStart.IsZero() || snap.Now.Before(snap.TermStart) || snap.Failures != (health.Failures{Attestation: 3, Signing: 1}) {
		t.Fatalf("snapshot: source %q, term start %v, now %v, failures %+v", snap.Source, snap.TermStart, snap.Now, snap.Failures)
	}
	var ownX509, ownJWT bool
	for _, a := range snap.Authorities {
		if a.Server == "s1" && a.State == "active" && a.ID != "" && a.ExpiresAt.After(snap.Now) {
			ownX509 = ownX509 || a.Kind == "x509"
			ownJWT = ownJWT || a.Kind == "jwt"
		}
	}
	if !ownX509 || !ownJWT {
		t.Fatalf("snapshot authorities lack this server's active keys: %+v", snap.Authorities)
	}
	if len(raftAlerts(srv)) != 0 {
		t.Fatalf("alerts recorded with none firing: %v", raftAlerts(srv))
	}

	fe.set(evalAlertA(), evalAlertB("agent b: 1 SVID expires in 5m"))
	untilEval(t, clk, "both alerts in Raft", func() bool { return len(raftAlerts(srv)) == 2 })
	recs := raftAlerts(srv)
	startB := recs[keyB].StartsAt
	if r := recs[keyA]; r.Name != health.NameSVIDNotRenewed || r.Severity != "warning" || r.Source != "s1" || r.Details["count"] != "1" || r.ModifyIndex == 0 {
		t.Fatalf("recorded A: %v", r)
	}
	list, err := client.List(context.Background(), &sigilv1.AlertListRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Alerts) != 2 || list.Alerts[0].Key != keyB || list.Alerts[1].Key != keyA || list.Alerts[0].StartsAt != startB {
		t.Fatalf("AlertAdmin.List = %v", list.Alerts)
	}
	eventually.True(t, 10*time.Second, func() bool {
		fa, _, _ := sentTo(m, keyA)
		fb, _, _ := sentTo(m, keyB)
		return fa == 1 && fb == 1
	}, "both alerts sent to the notifier")
	if n := len(logs.FilterField(zap.String("audit", auditAlertFired)).All()); n != 2 {
		t.Errorf("%d alert_fired audit events, want 2", n)
	}

	// B changes: recorded again with its first start, sent again.
	fe.set(evalAlertA(), evalAlertB("agent b: 1 SVID expires in 1m"))
	untilEval(t, clk, "B changed in Raft", func() bool { return raftAlerts(srv)[keyB].GetSummary() == "agent b: 1 SVID expires in 1m" })
	if got := raftAlerts(srv)[keyB].StartsAt; got != startB {
		t.Fatalf("changed alert starts at %d, want its first start %d", got, startB)
	}
	eventually.True(t, 10*time.Second, func() bool {
		fb, last, _ := sentTo(m, keyB)
		return fb == 2 && last.Summary == "agent b: 1 SVID expires in 1m" && last.StartsAt.Unix() == startB
	}, "the change sent")
	idxA := raftAlerts(srv)[keyA].ModifyIndex

	// A stops: resolved, gone from Raft and the list; B untouched.
	fe.set(evalAlertB("agent b: 1 SVID expires in 1m"))
	untilEval(t, clk, "A gone from Raft", func() bool { _, ok := raftAlerts(srv)[keyA]; return !ok })
	eventually.True(t, 10*time.Second, func() bool { _, _, ra := sentTo(m, keyA); return ra == 1 }, "A's resolve sent")
	if fa, _, _ := sentTo(m, keyA); fa != 1 {
		t.Errorf("A sent %d times while it fired unchanged, want 1", fa)
	}
	if n := len(logs.FilterField(zap.String("audit", auditAlertResolved)).All()); n != 1 {
		t.Errorf("%d alert_resolved audit events, want 1", n)
	}
	list, err = client.List(context.Background(), &sigilv1.AlertListRequest{})
	if err != nil || len(list.Alerts) != 1 || list.Alerts[0].Key != keyB {
		t.Fatalf("AlertAdmin.List after the resolve = %v, %v", list.GetAlerts(), err)
	}
	if idxA == 0 {
		t.Fatal("no modify index")
	}
	if act := srv.alerts.Active(); len(act) != 1 || act[0].Key != keyB {
		t.Fatalf("dispatcher active = %v", act)
	}
}

// TestHealthEvalFailedEvaluationChangesNothing: an evaluation that
// panics (a bug, or on this branch the stubs of health) is logged and
// resolves nothing; the server keeps serving.
func TestHealthEvalFailedEvaluationChangesNothing(t *testing.T) {
	clk := clock.NewFake(time.Now().Truncate(time.Second))
	fe := &fakeEval{}
	fe.set(evalAlertA())
	srv, logs, client := startEvalServer(t, clk, fe)
	untilEval(t, clk, "A in Raft", func() bool { return len(raftAlerts(srv)) == 1 })
	fe.mu.Lock()
	fe.broken, fe.alerts = true, nil
	fe.mu.Unlock()
	untilEval(t, clk, "the failure logged", func() bool {
		return logs.FilterMessage("alert evaluation failed").Len() > 0
	})
	if len(raftAlerts(srv)) != 1 {
		t.Fatalf("a failed evaluation changed the alerts: %v", raftAlerts(srv))
	}
	if _, err := client.List(context.Background(), &sigilv1.AlertListRequest{}); err != nil {
		t.Fatal(err)
	}
	fe.mu.Lock()
	fe.broken = false
	fe.mu.Unlock()
	untilEval(t, clk, "A resolved once evaluation works", func() bool { return len(raftAlerts(srv)) == 0 })
}

// TestConfigAlerts: the alert settings default (zero Health is
// health.DefaultConfig, zero EvaluateInterval DefaultEvaluateInterval)
// and bad ones are refused with one prefix.
func TestConfigAlerts(t *testing.T) {
	base := func() Config {
		cfg := DefaultConfig()
		cfg.TrustDomain = testTD
		cfg.NodeName = "s1"
		cfg.DataDir = t.TempDir()
		withPlugins(t, &cfg, "memory")
		return cfg
	}
	cfg := base()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.Health != health.DefaultConfig() || cfg.EvaluateInterval != DefaultEvaluateInterval {
		t.Fatalf("defaults: %+v, %v", cfg.Health, cfg.EvaluateInterval)
	}
	// The default authority_warn shrinks to a quarter of a short ca_ttl
	// (a fresh CA would otherwise warn at once).
	short := base()
	short.CATTL = 4 * time.Hour
	if err := short.Validate(); err != nil || short.Health.AuthorityWarn != time.Hour {
		t.Fatalf("ca_ttl 4h: authority_warn %v, %v; want 1h", short.Health.AuthorityWarn, err)
	}
	for name, tc := range map[string]struct {
		mod  func(*Config)
		want string
	}{
		"bad threshold":     {func(c *Config) { c.Health = health.DefaultConfig(); c.Health.MaxIDs = 0 }, "server: alerts: health: max_ids: must be 1..100, got 0"},
		"negative interval": {func(c *Config) { c.EvaluateInterval = -time.Second }, "server: alerts evaluate_interval must not be negative"},
		"negative repeat":   {func(c *Config) { c.AlertRepeatInterval = -time.Second }, "server: alerts repeat_interval must not be negative"},
		"authority_warn past half of ca_ttl": {func(c *Config) {
			c.CATTL = 4 * time.Hour
			c.Health = health.DefaultConfig()
			c.Health.AuthorityWarn = 2 * time.Hour
		}, "server: alerts authority_warn 2h0m0s must be shorter than half of ca_ttl 4h0m0s (a successor key is prepared at half a key's life)"},
	} {
		cfg := base()
		tc.mod(&cfg)
		if err := cfg.Validate(); err == nil || err.Error() != tc.want {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
}
