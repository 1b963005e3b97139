package health

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/sigil-id/sigil/alert"
)

// Dedupe key prefixes, one per condition; the subject follows the slash
// (an agent's SPIFFE ID, "<kind>/<server>", a trust domain name, a
// member or server name). A key longer than 256 bytes ends in a hash of the
// subject instead.
const (
	KeySVIDNotRenewed           = "svid_not_renewed/"
	KeySVIDExpiringSoon         = "svid_expiring/"
	KeyAgentNotReporting        = "agent_not_reporting/"
	KeyAuthorityNoSuccessor     = "authority_no_successor/"
	KeyFederatedBundleStale     = "federated_bundle_stale/"
	KeyClusterNoLeader          = "cluster_no_leader"
	KeyClusterMemberUnreachable = "cluster_member_unreachable/"
	KeyAttestationFailureBurst  = "attestation_failure_burst"
	KeySigningFailureBurst      = "signing_failure_burst"
	KeyKeyManagerFailing        = "key_manager_failing/"
	KeyUpstreamFailing          = "upstream_failing/"
)

// Bounds of an alert made by this package.
const (
	// MaxKeyLen bounds an alert's Key: a longer "prefix/subject" becomes
	// "prefix/sha256:<first 32 hex digits of SHA-256(subject)>".
	MaxKeyLen = 256
	// MaxDetails bounds the number of details of an alert.
	MaxDetails = 32
	// MaxValueLen bounds a detail value (and the summary), in bytes; a
	// longer value is cut at a UTF-8 boundary, and a list keeps only the
	// items that fit whole.
	MaxValueLen = 1024
	// MaxErrorLen bounds a last_error detail, in bytes.
	MaxErrorLen = 256
)

