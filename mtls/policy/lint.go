package policy

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Severity of a lint finding.
type Severity uint8

const (
	// Warning: legal but probably not what was meant.
	Warning Severity = iota
	// Error: the policy should not ship (CI gates fail on it).
	Error
)

func (s Severity) String() string {
	if s == Error {
		return "error"
	}
	return "warning"
}

// Finding is one lint result.
type Finding struct {
	Severity Severity
	Rule     string // "" for the policy as a whole
	Line     int
	Message  string
}

func (f Finding) String() string {
	return fmt.Sprintf("%s%s: %s", where("", f.Line), f.Severity, f.Message)
}

// Lint looks for rules that cannot matter and settings that weaken the
// policy:
//
//   - error: a rule shadowed by another one (every call it allows is
//     already allowed by a rule with the same or no time conditions), which
//     includes duplicates;
//   - warning: a from or to entry covered by another entry of the same
//     rule, a rule that allows a whole trust domain, a rule whose
//     not_after has passed, an empty policy, a policy in shadow mode.
//
// now is used for the expiry check.
func Lint(p *Policy, now time.Time) []Finding {
	var out []Finding
	if p.Len() == 0 {
		out = append(out, Finding{Severity: Warning, Message: "the policy has no rules: it denies every call"})
	}
	if p.Mode() == Shadow {
		out = append(out, Finding{Severity: Warning, Message: `mode = "shadow": nothing is denied, would-be denials are only recorded`})
	}
	if p == nil {
		return out
	}
	for _, r := range p.rules {
		for i, m := range r.from {
			if m.kind == idTrustDomain {
				out = append(out, Finding{Severity: Warning, Rule: r.name, Line: r.line,
					Message: fmt.Sprintf("rule %q allows every workload of trust domain %s (from[%d] %q)", r.name, m.td, i, m.text)})
			}
			if m.kind != idExact && isReservedPath(strings.TrimPrefix(m.text, "spiffe://"+m.td)) {
				out = append(out, Finding{Severity: Warning, Rule: r.name, Line: r.line,
					Message: fmt.Sprintf("rule %q: from[%d] %q never matches: Sigil agent and server IDs (reserved path %s) are matched only by a rule naming the exact ID", r.name, i, m.text, ReservedPath)})
			}
			for j, o := range r.from {
				if i != j && o.covers(m) && (!m.covers(o) || j < i) {
					out = append(out, Finding{Severity: Warning, Rule: r.name, Line: r.line,
						Message: fmt.Sprintf("rule %q: from[%d] %q is already covered by from[%d] %q", r.name, i, m.text, j, o.text)})
					break
				}
			}
		}
		for i, m := range r.to {
			for j, o := range r.to {
				if i != j && o.covers(m) && (!m.covers(o) || j < i) {
					out = append(out, Finding{Severity: Warning, Rule: r.name, Line: r.line,
						Message: fmt.Sprintf("rule %q: to[%d] %q is already covered by to[%d] %q", r.name, i, m.text, j, o.text)})
					break
				}
			}
		}
		if !r.notAfter.IsZero() && !now.Before(r.notAfter) {
			out = append(out, Finding{Severity: Warning, Rule: r.name, Line: r.line,
				Message: fmt.Sprintf("rule %q expired at %s (not_after): it no longer allows anything", r.name, r.notAfter.Format(time.RFC3339))})
		}
	}
	for j, b := range p.rules {
		for i, a := range p.rules {
			if i == j || !ruleCovers(a, b) {
				continue
			}
			if ruleCovers(b, a) && i > j {
				continue // identical: report only the later one
			}
			what := "shadowed by"
			if ruleCovers(b, a) {
				what = "a duplicate of"
			}
			out = append(out, Finding{Severity: Error, Rule: b.name, Line: b.line,
				Message: fmt.Sprintf("rule %q is %s rule %q%s: every call it allows is already allowed by %q; remove it or narrow %q",
					b.name, what, a.name, lineOf(a), a.name, a.name)})
			break
		}
	}
	slices.SortStableFunc(out, func(x, y Finding) int { return x.Line - y.Line })
	return out
}

func lineOf(r *rule) string {
	if r.line > 0 {
		return fmt.Sprintf(" (line %d)", r.line)
	}
	return ""
}

// ruleCovers reports whether every call b allows, a allows too.
func ruleCovers(a, b *rule) bool {
	if a.shadow != b.shadow {
		return false
	}
	if a.timed() && !sameConditions(a, b) {
		return false
	}
	for _, bf := range b.from {
		if !slices.ContainsFunc(a.from, func(af *idMatcher) bool { return af.covers(bf) }) {
			return false
		}
	}
	for _, bt := range b.to {
		if !slices.ContainsFunc(a.to, func(at *targetMatcher) bool { return at.covers(bt) }) {
			return false
		}
	}
	return true
}

func sameConditions(a, b *rule) bool {
	if !a.notBefore.Equal(b.notBefore) || !a.notAfter.Equal(b.notAfter) || len(a.windows) != len(b.windows) {
		return false
	}
	for i := range a.windows {
		if a.windows[i].text != b.windows[i].text {
			return false
		}
	}
	return true
}
