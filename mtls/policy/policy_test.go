package policy

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/eventually"
)

func mustParse(t testing.TB, src string) *Policy {
	t.Helper()
	p, err := Parse([]byte(src), "test.hcl")
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	return p
}

func id(s string) spiffeid.ID { return spiffeid.RequireFromString(s) }

// monday 10:00 UTC
var monday10 = time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)

const testPolicy = `
rule "exact" {
  from = ["spiffe://prod.example/billing/api"]
  to   = ["service:ledger"]
}
rule "glob" {
  from    = ["spiffe://prod.example/ns/*/sa/web"]
  to      = ["http:GET,HEAD /v1/users/*", "http:POST /v1/users/*/avatar"]
  service = "users"
}
rule "prefix" {
  from = ["spiffe://prod.example/batch/**"]
  to   = ["grpc:/reports.v1.Reports/*"]
}
rule "domain" {
  from = ["spiffe://partner.example"]
  to   = ["grpc:/public.v1.Catalog/List"]
}
rule "part-segment" {
  from = ["spiffe://prod.example/jobs/cron-*"]
  to   = ["http:* /jobs/**"]
}
rule "hours" {
  from = ["spiffe://prod.example/oncall"]
  to   = ["service:db-admin"]
  time_window {
    days     = ["mon", "tue", "wed", "thu", "fri"]
    start    = "08:00"
    end      = "18:00"
    timezone = "UTC"
  }
}
rule "night" {
  from = ["spiffe://prod.example/backup"]
  to   = ["service:db"]
  time_window {
    days  = ["sat"]
    start = "22:00"
    end   = "04:00"
  }
}
rule "temporary" {
  from = ["spiffe://prod.example/contractor"]
  to   = ["service:wiki"]
  not_before = "2026-03-01T00:00:00Z"
  not_after  = "2026-03-03T00:00:00Z"
}
`