// Evaluate returns the alerts that fire in s, sorted by Key. It is pure
// and deterministic: the same Config and Snapshot give the same alerts
// (StartsAt is s.Now; the caller keeps the StartsAt of an alert that was
// already firing). ClusterNoLeader is not among them: see NoLeader.
//
// An alert's Summary and Details depend on the state, not on s.Now
// alone: an alert that goes on firing unchanged evaluates to the same
// alert at every evaluation, so a caller that re-sends only changed
// alerts does not re-send it. In particular the SVID alerts name the
// report's time (last_report, reported_by) only once the report is
// older than ReportTimeout, since a live agent's heartbeat changes it
// every report interval.
//
// cfg should pass Validate; out-of-range values are clamped so that
// Evaluate never panics.
func Evaluate(cfg Config, s Snapshot) []alert.Alert {
	cfg = clampConfig(cfg)
	var out []alert.Alert
	out = append(out, evalAgents(cfg, s)...)
	out = append(out, evalAuthorities(cfg, s)...)
	out = append(out, evalFederation(cfg, s)...)
	out = append(out, evalMembers(cfg, s)...)
	out = append(out, evalKeyManagers(cfg, s)...)
	out = append(out, evalUpstreams(cfg, s)...)
	if s.Failures.Attestation >= cfg.FailureBurst {
		out = append(out, burst(cfg, s, KeyAttestationFailureBurst, NameAttestationFailureBurst, "attestation", s.Failures.Attestation))
	}
	if s.Failures.Signing >= cfg.FailureBurst {
		out = append(out, burst(cfg, s, KeySigningFailureBurst, NameSigningFailureBurst, "signing", s.Failures.Signing))
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	// Two subjects that differ only past the key bound, or twice the
	// same subject in the input, give one key: keep the first.
	dedup := out[:0]
	for i, a := range out {
		if i > 0 && a.Key == out[i-1].Key {
			continue
		}
		dedup = append(dedup, a)
	}
	return dedup
}

// NoLeader returns the ClusterNoLeader alert when a server has seen no
// leader since `since` for longer than cfg.NoLeaderAfter; ok is false
// otherwise (since zero means a leader is known).
func NoLeader(cfg Config, source string, now, since time.Time) (a alert.Alert, ok bool) {
	cfg = clampConfig(cfg)
	if since.IsZero() || now.Sub(since) <= cfg.NoLeaderAfter {
		return alert.Alert{}, false
	}
	return build(alert.Alert{
		Key:      KeyClusterNoLeader,
		Name:     NameClusterNoLeader,
		Severity: alert.Critical,
		Summary:  fmt.Sprintf("server %s: no cluster leader since %s", source, stamp(since)),
		Source:   source,
		StartsAt: now,
	}, "since", stamp(since)), true
}

// clampConfig makes out-of-range thresholds harmless.
func clampConfig(c Config) Config {
	if c.MaxIDs < 1 {
		c.MaxIDs = 1
	}
	if c.MaxIDs > 100 {
		c.MaxIDs = 100
	}
	if c.FederationStaleHints < 1 {
		c.FederationStaleHints = 1
	}
	if c.FailureBurst < 1 {
		c.FailureBurst = 1
	}
	return c
}

// svidRef is one SVID an agent alert names.
type svidRef struct {
	id        string
	entry     string
	expiresAt time.Time
	attempt   time.Time
	lastError string
}

func evalAgents(cfg Config, s Snapshot) []alert.Alert {
	// The latest report per agent (gatherHealth merges already; a
	// duplicate here is resolved the same way, deterministically).
	reports := make(map[string]*AgentReport, len(s.Reports))
	for i := range s.Reports {
		r := &s.Reports[i]
		if p, ok := reports[r.AgentID]; ok {
			if r.ReceivedAt.Before(p.ReceivedAt) || (r.ReceivedAt.Equal(p.ReceivedAt) && r.Server >= p.Server) {
				continue
			}
		}
		reports[r.AgentID] = r
	}
	var out []alert.Alert
	for _, ag := range s.Agents {
		// Banned agents and agents whose SVID expired are no longer
		// expected to rotate anything; deleted ones are not in Agents.
		if ag.Banned || !s.Now.Before(ag.ExpiresAt) {
			continue
		}
		r := reports[ag.ID]
		stale := r == nil || s.Now.Sub(r.ReceivedAt) > cfg.ReportTimeout
		if stale {
			if a, ok := notReporting(cfg, s, ag, r); ok {
				out = append(out, a)
			}
		}
		if r == nil {
			continue
		}
		late, expiring, expired := classify(cfg, s.Now, ag, r)
		if len(late) > 0 {
			out = append(out, svidAlert(cfg, s, ag, r, stale, KeySVIDNotRenewed, NameSVIDNotRenewed, alert.Warning, late, nil,
				fmt.Sprintf("%s past %s renewal point and not renewed", plural(len(late), "SVID"), pick(len(late) == 1, "its", "their"))))
		}
		if len(expiring)+len(expired) > 0 {
			var what string
			switch {
			case len(expired) == 0:
				what = fmt.Sprintf("%s expiring within %s", plural(len(expiring), "SVID"), dur(cfg.ExpiryCritical))
			case len(expiring) == 0:
				what = fmt.Sprintf("%s expired", plural(len(expired), "SVID"))
			default:
				what = fmt.Sprintf("%s expiring within %s and %d expired", plural(len(expiring), "SVID"), dur(cfg.ExpiryCritical), len(expired))
			}
			out = append(out, svidAlert(cfg, s, ag, r, stale, KeySVIDExpiringSoon, NameSVIDExpiringSoon, alert.Critical, expiring, expired, what))
		}
	}
	return out
}

// classify sorts the SVIDs of r into those past renew_at+RenewGrace,
// those expiring within ExpiryCritical, and those expired, each by
// expiry.
func classify(cfg Config, now time.Time, ag Agent, r *AgentReport) (late, expiring, expired []svidRef) {
	own := r.AgentSVID
	if own.SPIFFEID == "" {
		own.SPIFFEID = r.AgentID
	}
	// The replicated state knows when the agent renewed its own SVID
	// even when its report is stale: a newer SVID than the one reported
	// was renewed (its renewal point is not known, its expiry is).
	if ag.ExpiresAt.After(own.ExpiresAt) && !own.ExpiresAt.IsZero() {
		own.ExpiresAt, own.RenewAt = ag.ExpiresAt, time.Time{}
	}
	consider := func(v SVID) {
		ref := svidRef{id: v.SPIFFEID, entry: v.EntryID, expiresAt: v.ExpiresAt, attempt: v.LastAttempt, lastError: v.LastError}
		if !v.RenewAt.IsZero() && now.Sub(v.RenewAt) > cfg.RenewGrace {
			late = append(late, ref)
		}
		if v.ExpiresAt.IsZero() {
			return
		}
		// An SVID close to expiry is at risk only once it should have
		// been renewed: an SVID whose TTL is shorter than ExpiryCritical
		// is always "close to expiry" and normally renewed in time.
		if !now.Before(v.ExpiresAt) {
			expired = append(expired, ref)
		} else if v.ExpiresAt.Sub(now) < cfg.ExpiryCritical && (v.RenewAt.IsZero() || now.Sub(v.RenewAt) > cfg.RenewGrace) {
			expiring = append(expiring, ref)
		}
	}
	consider(own)
	for _, v := range r.SVIDs {
		consider(v)
	}
	for _, l := range [][]svidRef{late, expiring, expired} {
		sort.Slice(l, func(i, j int) bool {
			a, b := l[i], l[j]
			if !a.expiresAt.Equal(b.expiresAt) {
				return a.expiresAt.Before(b.expiresAt)
			}
			if a.id != b.id {
				return a.id < b.id
			}
			return a.entry < b.entry
		})
	}
	return late, expiring, expired
}

func svidAlert(cfg Config, s Snapshot, ag Agent, r *AgentReport, stale bool, prefix, name string, sev alert.Severity, ids, expired []svidRef, what string) alert.Alert {
	all := append(append([]svidRef(nil), ids...), expired...)
	earliest := all[0].expiresAt
	var lastErr svidRef
	for _, v := range all {
		if v.expiresAt.Before(earliest) {
			earliest = v.expiresAt
		}
		if v.lastError != "" && (lastErr.lastError == "" || v.attempt.After(lastErr.attempt)) {
			lastErr = v
		}
	}
	summary := fmt.Sprintf("agent %s: %s", ag.ID, what)
	if r.Truncated {
		summary += fmt.Sprintf(" (report truncated: %d of %d workload SVIDs reported)", len(r.SVIDs), r.Held)
	}
	if stale {
		summary += " (as of its last report, " + stamp(r.ReceivedAt) + ")"
	}
	kv := []string{
		"agent_id", ag.ID,
		"count", strconv.Itoa(len(all)),
		"earliest_expiry", stamp(earliest),
	}
	if len(ids) > 0 {
		kv = append(kv, "spiffe_ids", idList(cfg, ids))
	}
	if len(expired) > 0 {
		kv = append(kv, "expired", idList(cfg, expired))
	}
	if lastErr.lastError != "" {
		kv = append(kv, "last_error", cut(lastErr.lastError, MaxErrorLen))
	}
	if stale {
		kv = append(kv, "reported_by", r.Server, "last_report", stamp(r.ReceivedAt))
	}
	return build(alert.Alert{
		Key: key(prefix, ag.ID), Name: name, Severity: sev, Summary: summary,
		Source: s.Source, StartsAt: s.Now,
	}, kv...)
}

func notReporting(cfg Config, s Snapshot, ag Agent, r *AgentReport) (alert.Alert, bool) {
	a := alert.Alert{
		Key: key(KeyAgentNotReporting, ag.ID), Name: NameAgentNotReporting, Severity: alert.Warning,
		Source: s.Source, StartsAt: s.Now,
	}
	if r != nil {
		// The SVIDs at risk are every one it held at its last report:
		// none of them can be renewed while it does not reach a server.
		held := atRisk(s.Now, ag, r)
		a.Summary = fmt.Sprintf("agent %s: no report since %s; %s at risk (its own valid until %s)", ag.ID, stamp(r.ReceivedAt), plural(len(held), "SVID"), stamp(ag.ExpiresAt))
		kv := []string{"agent_id", ag.ID, "reported_by", r.Server, "last_report", stamp(r.ReceivedAt), "count", strconv.Itoa(len(held))}
		if len(held) > 0 {
			kv = append(kv, "spiffe_ids", idList(cfg, held), "earliest_expiry", stamp(held[0].expiresAt))
		}
		return build(a, kv...), true
	}
	// No report at all: this leader may simply not have gathered it yet,
	// or the agent attested a moment ago.
	if s.Now.Sub(s.TermStart) <= cfg.ReportTimeout || s.Now.Sub(ag.AttestedAt) <= cfg.ReportTimeout {
		return alert.Alert{}, false
	}
	a.Summary = fmt.Sprintf("agent %s: no report held by any server (its SVID is valid until %s)", ag.ID, stamp(ag.ExpiresAt))
	return build(a, "agent_id", ag.ID, "last_report", "none"), true
}

// atRisk lists the SVIDs of r (the agent's own first considered) that
// have not expired at now, by expiry.
func atRisk(now time.Time, ag Agent, r *AgentReport) []svidRef {
	var out []svidRef
	add := func(v SVID) {
		if v.ExpiresAt.IsZero() || !now.Before(v.ExpiresAt) {
			return
		}
		out = append(out, svidRef{id: v.SPIFFEID, entry: v.EntryID, expiresAt: v.ExpiresAt})
	}
	own := r.AgentSVID
	if own.SPIFFEID == "" {
		own.SPIFFEID = ag.ID
	}
	// The replicated state knows the agent's current SVID even when the
	// report does not (or reports an older one).
	if ag.ExpiresAt.After(own.ExpiresAt) {
		own.ExpiresAt = ag.ExpiresAt
	}
	add(own)
	for _, v := range r.SVIDs {
		add(v)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if !a.expiresAt.Equal(b.expiresAt) {
			return a.expiresAt.Before(b.expiresAt)
		}
		if a.id != b.id {
			return a.id < b.id
		}
		return a.entry < b.entry
	})
	return out
}

