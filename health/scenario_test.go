package health_test

import (
	"bufio"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/sigil-id/sigil/alert"
	"github.com/sigil-id/sigil/health"
	"github.com/sigil-id/sigil/internal/golden"
)

// TestScenarios runs the scenarios in testdata/*.txt and compares what
// they print with testdata/*.golden (go test ./health -run Scenarios
// -update rewrites the golden files; read the difference before
// committing it).
//
// A scenario builds a Snapshot and evaluates it as time passes. Times are
// offsets from the start, 2030-01-01T00:00:00Z ("+1h", "-30m", "0"), or
// "-" for none; "now" is the current time. An ID without a scheme is
// short for spiffe://example.org/sigil/agent/<id> (agents) or
// spiffe://example.org/<id> (SVIDs); {c*N} in a value is the character c
// N times; values may be double-quoted Go strings.
//
//	config key=value...          thresholds (the alerts {} key names); resets the window
//	term T                       the leader's term started at T
//	advance D                    time passes
//	agent ID attested=T expires=T [banned]
//	ban ID / delete ID           ban the agent / delete it (its report stays)
//	report ID server=S received=T [held=N] [truncated] [own=renew,expires]
//	                             the agent's report (replacing its report held by S)
//	svid ID [entry=E] renew=T expires=T [attempt=T] [error=S] [failures=N]
//	                             a workload SVID of the last report
//	heartbeat ID at=T            the agent's reports were last received at T
//	authority KIND SERVER ID state=S expires=T
//	federation TD last_success=T hint=D created=T [error=S]
//	member NAME addr=A [unreachable since=T] [error=S]
//	server NAME [failing since=T] [error=S]
//	                             a server's key manager state (failing: since T)
//	observe SERVER instance=I attestation=N signing=N
//	                             cumulative failure counters of a server, into the Window
//	window                       print the Window's count now
//	eval                         print Evaluate's alerts now (Failures from the Window)
//	noleader since=T             print NoLeader's answer now
func TestScenarios(t *testing.T) {
	golden.Scripts(t, "testdata/*.txt", runScenario)
}

var start = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

type scenario struct {
	t      *testing.T
	line   string
	now    time.Time
	cfg    health.Config
	win    *health.Window
	snap   health.Snapshot
	last   *health.AgentReport
	agents map[string]int
}

