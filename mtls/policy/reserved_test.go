package policy

import (
	"strings"
	"testing"
)

func TestIsReserved(t *testing.T) {
	for s, want := range map[string]bool{
		"spiffe://td/sigil":                    true,
		"spiffe://td/sigil/agent/join_token/x": true,
		"spiffe://td/sigil/server/node-1":      true,
		"spiffe://td/SIGIL/agent/x":            true,
		"spiffe://td/Sigil":                    true,
		"spiffe://td":                          false,
		"spiffe://td/sigils":                   false,
		"spiffe://td/sigil-agent":              false,
		"spiffe://td/web/sigil/agent":          false,
		"spiffe://td/si":                       false,
	} {
		if got := IsReserved(id(s)); got != want {
			t.Errorf("IsReserved(%s) = %v, want %v", s, got, want)
		}
	}
}

// TestReservedIDsOnlyByExactRule: a Sigil agent or server ID is matched
// only by a rule naming it exactly; trust-domain, prefix and glob patterns
// do not match it, and shadow mode does not let it through.
func TestReservedIDsOnlyByExactRule(t *testing.T) {
	const agent = "spiffe://td/sigil/agent/join_token/abc"
	p := mustParse(t, `
rule "whole-domain" {
  from = ["spiffe://td"]
  to   = ["service:s"]
}
rule "all-under" {
  from = ["spiffe://td/**"]
  to   = ["service:s"]
}
rule "sigil-prefix" {
  from = ["spiffe://td/sigil/**"]
  to   = ["service:s"]
}
rule "agents-glob" {
  from = ["spiffe://td/sigil/agent/*/*"]
  to   = ["service:s"]
}
rule "upper-glob" {
  from = ["spiffe://td/*/agent/join_token/abc"]
  to   = ["service:s"]
}
rule "exact-agent" {
  from = ["spiffe://td/sigil/agent/join_token/abc"]
  to   = ["service:exact"]
}`)
	for _, s := range []string{agent, "spiffe://td/sigil/server/n1", "spiffe://td/SIGIL/agent/join_token/abc"} {
		d := p.Decide(id(s), ServiceTarget("s"), monday10)
		if d.Allowed() {
			t.Errorf("%s allowed by rule %q", s, d.Rule)
		}
		if r := d.Reason(); !strings.Contains(r, "is a Sigil agent or server identity (reserved path /sigil/)") || !strings.Contains(r, "in test.hcl") {
			t.Errorf("%s: reason %q", s, r)
		}
	}
	if d := p.Decide(id(agent), ServiceTarget("exact"), monday10); d.Effect != Allow || d.Rule != "exact-agent" {
		t.Errorf("exact rule: %v %q", d.Effect, d.Rule)
	}
	// Workloads still match the patterns.
	if d := p.Decide(id("spiffe://td/web"), ServiceTarget("s"), monday10); d.Effect != Allow || d.Rule != "whole-domain" {
		t.Errorf("workload: %v %q", d.Effect, d.Rule)
	}

	shadow := mustParse(t, `mode = "shadow"
rule "x" {
  from = ["spiffe://td/web"]
  to   = ["service:s"]
}`)
	if d := shadow.Decide(id(agent), ServiceTarget("s"), monday10); d.Allowed() {
		t.Errorf("shadow mode let an agent through: %v", d.Effect)
	}
	if d := shadow.Decide(id("spiffe://td/batch"), ServiceTarget("s"), monday10); d.Effect != ShadowDeny {
		t.Errorf("shadow mode for a workload: %v", d.Effect)
	}
	ruleShadow := mustParse(t, `
rule "x" {
  from   = ["spiffe://td/web"]
  to     = ["service:s"]
  shadow = true
}`)
	if d := ruleShadow.Decide(id(agent), ServiceTarget("s"), monday10); d.Allowed() {
		t.Errorf("shadow rule let an agent through: %v", d.Effect)
	}
}

// TestLintReserved: an exact rule for an agent is not reported as
// shadowed by a whole-domain rule (which does not match agents), and a
// pattern under /sigil/ is reported as matching nothing.
func TestLintReserved(t *testing.T) {
	p := mustParse(t, `
rule "whole-domain" {
  from = ["spiffe://td"]
  to   = ["service:s"]
}
rule "exact-agent" {
  from = ["spiffe://td/sigil/agent/join_token/abc"]
  to   = ["service:s"]
}
rule "agents" {
  from = ["spiffe://td/sigil/agent/**"]
  to   = ["service:t"]
}`)
	var msgs []string
	for _, f := range Lint(p, monday10) {
		msgs = append(msgs, f.String())
		if f.Rule == "exact-agent" {
			t.Errorf("exact agent rule reported: %s", f)
		}
	}
	all := strings.Join(msgs, "\n")
	if !strings.Contains(all, `rule "agents": from[0] "spiffe://td/sigil/agent/**" never matches`) {
		t.Errorf("lint findings lack the reserved-pattern warning:\n%s", all)
	}
}