func evalAuthorities(cfg Config, s Snapshot) []alert.Alert {
	type group struct {
		active   *Authority
		prepared []time.Time
	}
	groups := map[string]*group{}
	var order []string
	for i := range s.Authorities {
		au := &s.Authorities[i]
		g := groups[au.Kind+"/"+au.Server]
		if g == nil {
			g = &group{}
			groups[au.Kind+"/"+au.Server] = g
			order = append(order, au.Kind+"/"+au.Server)
		}
		switch au.State {
		case "active":
			if g.active == nil || au.ExpiresAt.Before(g.active.ExpiresAt) ||
				(au.ExpiresAt.Equal(g.active.ExpiresAt) && au.ID < g.active.ID) {
				g.active = au
			}
		case "prepared":
			g.prepared = append(g.prepared, au.ExpiresAt)
		}
	}
	var out []alert.Alert
	for _, subj := range order {
		g := groups[subj]
		au := g.active
		if au == nil {
			continue
		}
		left := au.ExpiresAt.Sub(s.Now)
		if left >= cfg.AuthorityWarn {
			continue
		}
		// A successor must outlive the key it replaces.
		succeeded := false
		for _, p := range g.prepared {
			if p.After(au.ExpiresAt) {
				succeeded = true
			}
		}
		if succeeded {
			continue
		}
		sev := alert.Warning
		if left < cfg.ExpiryCritical {
			sev = alert.Critical
		}
		when := "expires at " + stamp(au.ExpiresAt)
		if left <= 0 {
			when = "expired at " + stamp(au.ExpiresAt)
		}
		out = append(out, build(alert.Alert{
			Key: key(KeyAuthorityNoSuccessor, subj), Name: NameAuthorityNoSuccessor, Severity: sev,
			Summary: fmt.Sprintf("server %s: active %s key %s %s and no successor is prepared", au.Server, au.Kind, au.ID, when),
			Source:  s.Source, StartsAt: s.Now,
		}, "kind", au.Kind, "server", au.Server, "authority_id", au.ID, "expires_at", stamp(au.ExpiresAt)))
	}
	return out
}

