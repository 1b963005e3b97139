package health_test

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sigil-id/sigil/alert"
	"github.com/sigil-id/sigil/health"
)

func TestEvaluateEmptySnapshotRaisesNothing(t *testing.T) {
	if got := health.Evaluate(health.DefaultConfig(), health.Snapshot{Now: start}); len(got) != 0 {
		t.Fatalf("Evaluate of an empty snapshot = %v, want no alerts", got)
	}
}

// An out-of-range Config must not make Evaluate panic (MaxIDs 0 would
// otherwise list nothing, FailureBurst 0 fire on nothing).
func TestEvaluateClampsInvalidConfig(t *testing.T) {
	s := health.Snapshot{
		Now:     start,
		Agents:  []health.Agent{{ID: "spiffe://td/a", AttestedAt: start.Add(-time.Hour), ExpiresAt: start.Add(time.Hour)}},
		Reports: []health.AgentReport{{AgentID: "spiffe://td/a", Server: "s1", ReceivedAt: start, SVIDs: []health.SVID{{SPIFFEID: "spiffe://td/w", RenewAt: start.Add(-time.Hour), ExpiresAt: start.Add(time.Hour)}}}},
	}
	got := health.Evaluate(health.Config{}, s)
	var names []string
	for _, a := range got {
		names = append(names, a.Name)
	}
	// Zero RenewGrace: past renew_at fires; zero burst is clamped to 1, so
	// no failures raise nothing.
	if len(got) != 1 || got[0].Name != health.NameSVIDNotRenewed || got[0].Details["spiffe_ids"] != "spiffe://td/w" {
		t.Fatalf("Evaluate with a zero Config = %v, want only SVIDNotRenewed naming spiffe://td/w", names)
	}
}

// A key over 256 bytes ends in "sha256:" and the first 32 hex digits of
// the subject's SHA-256; keys of different subjects differ.
func TestLongSubjectKeyIsHashed(t *testing.T) {
	td := strings.Repeat("x", 300) + ".org"
	s := health.Snapshot{Now: start, Federation: []health.FederatedBundle{
		{TrustDomain: td, LastSuccess: start.Add(-time.Hour), RefreshHint: time.Minute},
		{TrustDomain: td + "2", LastSuccess: start.Add(-time.Hour), RefreshHint: time.Minute},
	}}
	got := health.Evaluate(health.DefaultConfig(), s)
	sum := sha256.Sum256([]byte(td))
	want := health.KeyFederatedBundleStale + "sha256:" + hex.EncodeToString(sum[:])[:32]
	if len(got) != 2 || (got[0].Key != want && got[1].Key != want) || got[0].Key == got[1].Key {
		t.Fatalf("keys %q, want one of them %q and both distinct", keys(got), want)
	}
	if got[0].Details["trust_domain"] == "" || len(got[0].Details["trust_domain"]) > health.MaxValueLen {
		t.Fatalf("trust_domain detail %q", got[0].Details["trust_domain"])
	}
}

// An alert that keeps firing on unchanged state must evaluate to the same
// alert (but for StartsAt) while heartbeats arrive and time passes: the
// caller re-sends and records only alerts that changed.
func TestFiringAlertsStableAcrossHeartbeats(t *testing.T) {
	cfg := health.DefaultConfig()
	agent := "spiffe://td/sigil/agent/a"
	snap := func(now, received time.Time) health.Snapshot {
		return health.Snapshot{
			Now: now, Source: "s1", TermStart: start.Add(-time.Hour),
			Agents: []health.Agent{{ID: agent, AttestedAt: start.Add(-time.Hour), ExpiresAt: start.Add(2 * time.Hour)}},
			Reports: []health.AgentReport{{AgentID: agent, Server: "s2", ReceivedAt: received, SVIDs: []health.SVID{
				{SPIFFEID: "spiffe://td/w", RenewAt: start.Add(-time.Hour), ExpiresAt: start.Add(time.Hour), LastError: "boom", LastAttempt: start},
			}}},
			Members:     []health.Member{{Name: "s3", Address: "127.0.0.1:1", UnreachableSince: start.Add(-time.Hour)}},
			Authorities: []health.Authority{{Kind: "x509", Server: "s1", ID: "k", State: "active", ExpiresAt: start.Add(time.Hour)}},
		}
	}
	strip := func(as []alert.Alert) []alert.Alert {
		for i := range as {
			as[i].StartsAt = time.Time{}
		}
		return as
	}
	// Live agent: heartbeats every 30s.
	a := strip(health.Evaluate(cfg, snap(start, start.Add(-10*time.Second))))
	b := strip(health.Evaluate(cfg, snap(start.Add(30*time.Second), start.Add(20*time.Second))))
	if len(a) != 3 || !reflect.DeepEqual(a, b) {
		t.Fatalf("alerts changed with a heartbeat:\n%v\n%v", a, b)
	}
	// Silent agent: its stale report stays, time passes.
	c := strip(health.Evaluate(cfg, snap(start.Add(10*time.Minute), start)))
	d := strip(health.Evaluate(cfg, snap(start.Add(20*time.Minute), start)))
	if len(c) != 4 || !reflect.DeepEqual(c, d) {
		t.Fatalf("alerts of a silent agent changed as time passed:\n%v\n%v", keys(c), keys(d))
	}
}

// Evaluate stays fast at the bounds the server holds (100000 agents).
func BenchmarkEvaluate100kAgents(b *testing.B) {
	s := health.Snapshot{Now: start, Source: "s1", TermStart: start.Add(-time.Hour)}
	for i := 0; i < 100000; i++ {
		id := fmt.Sprintf("spiffe://example.org/sigil/agent/join_token/%08d", i)
		s.Agents = append(s.Agents, health.Agent{ID: id, AttestedAt: start.Add(-time.Hour), ExpiresAt: start.Add(time.Hour)})
		r := health.AgentReport{AgentID: id, Server: "s1", ReceivedAt: start,
			AgentSVID: health.SVID{SPIFFEID: id, RenewAt: start.Add(30 * time.Minute), ExpiresAt: start.Add(time.Hour)}}
		for j := 0; j < 10; j++ {
			renew := start.Add(time.Duration(j) * time.Minute)
			if i%100 == 0 {
				renew = start.Add(-time.Hour) // 1 % of the agents alert
			}
			r.SVIDs = append(r.SVIDs, health.SVID{SPIFFEID: fmt.Sprintf("spiffe://example.org/w/%d", j), RenewAt: renew, ExpiresAt: start.Add(time.Hour)})
		}
		s.Reports = append(s.Reports, r)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if got := health.Evaluate(health.DefaultConfig(), s); len(got) != 1000 {
			b.Fatalf("%d alerts, want 1000", len(got))
		}
	}
}

func keys(as []alert.Alert) []string {
	var out []string
	for _, a := range as {
		out = append(out, a.Key)
	}
	return out
}
