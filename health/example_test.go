package health_test

import (
	"fmt"
	"time"

	"github.com/sigil-id/sigil/health"
)

// ExampleEvaluate evaluates a snapshot in which one workload SVID of an
// agent went past its renewal point without being renewed.
func ExampleEvaluate() {
	now := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	agent := "spiffe://example.org/sigil/agent/join_token/abc"
	s := health.Snapshot{
		Now:       now,
		Source:    "s1",
		TermStart: now.Add(-time.Hour),
		Agents:    []health.Agent{{ID: agent, AttestedAt: now.Add(-2 * time.Hour), ExpiresAt: now.Add(time.Hour)}},
		Reports: []health.AgentReport{{
			AgentID:    agent,
			Server:     "s1",
			ReceivedAt: now.Add(-10 * time.Second),
			AgentSVID:  health.SVID{SPIFFEID: agent, Serial: "0a", RenewAt: now.Add(30 * time.Minute), ExpiresAt: now.Add(time.Hour)},
			SVIDs: []health.SVID{{
				EntryID: "e1", SPIFFEID: "spiffe://example.org/web", Serial: "0b",
				RenewAt: now.Add(-5 * time.Minute), ExpiresAt: now.Add(25 * time.Minute),
				LastAttempt: now.Add(-time.Minute), LastError: "sign: no active authority", Failures: 4,
			}},
			Held: 1,
		}},
	}
	for _, a := range health.Evaluate(health.DefaultConfig(), s) {
		fmt.Println(a.Severity, a.Name, a.Key)
		fmt.Println(a.Summary)
		fmt.Println(a.Details["spiffe_ids"], a.Details["count"], a.Details["earliest_expiry"], a.Details["last_error"])
	}
	// Output:
	// warning SigilSVIDNotRenewed svid_not_renewed/spiffe://example.org/sigil/agent/join_token/abc
	// agent spiffe://example.org/sigil/agent/join_token/abc: 1 SVID past its renewal point and not renewed
	// spiffe://example.org/web 1 2030-01-01T12:25:00Z sign: no active authority
}