func evalFederation(cfg Config, s Snapshot) []alert.Alert {
	var out []alert.Alert
	for _, f := range s.Federation {
		hint := f.RefreshHint
		if hint <= 0 {
			hint = defaultRefreshHint
		}
		ref, last := f.LastSuccess, stamp(f.LastSuccess)
		if ref.IsZero() {
			ref, last = f.CreatedAt, "never"
		}
		if s.Now.Sub(ref) <= time.Duration(cfg.FederationStaleHints)*hint {
			continue
		}
		summary := fmt.Sprintf("federated bundle of %s not refreshed since %s (refresh hint %s)", f.TrustDomain, last, dur(hint))
		if f.LastSuccess.IsZero() {
			summary = fmt.Sprintf("federated bundle of %s never refreshed since the relationship was made at %s (refresh hint %s)", f.TrustDomain, stamp(f.CreatedAt), dur(hint))
		}
		kv := []string{"trust_domain", f.TrustDomain, "last_success", last, "refresh_hint", dur(hint)}
		if f.LastError != "" {
			kv = append(kv, "last_error", cut(f.LastError, MaxErrorLen))
		}
		out = append(out, build(alert.Alert{
			Key: key(KeyFederatedBundleStale, f.TrustDomain), Name: NameFederatedBundleStale, Severity: alert.Warning,
			Summary: summary, Source: s.Source, StartsAt: s.Now,
		}, kv...))
	}
	return out
}