func runScenario(t *testing.T, path string) string {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := &scenario{t: t, now: start, cfg: health.DefaultConfig(), agents: map[string]int{}}
	sc.win = health.NewWindow(sc.cfg.FailureWindow)
	sc.snap = health.Snapshot{Source: "s1", TermStart: start}
	var out strings.Builder
	lines := bufio.NewScanner(f)
	for lines.Scan() {
		sc.line = strings.TrimSpace(lines.Text())
		if sc.line == "" || strings.HasPrefix(sc.line, "#") {
			out.WriteString(sc.line + "\n")
			continue
		}
		args := sc.fields(sc.line)
		cmd, pos, kv := args[0], []string{}, map[string]string{}
		for _, a := range args[1:] {
			if k, v, ok := strings.Cut(a, "="); ok {
				kv[k] = v
			} else {
				pos = append(pos, a)
			}
		}
		switch cmd {
		case "config":
			sc.config(kv)
		case "term":
			sc.snap.TermStart = sc.time(sc.arg(pos, 0))
		case "advance":
			sc.now = sc.now.Add(sc.dur(sc.arg(pos, 0)))
		case "agent":
			id := agentID(sc.arg(pos, 0))
			ag := health.Agent{ID: id, AttestedAt: sc.time(kv["attested"]), ExpiresAt: sc.time(kv["expires"]), Banned: has(pos, "banned")}
			if i, ok := sc.agents[id]; ok {
				sc.snap.Agents[i] = ag
			} else {
				sc.agents[id] = len(sc.snap.Agents)
				sc.snap.Agents = append(sc.snap.Agents, ag)
			}
		case "ban":
			sc.snap.Agents[sc.agent(sc.arg(pos, 0))].Banned = true
		case "delete":
			i := sc.agent(sc.arg(pos, 0))
			sc.snap.Agents = append(sc.snap.Agents[:i], sc.snap.Agents[i+1:]...)
			sc.agents = map[string]int{}
			for j, a := range sc.snap.Agents {
				sc.agents[a.ID] = j
			}
		case "report":
			sc.report(pos, kv)
		case "svid":
			if sc.last == nil {
				t.Fatalf("%s: no report to add the SVID to", sc.line)
			}
			sc.last.SVIDs = append(sc.last.SVIDs, sc.svid(svidID(sc.arg(pos, 0)), kv))
			if sc.last.Held < len(sc.last.SVIDs) {
				sc.last.Held = len(sc.last.SVIDs)
			}
		case "heartbeat":
			id, n := agentID(sc.arg(pos, 0)), 0
			for i := range sc.snap.Reports {
				if sc.snap.Reports[i].AgentID == id {
					sc.snap.Reports[i].ReceivedAt = sc.time(kv["at"])
					n++
				}
			}
			if n == 0 {
				t.Fatalf("%s: no report of %s", sc.line, id)
			}
		case "authority":
			au := health.Authority{Kind: sc.arg(pos, 0), Server: sc.arg(pos, 1), ID: sc.arg(pos, 2), State: kv["state"], ExpiresAt: sc.time(kv["expires"])}
			replaced := false
			for i, a := range sc.snap.Authorities {
				if a.ID == au.ID && a.Server == au.Server && a.Kind == au.Kind {
					sc.snap.Authorities[i], replaced = au, true
				}
			}
			if !replaced {
				sc.snap.Authorities = append(sc.snap.Authorities, au)
			}
		case "federation":
			fb := health.FederatedBundle{TrustDomain: sc.arg(pos, 0), LastSuccess: sc.time(kv["last_success"]),
				RefreshHint: sc.dur(kv["hint"]), CreatedAt: sc.time(kv["created"]), LastError: kv["error"]}
			sc.snap.Federation = replaceBy(sc.snap.Federation, fb, func(a health.FederatedBundle) bool { return a.TrustDomain == fb.TrustDomain })
		case "member":
			m := health.Member{Name: sc.arg(pos, 0), Address: kv["addr"], Reachable: !has(pos, "unreachable"), LastError: kv["error"]}
			if !m.Reachable {
				m.UnreachableSince = sc.time(kv["since"])
			}
			sc.snap.Members = replaceBy(sc.snap.Members, m, func(a health.Member) bool { return a.Name == m.Name })
		case "server":
			sv := health.Server{Name: sc.arg(pos, 0), KeyManagerError: kv["error"], UpstreamError: kv["upstream_error"]}
			if has(pos, "failing") {
				sv.KeyManagerFailingSince = sc.time(kv["since"])
			}
			if has(pos, "upstream_failing") {
				sv.UpstreamFailingSince = sc.time(kv["upstream_since"])
			}
			sc.snap.Servers = replaceBy(sc.snap.Servers, sv, func(a health.Server) bool { return a.Name == sv.Name })
		case "observe":
			sc.win.Observe(sc.now, sc.arg(pos, 0), kv["instance"], health.Failures{Attestation: sc.uint(kv["attestation"]), Signing: sc.uint(kv["signing"])})
		case "window":
			c := sc.win.Count(sc.now)
			fmt.Fprintf(&out, "> %s   (now %s)\n  attestation=%d signing=%d\n", sc.line, rel(sc.now), c.Attestation, c.Signing)
		case "eval":
			fmt.Fprintf(&out, "> %s   (now %s)\n", sc.line, rel(sc.now))
			sc.eval(&out)
		case "noleader":
			fmt.Fprintf(&out, "> %s   (now %s)\n", sc.line, rel(sc.now))
			a, ok := health.NoLeader(sc.cfg, sc.snap.Source, sc.now, sc.time(kv["since"]))
			if !ok {
				out.WriteString("  (no alert)\n")
			} else {
				sc.check([]alert.Alert{a})
				printAlert(&out, a)
			}
		default:
			t.Fatalf("unknown command %q", sc.line)
		}
	}
	if err := lines.Err(); err != nil {
		t.Fatal(err)
	}
	return out.String()
}

func (sc *scenario) eval(out *strings.Builder) {
	s := sc.snap
	s.Now = sc.now
	s.Failures = sc.win.Count(sc.now)
	// Evaluate must not depend on the order of its input, nor change it.
	before := fmt.Sprintf("%+v", s)
	got := health.Evaluate(sc.cfg, s)
	if after := fmt.Sprintf("%+v", s); after != before {
		sc.t.Fatalf("%s: Evaluate changed its input", sc.line)
	}
	rev := s
	rev.Reports = reversed(s.Reports)
	rev.Agents = reversed(s.Agents)
	rev.Authorities = reversed(s.Authorities)
	rev.Federation = reversed(s.Federation)
	rev.Members = reversed(s.Members)
	if a, b := render(got), render(health.Evaluate(sc.cfg, rev)); a != b {
		sc.t.Fatalf("%s: Evaluate depends on the input's order:\n%s", sc.line, golden.Diff(a, b))
	}
	sc.check(got)
	if len(got) == 0 {
		out.WriteString("  (no alerts)\n")
	}
	out.WriteString(render(got))
}

