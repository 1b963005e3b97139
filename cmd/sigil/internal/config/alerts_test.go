package config

import (
	"strings"
	"testing"
	"time"

	"github.com/sigil-id/sigil/health"
)

func alertsFile(body string) string {
	return "server {\n  trust_domain = \"example.org\"\n  alerts {\n" + body + "\n  }\n}\n"
}

// TestAlertsBlock: every key of the alerts block reaches Alerts; keys
// left out keep health.DefaultConfig.
func TestAlertsBlock(t *testing.T) {
	f, err := Parse("server.hcl", []byte(alertsFile(`
    evaluate_interval        = "30s"
    renew_grace              = "2m"
    expiry_critical          = "15m"
    report_timeout           = "5m"
    authority_warn           = "12h"
    federation_stale_hints   = 4
    no_leader_after          = "90s"
    member_unreachable_after = "3m"
    failure_burst            = 50
    failure_window           = "10m"
    key_manager_failing_after = "2m"
    upstream_failing_after   = "20m"
    max_ids                  = 10
    report_interval          = "1m"
    repeat_interval          = "2h"`)))
	if err != nil {
		t.Fatal(err)
	}
	want := Alerts{
		Health: health.Config{
			RenewGrace: 2 * time.Minute, ExpiryCritical: 15 * time.Minute, ReportTimeout: 5 * time.Minute,
			AuthorityWarn: 12 * time.Hour, FederationStaleHints: 4, NoLeaderAfter: 90 * time.Second,
			MemberUnreachableAfter: 3 * time.Minute, FailureBurst: 50, FailureWindow: 10 * time.Minute, MaxIDs: 10,
			KeyManagerFailingAfter: 2 * time.Minute, UpstreamFailingAfter: 20 * time.Minute,
		},
		EvaluateInterval: 30 * time.Second, ReportInterval: time.Minute, RepeatInterval: 2 * time.Hour,
	}
	if got := f.Server.Alerts; got == nil || *got != want {
		t.Fatalf("alerts = %+v\nwant %+v", got, want)
	}

	f, err = Parse("server.hcl", []byte(alertsFile(`    expiry_critical = "5m"`)))
	if err != nil {
		t.Fatal(err)
	}
	def := health.DefaultConfig()
	def.ExpiryCritical = 5 * time.Minute
	if got := f.Server.Alerts; got == nil || got.Health != def || got.EvaluateInterval != 0 || got.ReportInterval != 0 || got.RepeatInterval != 0 {
		t.Fatalf("partial block = %+v, want defaults but expiry_critical", got)
	}

	f, err = Parse("server.hcl", []byte("server {\n  trust_domain = \"example.org\"\n}\n"))
	if err != nil || f.Server.Alerts != nil {
		t.Fatalf("no block: %+v, %v", f.Server.Alerts, err)
	}
}

func TestAlertsBlockErrors(t *testing.T) {
	for _, tc := range []struct {
		name, body, want string
	}{
		{"unknown key", `    renew_gracee = "1m"`, `server.hcl:4,5: Unsupported argument; An argument named "renew_gracee" is not expected here. Did you mean "renew_grace"?`},
		{"bad duration", `    renew_grace = "soon"`, `server.hcl:4: server.alerts.renew_grace: invalid duration "soon"`},
		{"negative duration", `    failure_window = "-1m"`, `server.hcl:4: server.alerts.failure_window: invalid duration "-1m": must not be negative`},
		{"zero threshold", `    report_timeout = "0s"`, `server.hcl:3: server.alerts: health: report_timeout: must be positive, got 0s`},
		{"max_ids too large", `    max_ids = 101`, `server.hcl:3: server.alerts: health: max_ids: must be 1..100, got 101`},
		{"no failure burst", `    failure_burst = 0`, `server.hcl:3: server.alerts: health: failure_burst: must be at least 1`},
		{"zero key manager threshold", `    key_manager_failing_after = "0s"`, `server.hcl:3: server.alerts: health: key_manager_failing_after: must be positive, got 0s`},
		{"zero upstream threshold", `    upstream_failing_after = "0s"`, `server.hcl:3: server.alerts: health: upstream_failing_after: must be positive, got 0s`},
		{"stale hints", `    federation_stale_hints = 0`, `server.hcl:3: server.alerts: health: federation_stale_hints: must be 1..1000, got 0`},
		{"wrong type", `    max_ids = "ten"`, `server.hcl:4,16: Unsuitable value type; Unsuitable value: a number is required`},
		{"tiny evaluate interval", `    evaluate_interval = "10ms"`, `server.hcl:3: server.alerts: evaluate_interval: must be at least 1s, got 10ms`},
		{"report interval too short", `    report_interval = "1s"`, `server.hcl:3: server.alerts: report_interval: must be 5s to 10m0s, got 1s`},
		{"report interval too long", `    report_interval = "1h"`, `server.hcl:3: server.alerts: report_interval: must be 5s to 10m0s, got 1h0m0s`},
		{"tiny repeat interval", `    repeat_interval = "5s"`, `server.hcl:3: server.alerts: repeat_interval: must be at least 1m0s, got 5s`},
	} {
		_, err := Parse("server.hcl", []byte(alertsFile(tc.body)))
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%s: %v\nwant prefix %s", tc.name, err, tc.want)
		}
	}
}