// defaultRefreshHint stands in for a missing refresh hint (the federation
// package's default).
const defaultRefreshHint = 5 * time.Minute

func evalMembers(cfg Config, s Snapshot) []alert.Alert {
	var out []alert.Alert
	for _, m := range s.Members {
		if m.Reachable {
			continue
		}
		since := m.UnreachableSince
		if since.IsZero() {
			// Unknown start: this leader has known it unreachable since
			// its term began at most.
			since = s.TermStart
		}
		if s.Now.Sub(since) <= cfg.MemberUnreachableAfter {
			continue
		}
		kv := []string{"member", m.Name, "address", m.Address, "since", stamp(since)}
		if m.LastError != "" {
			kv = append(kv, "last_error", cut(m.LastError, MaxErrorLen))
		}
		out = append(out, build(alert.Alert{
			Key: key(KeyClusterMemberUnreachable, m.Name), Name: NameClusterMemberUnreachable, Severity: alert.Warning,
			Summary: fmt.Sprintf("cluster member %s (%s) unreachable since %s", m.Name, m.Address, stamp(since)),
			Source:  s.Source, StartsAt: s.Now,
		}, kv...))
	}
	return out
}

func evalKeyManagers(cfg Config, s Snapshot) []alert.Alert {
	var out []alert.Alert
	for _, sv := range s.Servers {
		if a, ok := serverFailing(s, sv.Name, sv.KeyManagerFailingSince, sv.KeyManagerError, cfg.KeyManagerFailingAfter,
			KeyKeyManagerFailing, NameKeyManagerFailing, alert.Critical, "key manager of server %s failing since %s: it cannot sign SVIDs or rotate its keys"); ok {
			out = append(out, a)
		}
	}
	return out
}

func evalUpstreams(cfg Config, s Snapshot) []alert.Alert {
	var out []alert.Alert
	for _, sv := range s.Servers {
		if a, ok := serverFailing(s, sv.Name, sv.UpstreamFailingSince, sv.UpstreamError, cfg.UpstreamFailingAfter,
			KeyUpstreamFailing, NameUpstreamFailing, alert.Warning, "upstream authority of server %s failing since %s: its next CA key cannot be signed (the active key still signs)"); ok {
			out = append(out, a)
		}
	}
	return out
}