// check asserts the bounds every alert keeps.
func (sc *scenario) check(got []alert.Alert) {
	for i, a := range got {
		if i > 0 && got[i-1].Key >= a.Key {
			sc.t.Errorf("%s: alerts not sorted by unique key: %q then %q", sc.line, got[i-1].Key, a.Key)
		}
		if len(a.Key) > health.MaxKeyLen || a.Key == "" {
			sc.t.Errorf("%s: key of %d bytes", sc.line, len(a.Key))
		}
		if len(a.Details) > health.MaxDetails {
			sc.t.Errorf("%s: %s has %d details", sc.line, a.Key, len(a.Details))
		}
		for k, v := range a.Details {
			if len(v) > health.MaxValueLen || !utf8.ValidString(v) {
				sc.t.Errorf("%s: %s detail %s: %d bytes, valid UTF-8 %v", sc.line, a.Key, k, len(v), utf8.ValidString(v))
			}
		}
		if len(a.Summary) > health.MaxValueLen || strings.Contains(a.Summary, "\n") {
			sc.t.Errorf("%s: %s summary of %d bytes or several lines", sc.line, a.Key, len(a.Summary))
		}
		if a.Source != sc.snap.Source || !a.StartsAt.Equal(sc.now) || !a.EndsAt.IsZero() {
			sc.t.Errorf("%s: %s source %q startsAt %v endsAt %v", sc.line, a.Key, a.Source, a.StartsAt, a.EndsAt)
		}
	}
}

func render(as []alert.Alert) string {
	var b strings.Builder
	for _, a := range as {
		printAlert(&b, a)
	}
	return b.String()
}

func printAlert(b *strings.Builder, a alert.Alert) {
	fmt.Fprintf(b, "  %s %s %s\n    %s\n", a.Severity, a.Name, a.Key, a.Summary)
	keys := make([]string, 0, len(a.Details))
	for k := range a.Details {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := a.Details[k]
		if len(v) > 120 {
			v = fmt.Sprintf("%s…(%d bytes)", v[:60], len(v))
		}
		fmt.Fprintf(b, "    %s=%s\n", k, v)
	}
}

func (sc *scenario) config(kv map[string]string) {
	for k, v := range kv {
		switch k {
		case "renew_grace":
			sc.cfg.RenewGrace = sc.dur(v)
		case "expiry_critical":
			sc.cfg.ExpiryCritical = sc.dur(v)
		case "report_timeout":
			sc.cfg.ReportTimeout = sc.dur(v)
		case "authority_warn":
			sc.cfg.AuthorityWarn = sc.dur(v)
		case "federation_stale_hints":
			sc.cfg.FederationStaleHints = int(sc.uint(v))
		case "no_leader_after":
			sc.cfg.NoLeaderAfter = sc.dur(v)
		case "member_unreachable_after":
			sc.cfg.MemberUnreachableAfter = sc.dur(v)
		case "failure_burst":
			sc.cfg.FailureBurst = sc.uint(v)
		case "failure_window":
			sc.cfg.FailureWindow = sc.dur(v)
		case "key_manager_failing_after":
			sc.cfg.KeyManagerFailingAfter = sc.dur(v)
		case "upstream_failing_after":
			sc.cfg.UpstreamFailingAfter = sc.dur(v)
		case "max_ids":
			sc.cfg.MaxIDs = int(sc.uint(v))
		default:
			sc.t.Fatalf("%s: unknown config key %q", sc.line, k)
		}
	}
	if err := sc.cfg.Validate(); err != nil {
		sc.t.Fatalf("%s: %v", sc.line, err)
	}
	sc.win = health.NewWindow(sc.cfg.FailureWindow)
}