func TestDecide(t *testing.T) {
	p := mustParse(t, testPolicy)
	sunday1am := time.Date(2026, 3, 8, 1, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		peer   string
		target Target
		now    time.Time
		want   Effect
		rule   string
	}{
		{"exact", "spiffe://prod.example/billing/api", ServiceTarget("ledger"), monday10, Allow, "exact"},
		{"exact other service", "spiffe://prod.example/billing/api", ServiceTarget("users"), monday10, Deny, ""},
		{"exact other id", "spiffe://prod.example/billing/api2", ServiceTarget("ledger"), monday10, Deny, ""},
		{"other trust domain", "spiffe://evil.example/billing/api", ServiceTarget("ledger"), monday10, Deny, ""},
		{"glob", "spiffe://prod.example/ns/prod/sa/web", HTTPTarget("users", "GET", "/v1/users/42"), monday10, Allow, "glob"},
		{"glob head", "spiffe://prod.example/ns/dev/sa/web", HTTPTarget("users", "HEAD", "/v1/users/42"), monday10, Allow, "glob"},
		{"glob method", "spiffe://prod.example/ns/prod/sa/web", HTTPTarget("users", "DELETE", "/v1/users/42"), monday10, Deny, ""},
		{"glob path too deep", "spiffe://prod.example/ns/prod/sa/web", HTTPTarget("users", "GET", "/v1/users/42/x"), monday10, Deny, ""},
		{"glob second target", "spiffe://prod.example/ns/prod/sa/web", HTTPTarget("users", "POST", "/v1/users/42/avatar"), monday10, Allow, "glob"},
		{"glob service scope", "spiffe://prod.example/ns/prod/sa/web", HTTPTarget("orders", "GET", "/v1/users/42"), monday10, Deny, ""},
		{"glob wrong sa", "spiffe://prod.example/ns/prod/sa/api", HTTPTarget("users", "GET", "/v1/users/42"), monday10, Deny, ""},
		{"glob extra segment", "spiffe://prod.example/ns/prod/x/sa/web", HTTPTarget("users", "GET", "/v1/users/42"), monday10, Deny, ""},
		{"prefix self", "spiffe://prod.example/batch", GRPCTarget("", "/reports.v1.Reports/Get"), monday10, Allow, "prefix"},
		{"prefix child", "spiffe://prod.example/batch/nightly/x", GRPCTarget("", "/reports.v1.Reports/Get"), monday10, Allow, "prefix"},
		{"prefix boundary", "spiffe://prod.example/batchy", GRPCTarget("", "/reports.v1.Reports/Get"), monday10, Deny, ""},
		{"prefix other grpc service", "spiffe://prod.example/batch/x", GRPCTarget("", "/reports.v2.Reports/Get"), monday10, Deny, ""},
		{"domain", "spiffe://partner.example/any/thing", GRPCTarget("", "/public.v1.Catalog/List"), monday10, Allow, "domain"},
		{"domain other method", "spiffe://partner.example/any/thing", GRPCTarget("", "/public.v1.Catalog/Delete"), monday10, Deny, ""},
		{"part segment", "spiffe://prod.example/jobs/cron-daily", HTTPTarget("", "PUT", "/jobs/1/run"), monday10, Allow, "part-segment"},
		{"part segment no", "spiffe://prod.example/jobs/daily", HTTPTarget("", "PUT", "/jobs/1/run"), monday10, Deny, ""},
		{"http rule vs conn", "spiffe://prod.example/jobs/cron-daily", ServiceTarget("jobs"), monday10, Deny, ""},
		{"hours in", "spiffe://prod.example/oncall", ServiceTarget("db-admin"), monday10, Allow, "hours"},
		{"hours out", "spiffe://prod.example/oncall", ServiceTarget("db-admin"), monday10.Add(9 * time.Hour), Deny, ""},
		{"hours weekend", "spiffe://prod.example/oncall", ServiceTarget("db-admin"), monday10.Add(-48 * time.Hour), Deny, ""},
		{"night sat 23h", "spiffe://prod.example/backup", ServiceTarget("db"), time.Date(2026, 3, 7, 23, 0, 0, 0, time.UTC), Allow, "night"},
		{"night sun 1h", "spiffe://prod.example/backup", ServiceTarget("db"), sunday1am, Allow, "night"},
		{"night sun 5h", "spiffe://prod.example/backup", ServiceTarget("db"), sunday1am.Add(4 * time.Hour), Deny, ""},
		{"night mon 1h", "spiffe://prod.example/backup", ServiceTarget("db"), sunday1am.Add(24 * time.Hour), Deny, ""},
		{"temporary in", "spiffe://prod.example/contractor", ServiceTarget("wiki"), monday10, Allow, "temporary"},
		{"temporary after", "spiffe://prod.example/contractor", ServiceTarget("wiki"), monday10.Add(48 * time.Hour), Deny, ""},
		{"no peer", "", ServiceTarget("wiki"), monday10, Deny, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var peer spiffeid.ID
			if tc.peer != "" {
				peer = id(tc.peer)
			}
			d := p.Decide(peer, tc.target, tc.now)
			if d.Effect != tc.want || d.Rule != tc.rule {
				t.Fatalf("Decide = %v rule %q (%s), want %v rule %q", d.Effect, d.Rule, d.Reason(), tc.want, tc.rule)
			}
			if d.Reason() == "" {
				t.Fatal("empty reason")
			}
		})
	}
}

func TestFirstRuleWins(t *testing.T) {
	p := mustParse(t, `
rule "a" {
  from = ["spiffe://td/x/**"]
  to   = ["service:s"]
}
rule "b" {
  from = ["spiffe://td/x/y"]
  to   = ["service:s"]
}`)
	if d := p.Decide(id("spiffe://td/x/y"), ServiceTarget("s"), monday10); d.Rule != "a" {
		t.Fatalf("rule %q, want the first matching rule a", d.Rule)
	}
}

