package policy

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Mode says whether a policy's denials are enforced.
type Mode uint8

const (
	// Enforce denies what no rule allows.
	Enforce Mode = iota
	// Shadow allows everything but records what would have been denied.
	Shadow
)

func (m Mode) String() string {
	if m == Shadow {
		return "shadow"
	}
	return "enforce"
}

// Spec is a policy as written in a file, before it is compiled. The HCL
// tags describe the file format (see the package documentation).
type Spec struct {
	// Mode is "enforce" (the default) or "shadow".
	Mode  string     `hcl:"mode,optional"`
	Rules []RuleSpec `hcl:"rule,block"`
}

// RuleSpec is one allow rule as written.
type RuleSpec struct {
	Name        string `hcl:"name,label"`
	Description string `hcl:"description,optional"`
	// From lists the SPIFFE ID patterns of the callers the rule allows.
	From []string `hcl:"from"`
	// To lists the targets: service:NAME, http:METHOD /path, grpc:/pkg.Svc/Method.
	To []string `hcl:"to"`
	// Service scopes the rule's http and grpc targets to one service.
	Service string `hcl:"service,optional"`
	// Shadow marks the rule as being rolled out: calls to its targets
	// that no rule allows are let through and recorded as would-deny.
	Shadow bool `hcl:"shadow,optional"`
	// NotBefore and NotAfter (RFC 3339) bound when the rule applies.
	NotBefore string `hcl:"not_before,optional"`
	NotAfter  string `hcl:"not_after,optional"`
	// TimeWindows, if any, restrict the rule to recurring windows; the
	// rule applies when any window contains the current time.
	TimeWindows []TimeWindowSpec `hcl:"time_window,block"`

	// Line is where the rule starts in its file (0 when unknown); set by
	// Parse, not part of the file format.
	Line int
}

// TimeWindowSpec is a recurring time window.
type TimeWindowSpec struct {
	// Days are "mon".."sun"; empty means every day.
	Days []string `hcl:"days,optional"`
	// Start and End are "HH:MM" (default 00:00 and 24:00). An End before
	// Start spans midnight; the day is the one the window starts on.
	Start string `hcl:"start,optional"`
	End   string `hcl:"end,optional"`
	// Timezone is an IANA name, default UTC.
	Timezone string `hcl:"timezone,optional"`
}

// rule is a compiled rule.
type rule struct {
	name      string
	line      int
	from      []*idMatcher
	to        []*targetMatcher
	shadow    bool
	notBefore time.Time
	notAfter  time.Time
	windows   []timeWindow
	spec      RuleSpec
}

func (r *rule) timed() bool {
	return !r.notBefore.IsZero() || !r.notAfter.IsZero() || len(r.windows) > 0
}

// active reports whether the rule's time conditions hold at now.
func (r *rule) active(now time.Time) bool {
	if !r.notBefore.IsZero() && now.Before(r.notBefore) {
		return false
	}
	if !r.notAfter.IsZero() && !now.Before(r.notAfter) {
		return false
	}
	if len(r.windows) == 0 {
		return true
	}
	for i := range r.windows {
		if r.windows[i].contains(now) {
			return true
		}
	}
	return false
}

func (r *rule) matchTarget(t *Target) bool {
	for _, m := range r.to {
		if m.match(t) {
			return true
		}
	}
	return false
}

func (r *rule) conditionText() string {
	var parts []string
	for _, w := range r.windows {
		parts = append(parts, w.String())
	}
	s := strings.Join(parts, " or ")
	if !r.notBefore.IsZero() {
		s = strings.TrimSpace(s + " from " + r.notBefore.Format(time.RFC3339))
	}
	if !r.notAfter.IsZero() {
		s = strings.TrimSpace(s + " until " + r.notAfter.Format(time.RFC3339))
	}
	return s
}

// Policy is a compiled, immutable set of allow rules. Its zero value and
// nil deny everything. It is safe for concurrent use.
type Policy struct {
	mode   Mode
	source string
	digest [32]byte
	rules  []*rule
	byTD   map[string]*tdIndex
	// shadowRules are the indices of shadow rules, for the would-deny path.
	shadowRules []int32
}