func (sc *scenario) report(pos []string, kv map[string]string) {
	r := health.AgentReport{AgentID: agentID(sc.arg(pos, 0)), Server: kv["server"], ReceivedAt: sc.time(kv["received"]), Truncated: has(pos, "truncated")}
	if r.Server == "" {
		r.Server = "s1"
	}
	if v, ok := kv["held"]; ok {
		r.Held = int(sc.uint(v))
	}
	if v, ok := kv["own"]; ok {
		renew, exp, _ := strings.Cut(v, ",")
		r.AgentSVID = health.SVID{SPIFFEID: r.AgentID, Serial: "a1", RenewAt: sc.time(renew), ExpiresAt: sc.time(exp)}
	}
	for i := range sc.snap.Reports {
		if sc.snap.Reports[i].AgentID == r.AgentID && sc.snap.Reports[i].Server == r.Server {
			sc.snap.Reports[i] = r
			sc.last = &sc.snap.Reports[i]
			return
		}
	}
	sc.snap.Reports = append(sc.snap.Reports, r)
	sc.last = &sc.snap.Reports[len(sc.snap.Reports)-1]
}

func (sc *scenario) svid(id string, kv map[string]string) health.SVID {
	v := health.SVID{EntryID: kv["entry"], SPIFFEID: id, Serial: "01", RenewAt: sc.time(kv["renew"]), ExpiresAt: sc.time(kv["expires"]),
		LastAttempt: sc.time(kv["attempt"]), LastError: kv["error"]}
	if v.EntryID == "" {
		v.EntryID = "e-" + id[strings.LastIndex(id, "/")+1:]
	}
	if f, ok := kv["failures"]; ok {
		v.Failures = uint32(sc.uint(f))
	}
	return v
}

func (sc *scenario) agent(short string) int {
	i, ok := sc.agents[agentID(short)]
	if !ok {
		sc.t.Fatalf("%s: unknown agent %s", sc.line, short)
	}
	return i
}

var repeatRe = regexp.MustCompile(`\{(.)\*(\d+)\}`)

// fields splits a line at spaces, keeping double-quoted Go strings (after
// key=) whole, and expands {c*N}.
func (sc *scenario) fields(line string) []string {
	var out []string
	for line = strings.TrimSpace(line); line != ""; line = strings.TrimSpace(line) {
		end := strings.IndexByte(line, ' ')
		if q := strings.Index(line, `="`); q >= 0 && (end < 0 || q < end) {
			s, err := strconv.QuotedPrefix(line[q+1:])
			if err != nil {
				sc.t.Fatalf("%s: %v", sc.line, err)
			}
			u, _ := strconv.Unquote(s)
			out = append(out, line[:q+1]+u)
			line = line[q+1+len(s):]
			continue
		}
		if end < 0 {
			end = len(line)
		}
		out = append(out, line[:end])
		line = line[end:]
	}
	for i, f := range out {
		out[i] = repeatRe.ReplaceAllStringFunc(f, func(m string) string {
			p := repeatRe.FindStringSubmatch(m)
			n, _ := strconv.Atoi(p[2])
			return strings.Repeat(p[1], n)
		})
	}
	return out
}

func (sc *scenario) arg(pos []string, i int) string {
	if i >= len(pos) {
		sc.t.Fatalf("%s: argument %d missing", sc.line, i+1)
	}
	return pos[i]
}

func (sc *scenario) time(v string) time.Time {
	switch v {
	case "", "-":
		return time.Time{}
	case "now":
		return sc.now
	case "0":
		return start
	}
	return start.Add(sc.dur(v))
}

func (sc *scenario) dur(v string) time.Duration {
	if v == "" || v == "0" {
		return 0
	}
	neg := strings.HasPrefix(v, "-")
	d, err := time.ParseDuration(strings.TrimLeft(v, "+-"))
	if err != nil {
		sc.t.Fatalf("%s: %v", sc.line, err)
	}
	if neg {
		d = -d
	}
	return d
}

func (sc *scenario) uint(v string) uint64 {
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		sc.t.Fatalf("%s: %v", sc.line, err)
	}
	return n
}

func rel(t time.Time) string {
	d := t.Sub(start)
	if d < 0 {
		return d.String()
	}
	return "+" + d.String()
}

func agentID(s string) string {
	if strings.Contains(s, "://") {
		return s
	}
	return "spiffe://example.org/sigil/agent/" + s
}

func svidID(s string) string {
	if strings.Contains(s, "://") {
		return s
	}
	return "spiffe://example.org/" + s
}

func has(pos []string, word string) bool {
	for _, p := range pos {
		if p == word {
			return true
		}
	}
	return false
}

func reversed[T any](s []T) []T {
	out := make([]T, len(s))
	for i, v := range s {
		out[len(s)-1-i] = v
	}
	return out
}

func replaceBy[T any](s []T, v T, same func(T) bool) []T {
	for i := range s {
		if same(s[i]) {
			s[i] = v
			return s
		}
	}
	return append(s, v)
}