func TestDenyReasons(t *testing.T) {
	p := mustParse(t, testPolicy)
	d := p.Decide(id("spiffe://prod.example/ns/prod/sa/web"), HTTPTarget("users", "DELETE", "/v1/users/1"), monday10)
	r := d.Reason()
	for _, want := range []string{"spiffe://prod.example/ns/prod/sa/web", "DELETE /v1/users/1 on service users", "no rule in test.hcl allows it", "deny by default"} {
		if !strings.Contains(r, want) {
			t.Errorf("reason %q lacks %q", r, want)
		}
	}
	d = p.Decide(id("spiffe://prod.example/oncall"), ServiceTarget("db-admin"), monday10.Add(9*time.Hour))
	if r := d.Reason(); !strings.Contains(r, `rule "hours"`) || !strings.Contains(r, "mon,tue,wed,thu,fri 08:00-18:00 UTC") {
		t.Errorf("time window reason %q", r)
	}
	var nilp *Policy
	if d := nilp.Decide(id("spiffe://a/b"), ServiceTarget("s"), monday10); d.Allowed() {
		t.Fatal("nil policy allowed")
	}
}

func TestShadow(t *testing.T) {
	t.Run("policy", func(t *testing.T) {
		p := mustParse(t, `mode = "shadow"
rule "a" {
  from = ["spiffe://td/a"]
  to   = ["service:s"]
}`)
		if d := p.Decide(id("spiffe://td/a"), ServiceTarget("s"), monday10); d.Effect != Allow {
			t.Fatalf("%v", d.Effect)
		}
		d := p.Decide(id("spiffe://td/b"), ServiceTarget("s"), monday10)
		if d.Effect != ShadowDeny || !d.Allowed() || d.Rule != "" || !strings.Contains(d.Reason(), "policy is in shadow mode") {
			t.Fatalf("%v %q %q", d.Effect, d.Rule, d.Reason())
		}
	})
	t.Run("rule", func(t *testing.T) {
		p := mustParse(t, `
rule "new" {
  from   = ["spiffe://td/a"]
  to     = ["service:s"]
  shadow = true
}
rule "old" {
  from = ["spiffe://td/c"]
  to   = ["service:t"]
}`)
		if d := p.Decide(id("spiffe://td/a"), ServiceTarget("s"), monday10); d.Effect != Allow || d.Rule != "new" {
			t.Fatalf("%v %q", d.Effect, d.Rule)
		}
		d := p.Decide(id("spiffe://td/b"), ServiceTarget("s"), monday10)
		if d.Effect != ShadowDeny || d.Rule != "new" || !strings.Contains(d.Reason(), `rule "new" for this target is in shadow mode`) {
			t.Fatalf("%v %q %q", d.Effect, d.Rule, d.Reason())
		}
		// Targets not covered by a shadow rule are enforced.
		if d := p.Decide(id("spiffe://td/b"), ServiceTarget("t"), monday10); d.Effect != Deny {
			t.Fatalf("%v", d.Effect)
		}
	})
}

func TestParseErrors(t *testing.T) {
	tests := []struct{ src, want string }{
		{`rule "a" {`, "test.hcl:1"},
		{`rule "a" { to = ["service:s"] }`, `test.hcl:1:12: Missing required argument: The argument "from" is required`},
		{`rule "a" {
  from = ["https://td/a"]
  to = ["service:s"]
}`, `test.hcl:1: rule "a": from[0]: "https://td/a" is not a SPIFFE ID pattern`},
		{`rule "a" {
  from = ["spiffe://td/**/a"]
  to = ["service:s"]
}`, `** is only allowed as the last segment`},
		{`rule "a" {
  from = ["spiffe://*.td/a"]
  to = ["service:s"]
}`, `wildcards are not allowed in the trust domain`},
		{`rule "a" {
  from = ["spiffe://td/a"]
  to = ["http:get /x"]
}`, `invalid HTTP method "get"`},
		{`rule "a" {
  from = ["spiffe://td/a"]
  to = ["grpc:/only"]
}`, `want grpc:/package.Service/Method`},
		{`rule "a" {
  from = ["spiffe://td/a"]
  to = ["tcp:1"]
}`, `unknown target kind "tcp"`},
		{`rule "a" {
  from = ["spiffe://td/a"]
  to = ["service:s"]
  time_window {
    days = ["funday"]
  }
}`, `day "funday"`},
		{`rule "a" {
  from = ["spiffe://td/a"]
  to = ["service:s"]
  time_window {
    timezone = "Mars/Olympus"
  }
}`, `timezone "Mars/Olympus"`},
		{`rule "a" {
  from = ["spiffe://td/a"]
  to = ["service:s"]
}
rule "a" {
  from = ["spiffe://td/b"]
  to = ["service:s"]
}`, `test.hcl:5: rule "a": duplicate rule name (first defined at line 1)`},
		{`mode = "audit"`, `mode = "audit"`},
		{`rule "a" {
  from = ["spiffe://td/a"]
  to = ["service:s"]
  colour = "red"
}`, `Unsupported argument`},
	}
	for _, tc := range tests {
		_, err := Parse([]byte(tc.src), "test.hcl")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v, want error containing %q", tc.src, err, tc.want)
		}
	}
}