// Policy returns p itself, so that a *Policy can be used wherever a
// source of the current policy is expected.
func (p *Policy) Policy() *Policy { return p }

// Mode is the policy's mode.
func (p *Policy) Mode() Mode {
	if p == nil {
		return Enforce
	}
	return p.mode
}

// Source is the file the policy was loaded from ("" if none).
func (p *Policy) Source() string {
	if p == nil {
		return ""
	}
	return p.source
}

// Len is the number of rules.
func (p *Policy) Len() int {
	if p == nil {
		return 0
	}
	return len(p.rules)
}

// RuleNames lists the rules in file order.
func (p *Policy) RuleNames() []string {
	if p == nil {
		return nil
	}
	out := make([]string, len(p.rules))
	for i, r := range p.rules {
		out[i] = r.name
	}
	return out
}

// Digest is the SHA-256 of the policy source text (zero if compiled from
// a Spec).
func (p *Policy) Digest() [32]byte {
	if p == nil {
		return [32]byte{}
	}
	return p.digest
}

// Compile checks spec and builds its index. source names the file in
// error messages and decisions; it may be empty.
func Compile(spec Spec, source string) (*Policy, error) {
	p := &Policy{source: source, byTD: map[string]*tdIndex{}}
	switch spec.Mode {
	case "", "enforce":
		p.mode = Enforce
	case "shadow":
		p.mode = Shadow
	default:
		return nil, fmt.Errorf("%smode = %q: want \"enforce\" or \"shadow\"", where(source, 0), spec.Mode)
	}
	seen := map[string]int{}
	var errs []error
	for _, rs := range spec.Rules {
		r, err := compileRule(rs)
		if err != nil {
			errs = append(errs, fmt.Errorf("%srule %q: %w", where(source, rs.Line), rs.Name, err))
			continue
		}
		if prev, dup := seen[rs.Name]; dup {
			errs = append(errs, fmt.Errorf("%srule %q: duplicate rule name (first defined at line %d)", where(source, rs.Line), rs.Name, prev))
			continue
		}
		seen[rs.Name] = rs.Line
		p.rules = append(p.rules, r)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	for i, r := range p.rules {
		p.index(int32(i), r)
		if r.shadow {
			p.shadowRules = append(p.shadowRules, int32(i))
		}
	}
	for _, ti := range p.byTD {
		ti.groupGlobs()
	}
	return p, nil
}

func where(source string, line int) string {
	switch {
	case source != "" && line > 0:
		return fmt.Sprintf("%s:%d: ", source, line)
	case source != "":
		return source + ": "
	case line > 0:
		return fmt.Sprintf("line %d: ", line)
	}
	return ""
}

func compileRule(rs RuleSpec) (*rule, error) {
	if rs.Name == "" {
		return nil, errors.New("empty rule name")
	}
	r := &rule{name: rs.Name, line: rs.Line, shadow: rs.Shadow, spec: rs}
	if len(rs.From) == 0 {
		return nil, errors.New("from is empty: list the SPIFFE IDs (or patterns) this rule allows")
	}
	if len(rs.To) == 0 {
		return nil, errors.New("to is empty: list the targets (service:NAME, http:METHOD /path, grpc:/pkg.Service/Method)")
	}
	if rs.Service != "" {
		if err := validServiceName(rs.Service); err != nil {
			return nil, fmt.Errorf("service: %v", err)
		}
	}
	for i, f := range rs.From {
		m, err := parseIDMatcher(f)
		if err != nil {
			return nil, fmt.Errorf("from[%d]: %v", i, err)
		}
		r.from = append(r.from, m)
	}
	for i, t := range rs.To {
		m, err := parseTargetMatcher(t, rs.Service)
		if err != nil {
			return nil, fmt.Errorf("to[%d]: %v", i, err)
		}
		r.to = append(r.to, m)
	}
	var err error
	if rs.NotBefore != "" {
		if r.notBefore, err = time.Parse(time.RFC3339, rs.NotBefore); err != nil {
			return nil, fmt.Errorf("not_before %q: want RFC 3339, e.g. 2026-01-02T15:04:05Z", rs.NotBefore)
		}
	}
	if rs.NotAfter != "" {
		if r.notAfter, err = time.Parse(time.RFC3339, rs.NotAfter); err != nil {
			return nil, fmt.Errorf("not_after %q: want RFC 3339, e.g. 2026-01-02T15:04:05Z", rs.NotAfter)
		}
	}
	if !r.notBefore.IsZero() && !r.notAfter.IsZero() && !r.notBefore.Before(r.notAfter) {
		return nil, fmt.Errorf("not_before %s is not before not_after %s: the rule would never apply", rs.NotBefore, rs.NotAfter)
	}
	for i, ws := range rs.TimeWindows {
		w, err := compileWindow(ws)
		if err != nil {
			return nil, fmt.Errorf("time_window[%d]: %v", i, err)
		}
		r.windows = append(r.windows, w)
	}
	return r, nil
}

// Parse compiles an HCL policy; name is used in error messages.
func Parse(src []byte, name string) (*Policy, error) {
	spec, err := ParseSpec(src, name)
	if err != nil {
		return nil, err
	}
	p, err := Compile(spec, name)
	if err != nil {
		return nil, err
	}
	p.digest = sha256.Sum256(src)
	return p, nil
}

// Effect is the outcome of a decision.
type Effect uint8

const (
	// Deny: no rule allows the call.
	Deny Effect = iota
	// Allow: a rule allows the call.
	Allow
	// ShadowDeny: no rule allows the call, but the policy or a shadow
	// rule covering the target is in shadow mode, so it is let through.
	ShadowDeny
)

func (e Effect) String() string {
	switch e {
	case Allow:
		return "allowed"
	case ShadowDeny:
		return "shadow_denied"
	}
	return "denied"
}

type why uint8

const (
	whyNone why = iota
	whyNoRule
	whyOutsideWindow
	whyNoPeer
	whyReserved
)

// Decision is the answer of Decide. It does not allocate; Reason builds
// the human-readable explanation on demand.
type Decision struct {
	Effect Effect
	// Rule is the rule that allowed the call, or for ShadowDeny the shadow
	// rule that let it through ("" when the whole policy is in shadow
	// mode or the call is denied by default).
	Rule   string
	Peer   spiffeid.ID
	Target Target
	// Detail, when set (by an authorizer hook, say), replaces the
	// generated reason.
	Detail string

	why    why
	near   *rule // a rule that matched except for its time conditions
	source string
}

// Allowed reports whether the call may proceed (Allow or ShadowDeny).
func (d Decision) Allowed() bool { return d.Effect != Deny }

// Reason explains the decision in words a caller can act on.
func (d Decision) Reason() string {
	if d.Detail != "" {
		return d.Detail
	}
	switch d.Effect {
	case Allow:
		return fmt.Sprintf("%s may call %s (rule %q)", d.Peer, d.Target, d.Rule)
	case ShadowDeny:
		base := d.denyText()
		if d.Rule != "" {
			return base + `; let through because rule "` + d.Rule + `" for this target is in shadow mode`
		}
		return base + "; let through because the policy is in shadow mode"
	}
	return d.denyText()
}

func (d Decision) denyText() string {
	if d.why == whyNoPeer || d.Peer.IsZero() {
		return "the caller has no SPIFFE ID (present an X.509-SVID client certificate or a JWT-SVID bearer token)"
	}
	src := ""
	if d.source != "" {
		src = " in " + d.source
	}
	if d.why == whyReserved {
		return fmt.Sprintf("%s may not call %s: it is a Sigil agent or server identity (reserved path %s), which only a rule%s naming this exact SPIFFE ID in from allows (patterns and shadow mode never match it)", d.Peer, d.Target, ReservedPath, src)
	}
	if d.why == whyOutsideWindow && d.near != nil {
		return fmt.Sprintf("%s may not call %s at this time: rule %q%s allows it only %s", d.Peer, d.Target, d.near.name, src, d.near.conditionText())
	}
	return fmt.Sprintf("%s may not call %s: no rule%s allows it (deny by default; add a rule with this SPIFFE ID in from and this target in to)", d.Peer, d.Target, src)
}
