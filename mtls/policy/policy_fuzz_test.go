package policy

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// FuzzPolicyParse parses arbitrary bytes as an HCL policy. Parse must not
// panic; when it succeeds, parsing again gives the same policy, Decide and
// Lint must not panic and must be deterministic, Decide must agree with a
// plain scan of the rules in file order (the index is only a speed-up),
// and a Sigil agent or server ID is allowed only by a rule naming it
// exactly.
func FuzzPolicyParse(f *testing.F) {
	f.Add([]byte(testPolicy))
	f.Add([]byte(`mode = "shadow"
rule "a" {
  from = ["spiffe://td/a", "spiffe://td/sigil/agent/x/y"]
  to   = ["service:s", "http:GET /v1/*"]
}`))
	f.Add([]byte(`rule "r" {
  from   = ["spiffe://td/ns/*/sa/web-*", "spiffe://td/sigil/**"]
  to     = ["grpc:/pkg.Svc/*", "http:* /a/**"]
  shadow = true
  time_window {
    days  = ["sun"]
    start = "23:00"
    end   = "01:00"
    timezone = "Europe/Paris"
  }
}`))
	f.Add([]byte(`rule "x" { from = ["spiffe://td"] to = ["service:s"] }`))
	f.Add([]byte(`rule "" {}`))
	f.Add([]byte("rule \"a\" {\n from = [\"spiffe://td/a\"]\n to = [\"htp:GET /\"]\n}"))

	now := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, src []byte) {
		p, err := Parse(src, "fuzz.hcl")
		if err != nil {
			if p != nil {
				t.Fatalf("Parse returned a policy with error %v", err)
			}
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		p2, err := Parse(src, "fuzz.hcl")
		if err != nil {
			t.Fatalf("second parse failed: %v", err)
		}
		if p.Digest() != p2.Digest() || p.Mode() != p2.Mode() || !slices.Equal(p.RuleNames(), p2.RuleNames()) {
			t.Fatal("parsing the same bytes twice gave different policies")
		}

		peers, targets := fuzzProbes(p)
		for _, peer := range peers {
			for _, tg := range targets {
				for _, at := range []time.Time{now, now.Add(13 * time.Hour), now.Add(-400 * 24 * time.Hour)} {
					d1 := p.Decide(peer, tg, at)
					d2 := p2.Decide(peer, tg, at)
					if d1.Effect != d2.Effect || d1.Rule != d2.Rule || d1.Reason() != d2.Reason() {
						t.Fatalf("Decide(%s, %s) not deterministic: %v/%q vs %v/%q", peer, tg, d1.Effect, d1.Rule, d2.Effect, d2.Rule)
					}
					if want := scanRules(p, peer, tg, at); d1.Effect == Allow != (want != "") || (d1.Effect == Allow && d1.Rule != want) {
						t.Fatalf("Decide(%s, %s) = %v rule %q, a plain scan gives rule %q", peer, tg, d1.Effect, d1.Rule, want)
					}
					if IsReserved(peer) && d1.Allowed() {
						if d1.Effect != Allow || !slices.Contains(p.rules[slices.Index(p.RuleNames(), d1.Rule)].spec.From, peer.String()) {
							t.Fatalf("reserved %s allowed (%v) by rule %q that does not name it", peer, d1.Effect, d1.Rule)
						}
					}
				}
			}
		}
		l1, l2 := Lint(p, now), Lint(p, now)
		if !slices.Equal(l1, l2) {
			t.Fatalf("Lint not deterministic:\n%v\n%v", l1, l2)
		}
	})
}

// scanRules is the reference decision: the first rule, in file order,
// whose from, to and time conditions all match.
func scanRules(p *Policy, peer spiffeid.ID, tg Target, now time.Time) string {
	for _, r := range p.rules {
		if !r.matchTarget(&tg) || (r.timed() && !r.active(now)) {
			continue
		}
		for _, m := range r.from {
			var ok bool
			if IsReserved(peer) {
				ok = m.kind == idExact && m.td == peer.TrustDomain().Name() && m.path == peer.Path()
			} else if m.kind == idTrustDomain {
				ok = m.td == peer.TrustDomain().Name()
			} else {
				ok = m.match(peer)
			}
			if ok {
				return r.name
			}
		}
	}
	return ""
}

// fuzzProbes derives peers and targets from the policy's own patterns (so
// that rules can match), plus fixed ones, bounded in number.
func fuzzProbes(p *Policy) ([]spiffeid.ID, []Target) {
	peers := []spiffeid.ID{
		spiffeid.RequireFromString("spiffe://td/a"),
		spiffeid.RequireFromString("spiffe://td/sigil/agent/x/y"),
		spiffeid.RequireFromString("spiffe://td/SIGIL/server/n"),
	}
	targets := []Target{ServiceTarget("s"), HTTPTarget("s", "GET", "/v1/x"), GRPCTarget("", "/pkg.Svc/M")}
	for _, r := range p.rules {
		for _, m := range r.from {
			if len(peers) >= 24 {
				break
			}
			path := strings.ReplaceAll(strings.TrimSuffix(strings.TrimPrefix(m.text, "spiffe://"+m.td), "/**"), "*", "x")
			for _, s := range []string{"spiffe://" + m.td + path, "spiffe://" + m.td + path + "/sub"} {
				if id, err := spiffeid.FromString(s); err == nil {
					peers = append(peers, id)
				}
			}
		}
		for _, tm := range r.to {
			if len(targets) >= 24 {
				break
			}
			svc := tm.service
			if svc == "" {
				svc = r.spec.Service
			}
			text := strings.ReplaceAll(strings.TrimSuffix(tm.text, "/**"), "*", "x")
			kind, rest, _ := strings.Cut(text, ":")
			switch kind {
			case "service":
				targets = append(targets, ServiceTarget(rest))
			case "http":
				methods, path, _ := strings.Cut(rest, " ")
				method, _, _ := strings.Cut(methods, ",")
				if method == "x" {
					method = "DELETE"
				}
				targets = append(targets, HTTPTarget(svc, method, path))
			case "grpc":
				targets = append(targets, GRPCTarget(svc, rest))
			}
		}
	}
	return peers, targets
}