func TestLint(t *testing.T) {
	p := mustParse(t, `
rule "broad" {
  from = ["spiffe://td/ns/*/sa/web", "spiffe://td/admin/**"]
  to   = ["http:GET,POST /api/**", "service:ops"]
}
rule "narrow" {
  from = ["spiffe://td/ns/prod/sa/web"]
  to   = ["http:GET /api/v1/items"]
}
rule "dup" {
  from = ["spiffe://td/ns/*/sa/web", "spiffe://td/admin/**"]
  to   = ["http:GET,POST /api/**", "service:ops"]
}
rule "different-method" {
  from = ["spiffe://td/ns/prod/sa/web"]
  to   = ["http:DELETE /api/v1/items"]
}
rule "timed-broad" {
  from = ["spiffe://td/x/**"]
  to   = ["service:ops"]
  time_window {
    start = "08:00"
    end   = "18:00"
  }
}
rule "untimed-narrow" {
  from = ["spiffe://td/x/y"]
  to   = ["service:ops"]
}
rule "redundant-entries" {
  from = ["spiffe://other", "spiffe://other/a"]
  to   = ["service:zzz"]
}
`)
	var errs, warns []string
	for _, f := range Lint(p, monday10) {
		if f.Severity == Error {
			errs = append(errs, f.String())
		} else {
			warns = append(warns, f.String())
		}
	}
	joined := strings.Join(errs, "\n")
	if len(errs) != 2 || !strings.Contains(joined, `rule "narrow" is shadowed by rule "broad"`) ||
		!strings.Contains(joined, `rule "dup" is a duplicate of rule "broad" (line 2)`) {
		t.Errorf("errors:\n%s", joined)
	}
	if strings.Contains(joined, "different-method") || strings.Contains(joined, "timed-broad") || strings.Contains(joined, "untimed-narrow") {
		t.Errorf("false positive:\n%s", joined)
	}
	wj := strings.Join(warns, "\n")
	if !strings.Contains(wj, `from[1] "spiffe://other/a" is already covered by from[0]`) || !strings.Contains(wj, "every workload of trust domain other") {
		t.Errorf("warnings:\n%s", wj)
	}

	clean := mustParse(t, testPolicy)
	for _, f := range Lint(clean, monday10) {
		if f.Severity == Error {
			t.Errorf("clean policy: %s", f)
		}
	}
}

func TestParseTarget(t *testing.T) {
	for _, tc := range []struct {
		in, svc string
		want    Target
	}{
		{"service:api", "", ServiceTarget("api")},
		{"http:GET /v1/x", "users", HTTPTarget("users", "GET", "/v1/x")},
		{"http:post /v1/x", "", HTTPTarget("", "POST", "/v1/x")},
		{"grpc:/a.B/C", "", GRPCTarget("", "/a.B/C")},
	} {
		got, err := ParseTarget(tc.in, tc.svc)
		if err != nil || got != tc.want {
			t.Errorf("ParseTarget(%q) = %+v, %v", tc.in, got, err)
		}
	}
	for _, bad := range []string{"api", "http:GET", "http:GET /v1/*", "grpc:/a", "ftp:x", "service:"} {
		if _, err := ParseTarget(bad, ""); err == nil {
			t.Errorf("ParseTarget(%q) succeeded", bad)
		}
	}
}

