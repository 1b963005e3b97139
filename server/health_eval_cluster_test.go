package server

import (
	"context"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/sigil-id/sigil/alert"
	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/health"
	"github.com/sigil-id/sigil/internal/eventually"
)

// evalCluster starts servers named names on the fake clock clk (s1
// bootstraps, the others join it), each evaluating through fe and with
// its own in-memory notifier.
func evalCluster(t *testing.T, clk *clock.Fake, fe *fakeEval, mod func(*Config), names ...string) (*memCluster, map[string]*memNotifier) {
	mc := newMemCluster(t)
	notifiers := map[string]*memNotifier{}
	var first *memNode
	for _, name := range names {
		m := &memNotifier{name: "mem-" + name, min: alert.Info}
		notifiers[name] = m
		cfg := mc.config(name, "", func(c *Config) {
			c.Clock = clk
			c.EvaluateInterval = testEvalInterval
			c.Notifiers = []alert.Notifier{m}
			if first != nil {
				c.JoinAddresses = []string{first.cfg.ClusterAddress}
			}
			if mod != nil {
				mod(c)
			}
		})
		n := mc.start(name, cfg)
		// Before the clock moves, nothing reads the hooks.
		hookEval(n.srv, fe)
		n.waitReady()
		if first == nil {
			first = n
		}
	}
	return mc, notifiers
}

func listKeys(t *testing.T, n *memNode) map[string]*sigilv1.ActiveAlert {
	t.Helper()
	resp, err := sigilv1.NewAlertAdminClient(n.admin).List(context.Background(), &sigilv1.AlertListRequest{})
	if err != nil {
		t.Fatalf("%s: AlertAdmin.List: %v", n.name, err)
	}
	out := map[string]*sigilv1.ActiveAlert{}
	for _, a := range resp.Alerts {
		out[a.Key] = a
	}
	return out
}

// TestHealthEvalNewLeaderAdoptsAndResolves: the leader's alerts are
// recorded in Raft and listed by every server; when it stops, the new
// leader adopts them (sends them again with their first start) and, at
// its first evaluation, resolves the one that no longer fires, keeping
// the record of the one that does; the old leader's dispatcher forgot
// them without resolving them.
func TestHealthEvalNewLeaderAdoptsAndResolves(t *testing.T) {
	clk := clock.NewFake(time.Now().Truncate(time.Second))
	fe := &fakeEval{}
	mc, notifiers := evalCluster(t, clk, fe, nil, "s1", "s2", "s3")
	fe.set(evalAlertA(), evalAlertB("agent b: 1 SVID expires in 5m"))
	old := mc.leader()
	untilEval(t, clk, "the alerts recorded", func() bool { return len(raftAlerts(old.srv)) == 2 })
	recorded := raftAlerts(old.srv)
	// The snapshot names every server's keys (the others' from the
	// bundle: one active key of each kind per server) and the other
	// members.
	snap, _ := fe.snapshot()
	active := map[string]int{}
	for _, a := range snap.Authorities {
		if a.State == "active" {
			active[a.Kind+"/"+a.Server]++
		}
	}
	members := map[string]bool{}
	for _, m := range snap.Members {
		members[m.Name] = true
	}
	for _, n := range []string{"s1", "s2", "s3"} {
		if active["x509/"+n] != 1 || active["jwt/"+n] != 1 {
			t.Errorf("snapshot: %d active x509 and %d active jwt keys of %s, want 1 each (%+v)", active["x509/"+n], active["jwt/"+n], n, snap.Authorities)
		}
		if members[n] != (n != old.name) {
			t.Errorf("snapshot members %v: want the two other than the leader %s", members, old.name)
		}
	}
	for _, n := range mc.live() {
		clusterWait(t, "the alerts listed on "+n.name, func() bool { return len(listKeys(t, n)) == 2 })
		if got := listKeys(t, n)[keyA]; got.Source != old.name || got.StartsAt != recorded[keyA].StartsAt {
			t.Fatalf("%s lists %v", n.name, got)
		}
	}
	eventually.True(t, 10*time.Second, func() bool { f, _, _ := sentTo(notifiers[old.name], keyB); return f == 1 }, "B sent by the leader")
	for name, m := range notifiers {
		if name != old.name && len(m.received()) != 0 {
			t.Fatalf("follower %s sent %v", name, m.received())
		}
	}

	// B stops firing; the leader goes before it evaluates again.
	fe.set(evalAlertA())
	old.stop()
	if act := old.srv.alerts.Active(); len(act) != 0 {
		t.Fatalf("the stopped leader still tracks %v", act)
	}
	if _, _, r := sentTo(notifiers[old.name], keyB); r != 0 {
		t.Fatal("the old leader resolved B when its term ended")
	}
	nl := mc.leader()
	if nl == old {
		t.Fatal("no new leader")
	}
	m := notifiers[nl.name]
	eventually.True(t, 10*time.Second, func() bool {
		fa, a, _ := sentTo(m, keyA)
		fb, b, _ := sentTo(m, keyB)
		return fa == 1 && fb == 1 && a.StartsAt.Unix() == recorded[keyA].StartsAt && b.StartsAt.Unix() == recorded[keyB].StartsAt
	}, "the new leader adopting the recorded alerts")
	untilEval(t, clk, "B resolved by the new leader", func() bool { _, ok := raftAlerts(nl.srv)[keyB]; return !ok })
	eventually.True(t, 10*time.Second, func() bool { _, _, r := sentTo(m, keyB); return r == 1 }, "B's resolve sent")
	if a := raftAlerts(nl.srv)[keyA]; a == nil || a.ModifyIndex != recorded[keyA].ModifyIndex || a.Source != old.name {
		t.Fatalf("A's record after the new leader's evaluation: %v, want it untouched (%v)", a, recorded[keyA])
	}
	if fa, _, ra := sentTo(m, keyA); fa != 1 || ra != 0 {
		t.Fatalf("new leader sent A %d times and resolved it %d times; want 1, 0", fa, ra)
	}
	if n := len(nl.logs.FilterField(zap.String("audit", auditAlertResolved)).All()); n != 1 {
		t.Errorf("%d alert_resolved audit events on the new leader, want 1", n)
	}
}