// serverFailing is the alert of a part of server (its key manager, its
// upstream authority) failing since since with lastErr, once that has
// lasted longer than after. summary is formatted with the server and
// since; it leaves the error out, so that a backend whose message changes
// from one failure to the next does not re-notify (the error is the
// last_error detail).
func serverFailing(s Snapshot, server string, since time.Time, lastErr string, after time.Duration, k, name string, sev alert.Severity, summary string) (alert.Alert, bool) {
	if since.IsZero() || s.Now.Sub(since) <= after {
		return alert.Alert{}, false
	}
	kv := []string{"server", server, "since", stamp(since)}
	if lastErr != "" {
		kv = append(kv, "last_error", cut(lastErr, MaxErrorLen))
	}
	return build(alert.Alert{
		Key: key(k, server), Name: name, Severity: sev,
		Summary: fmt.Sprintf(summary, server, stamp(since)),
		Source:  s.Source, StartsAt: s.Now,
	}, kv...), true
}

func burst(cfg Config, s Snapshot, k, name, what string, n uint64) alert.Alert {
	// The alert names a tier (the threshold, doubled while n reaches the
	// double), not n itself: a count that moved with every failure would
	// change the alert, and so re-notify and rewrite it, on every
	// evaluation of a burst.
	tier := cfg.FailureBurst
	for tier <= n/2 {
		tier *= 2
	}
	return build(alert.Alert{
		Key: k, Name: name, Severity: alert.Warning,
		Summary: fmt.Sprintf("at least %d %s failures in the last %s across the cluster (threshold %d)", tier, what, dur(cfg.FailureWindow), cfg.FailureBurst),
		Source:  s.Source, StartsAt: s.Now,
	}, "at_least", strconv.FormatUint(tier, 10), "window", dur(cfg.FailureWindow))
}

// build sets a's details from key/value pairs, bounding their number and
// size, and bounds the summary.
func build(a alert.Alert, kv ...string) alert.Alert {
	a.Summary = cut(oneLine(a.Summary), MaxValueLen)
	a.Details = make(map[string]string, len(kv)/2)
	for i := 0; i+1 < len(kv) && len(a.Details) < MaxDetails; i += 2 {
		a.Details[kv[i]] = cut(kv[i+1], MaxValueLen)
	}
	return a
}

// key is prefix+subject, or prefix+"sha256:"+32 hex digits of the
// subject's hash when that would exceed MaxKeyLen.
func key(prefix, subject string) string {
	if len(prefix)+len(subject) <= MaxKeyLen {
		return prefix + subject
	}
	sum := sha256.Sum256([]byte(subject))
	return prefix + "sha256:" + hex.EncodeToString(sum[:])[:32]
}

// idList joins up to MaxIDs SPIFFE IDs with commas, keeping only the IDs
// that fit whole in MaxValueLen (the count detail gives the total).
func idList(cfg Config, ids []svidRef) string {
	var b strings.Builder
	for i, v := range ids {
		if i == cfg.MaxIDs {
			break
		}
		id := strings.ToValidUTF8(v.id, "\uFFFD")
		n := len(id)
		if b.Len() > 0 {
			n++
		}
		if b.Len()+n > MaxValueLen {
			if b.Len() == 0 {
				b.WriteString(cut(id, MaxValueLen))
			}
			break
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(id)
	}
	return b.String()
}

// cut makes s valid UTF-8 and at most n bytes, cutting at a rune
// boundary.
func cut(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}

// oneLine replaces line breaks so a summary stays one line.
func oneLine(s string) string {
	return strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ").Replace(s)
}

// stamp formats t as RFC 3339 in UTC.
func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// dur formats d without trailing zero units ("10m", "1h30m", "24h").
func dur(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func pick(cond bool, a, b string) string {
	if cond {
		return a
	}
	return b
}