func TestGlob(t *testing.T) {
	for _, tc := range []struct {
		pat, path string
		want      bool
	}{
		{"/a/*/c", "/a/b/c", true},
		{"/a/*/c", "/a//c", false},
		{"/a/*/c", "/a/b/c/d", false},
		{"/a/**", "/a", true},
		{"/a/**", "/a/b/c", true},
		{"/a/**", "/ab", false},
		{"/**", "/", true},
		{"/", "/", true},
		{"/x-*-y", "/x-1-y", true},
		{"/x-*-y", "/x-y", false},
		{"/x*", "/x", true},
		{"/*.go", "/main.go", true},
	} {
		g, err := compileGlob(tc.pat)
		if err != nil {
			t.Fatal(err)
		}
		if got := g.match(tc.path); got != tc.want {
			t.Errorf("%q match %q = %v", tc.pat, tc.path, got)
		}
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestWatcherReload(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.hcl")
	writeFile(t, path, `rule "a" {
  from = ["spiffe://td/a"]
  to   = ["service:s"]
}`)
	fake := clock.NewFake(monday10)
	reg := prometheus.NewRegistry()
	var reloads, rejects atomic.Int32
	w, err := Watch(path, WithWatchClock(fake), WithInterval(50*time.Millisecond), WithWatchRegisterer(reg),
		WithOnReload(func(p *Policy, err error) {
			if err != nil {
				rejects.Add(1)
			} else {
				reloads.Add(1)
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	allowedB := func() bool { return w.Policy().Decide(id("spiffe://td/b"), ServiceTarget("s"), monday10).Allowed() }
	tick := func(cond func() bool) {
		t.Helper()
		// Each round waits for the watcher to sleep on the fake clock
		// (it has finished its previous check) and wakes it.
		eventually.True(t, 10*time.Second, func() bool {
			if fake.Waiters() == 0 {
				return false
			}
			fake.Add(50 * time.Millisecond)
			return cond()
		}, "condition not reached")
	}
	if allowedB() {
		t.Fatal("b allowed before edit")
	}

	// An edit takes effect without a restart.
	writeFile(t, path, `rule "a" {
  from = ["spiffe://td/a", "spiffe://td/b"]
  to   = ["service:s"]
}`)
	tick(allowedB)
	if reloads.Load() != 1 {
		t.Fatalf("reloads %d", reloads.Load())
	}

	// A broken edit is rejected, the last good policy stays.
	writeFile(t, path, `rule "a" {
  from = ["spiffe://td/a"]
  to   = ["service:s"
}`)
	tick(func() bool { return w.Err() != nil })
	if !allowedB() {
		t.Fatal("broken edit replaced the policy")
	}
	if err := w.Err(); !strings.Contains(err.Error(), "policy.hcl:4") {
		t.Fatalf("error %q lacks the location", err)
	}
	if got := testutil.ToFloat64(w.failing); got != 1 {
		t.Fatalf("failing gauge %v", got)
	}
	// A semantically invalid edit is rejected as well.
	writeFile(t, path, `rule "a" {
  from = ["spiffe://td/a/**/x"]
  to   = ["service:s"]
}`)
	tick(func() bool { return w.Err() != nil && strings.Contains(w.Err().Error(), "**") })
	if !allowedB() {
		t.Fatal("invalid edit replaced the policy")
	}

	// Fixing the file clears the error.
	writeFile(t, path, `rule "a" {
  from = ["spiffe://td/a"]
  to   = ["service:s"]
}`)
	tick(func() bool { return !allowedB() })
	if w.Err() != nil {
		t.Fatal(w.Err())
	}
	if got := testutil.ToFloat64(w.reloads.WithLabelValues("error")); got != 2 {
		t.Fatalf("error reloads %v", got)
	}
	if got := testutil.ToFloat64(w.rules); got != 1 {
		t.Fatalf("rules gauge %v", got)
	}
}

func TestWatchRejectsBadInitialFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.hcl")
	if _, err := Watch(path); err == nil {
		t.Fatal("missing file accepted")
	}
	os.WriteFile(path, []byte("rule {"), 0o644)
	if _, err := Watch(path); err == nil {
		t.Fatal("bad file accepted")
	}
}

// genPolicy writes n rules in the shapes real policies have: exact IDs,
// Kubernetes-style globs, path prefixes and a few whole trust domains,
// spread over services, HTTP routes and gRPC methods.
func genPolicy(n int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "rule \"r%d\" {\n", i)
		switch i % 5 {
		case 0:
			fmt.Fprintf(&b, "  from = [\"spiffe://prod.example/svc/caller-%d\"]\n  to = [\"service:svc-%d\"]\n", i, i)
		case 1:
			fmt.Fprintf(&b, "  from = [\"spiffe://prod.example/ns/*/sa/web-%d\"]\n  to = [\"http:GET,POST /api/v1/items-%d/*\"]\n  service = \"svc-%d\"\n", i, i, i)
		case 2:
			fmt.Fprintf(&b, "  from = [\"spiffe://prod.example/team-%d/**\"]\n  to = [\"grpc:/pkg%d.Service/*\"]\n", i, i)
		case 3:
			fmt.Fprintf(&b, "  from = [\"spiffe://prod.example/ns/team-%d/sa/*\"]\n  to = [\"http:* /internal/%d/**\"]\n", i, i)
		case 4:
			fmt.Fprintf(&b, "  from = [\"spiffe://partner-%d.example\"]\n  to = [\"grpc:/public.v1.Catalog/Get%d\"]\n", i, i)
		}
		b.WriteString("}\n")
	}
	return b.String()
}

func TestGeneratedPolicy(t *testing.T) {
	p := mustParse(t, genPolicy(1000))
	if p.Len() != 1000 {
		t.Fatal(p.Len())
	}
	cases := []struct {
		peer   string
		target Target
		rule   string
	}{
		{"spiffe://prod.example/svc/caller-500", ServiceTarget("svc-500"), "r500"},
		{"spiffe://prod.example/ns/prod/sa/web-501", HTTPTarget("svc-501", "GET", "/api/v1/items-501/9"), "r501"},
		{"spiffe://prod.example/team-502/a/b", GRPCTarget("", "/pkg502.Service/Do"), "r502"},
		{"spiffe://prod.example/ns/team-503/sa/x", HTTPTarget("", "PATCH", "/internal/503/a/b"), "r503"},
		{"spiffe://partner-504.example/x", GRPCTarget("", "/public.v1.Catalog/Get504"), "r504"},
		{"spiffe://prod.example/ns/prod/sa/web-501", HTTPTarget("svc-500", "GET", "/api/v1/items-501/9"), ""},
	}
	for _, tc := range cases {
		d := p.Decide(id(tc.peer), tc.target, monday10)
		if d.Rule != tc.rule || (tc.rule == "") != (d.Effect == Deny) {
			t.Errorf("%s → %s: %v %q", tc.peer, tc.target, d.Effect, d.Rule)
		}
	}
	if fs := Lint(p, monday10); len(fs) != 200 { // the 200 whole-trust-domain rules warn
		t.Errorf("lint: %d findings, first %v", len(fs), fs[0])
	}
}

// BenchmarkDecide measures one decision against a 1,000-rule policy, for
// each kind of rule that allows the call and for a default deny.
func BenchmarkDecide(b *testing.B) {
	p := mustParse(b, genPolicy(1000))
	cases := []struct {
		name   string
		peer   spiffeid.ID
		target Target
	}{
		{"exact", id("spiffe://prod.example/svc/caller-500"), ServiceTarget("svc-500")},
		{"glob-http", id("spiffe://prod.example/ns/prod/sa/web-501"), HTTPTarget("svc-501", "GET", "/api/v1/items-501/9")},
		{"prefix-grpc", id("spiffe://prod.example/team-502/a/b"), GRPCTarget("", "/pkg502.Service/Do")},
		{"glob-any-sa", id("spiffe://prod.example/ns/team-503/sa/x"), HTTPTarget("", "PATCH", "/internal/503/a/b")},
		{"trust-domain", id("spiffe://partner-504.example/x"), GRPCTarget("", "/public.v1.Catalog/Get504")},
		{"deny", id("spiffe://prod.example/ns/prod/sa/web-501"), HTTPTarget("svc-500", "GET", "/api/v1/items-501/9")},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				d := p.Decide(c.peer, c.target, monday10)
				if (d.Effect == Deny) != (c.name == "deny") {
					b.Fatal(d.Reason())
				}
			}
		})
	}
}