// TestHealthEvalClusterNoLeaderIsLocal: a server that knows no leader
// for longer than NoLeaderAfter raises ClusterNoLeader itself (listed by
// its AlertAdmin, sent by its dispatcher, never in Raft) and resolves it
// once a leader is back.
func TestHealthEvalClusterNoLeaderIsLocal(t *testing.T) {
	clk := clock.NewFake(time.Now().Truncate(time.Second))
	fe := &fakeEval{}
	disk := func(c *Config) { withPlugins(t, c, "disk") }
	mc, notifiers := evalCluster(t, clk, fe, disk, "s1", "s2")
	s1, s2 := mc.nodes["s1"], mc.nodes["s2"]
	var mu sync.Mutex
	var calls []time.Time
	s1.srv.eval.noLeader = func(cfg health.Config, source string, now, since time.Time) (alert.Alert, bool) {
		mu.Lock()
		calls = append(calls, since)
		mu.Unlock()
		if now.Sub(since) <= cfg.NoLeaderAfter {
			return alert.Alert{}, false
		}
		return alert.Alert{Key: health.KeyClusterNoLeader, Name: health.NameClusterNoLeader, Severity: alert.Critical,
			Summary: "no leader seen by " + source, Source: source, StartsAt: since}, true
	}
	cfg2 := s2.cfg
	s2.stop() // two voters: s1 alone has no quorum
	clusterWait(t, "s1 without a leader", func() bool { _, id := s1.srv.store.Leader(); return id == "" })
	untilEval(t, clk, "ClusterNoLeader listed on s1", func() bool { _, ok := listKeys(t, s1)[health.KeyClusterNoLeader]; return ok })
	got := listKeys(t, s1)[health.KeyClusterNoLeader]
	if got.Source != "s1" || got.Severity != "critical" {
		t.Fatalf("listed %v", got)
	}
	if _, ok := raftAlerts(s1.srv)[health.KeyClusterNoLeader]; ok {
		t.Fatal("ClusterNoLeader recorded in Raft")
	}
	m := notifiers["s1"]
	eventually.True(t, 10*time.Second, func() bool { f, _, _ := sentTo(m, health.KeyClusterNoLeader); return f == 1 }, "ClusterNoLeader sent")
	if n := len(s1.logs.FilterField(zap.String("audit", auditAlertFired)).All()); n != 1 {
		t.Errorf("%d alert_fired audit events, want 1", n)
	}

	back := mc.start("s2", cfg2)
	back.waitReady()
	untilEval(t, clk, "ClusterNoLeader resolved on s1", func() bool { _, ok := listKeys(t, s1)[health.KeyClusterNoLeader]; return !ok })
	eventually.True(t, 10*time.Second, func() bool { _, _, r := sentTo(m, health.KeyClusterNoLeader); return r == 1 }, "its resolve sent")
	if n := len(s1.logs.FilterField(zap.String("audit", auditAlertResolved)).All()); n != 1 {
		t.Errorf("%d alert_resolved audit events, want 1", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(calls) == 0 || !calls[0].Equal(calls[len(calls)-1]) {
		t.Errorf("NoLeader called with since %v: want one outage's start", calls)
	}
}
