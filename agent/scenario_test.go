package agent

import (
	"bufio"
	"crypto"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/internal/golden"
	"github.com/sigil-id/sigil/registration"
	"github.com/sigil-id/sigil/workloadapi"
)

// TestX509StateScenarios runs the scripts in testdata/x509state against an
// x509State with no jitter (renewal at exactly half-life, backoff at the
// lower end) and compares the printed transitions and states with the
// golden files (go test ./agent -run Scenarios -update rewrites them).
//
// Commands, one a line (# starts a comment, copied to the output):
//
//	bundle CA...                 SetBundle with these CAs (made on first mention)
//	entries ID=PATH...           ReplaceEntries (revision 1, selector uid:1)
//	upsert ID PATH [rev=N] [ttl=SECONDS] [dns=NAME] [uid=N] [fed=TD[+TD...]]
//	                             ApplyDelta of one entry (selector uid:N, 1 by
//	                             default; federating with these trust domains)
//	delete ID...                 ApplyDelta deleting entries
//	taint CA...                  Tainted: these CAs' keys are tainted
//	advance D                    move the clock
//	tick                         Tick
//	start [MAX]                  StartMints (MAX 10); jobs are numbered #1, #2, ...
//	mint JOB[,JOB...] CA [ttl=D] [id=PATH] [key=other]
//	                             MintFinished: SVIDs signed by CA, valid from now
//	fail JOB[,JOB...] [CODE]     MintFinished: the server answered with an error
//	deny JOB                     MintFinished: PermissionDenied
//	reset                        ResetRetries
//	federated [full] TD=CA[+CA...]...  SetFederated: federated bundles (full: the whole set)
//	fedremove TD...              SetFederated: remove these federated bundles
//	subscribe NAME UID           a subscription with selector uid:UID; after every
//	                             command, the snapshots subscriptions receive are printed
//	close NAME                   the subscription ends; its entries' idle period starts
//	report                       the rotation report fields of every entry (report.go)
//	cache max=N [eager=SEL[,SEL...]] [idle=D]
//	                             SetPolicy: bound the SVID cache (unbounded until
//	                             then); from then on each entry's cache state is
//	                             printed (active, eager, spare: minted only while
//	                             there is room) with the cache's count
//
// start takes first the entries the subscriptions wait for, as the
// agent's minting loop does.
func TestX509StateScenarios(t *testing.T) {
	golden.Scripts(t, "testdata/x509state/*.script", runX509Scenario)
}

type scenario struct {
	t     *testing.T
	start time.Time
	now   time.Time
	st    x509State
	cas   map[string]*testCA
	// caOf names a CA by its SubjectKeyId.
	caOf map[string]string
	jobs map[int]*mintJob
	njob int
	out  strings.Builder
	// subs are the subscriptions, by name.
	subs     subscriptions
	subNames map[*subscription]string
}

func (s *scenario) rel(tm time.Time) string {
	if tm.IsZero() {
		return "-"
	}
	return "+" + tm.Sub(s.start).String()
}

func (s *scenario) ca(name string) *testCA {
	if c := s.cas[name]; c != nil {
		return c
	}
	c := newTestCA(s.t, s.start)
	s.cas[name] = c
	s.caOf[string(c.cert.SubjectKeyId)] = name
	return c
}

func (s *scenario) fatalf(line, format string, args ...any) {
	s.t.Helper()
	s.t.Fatalf("%s: %s", line, fmt.Sprintf(format, args...))
}

// show prints what a transition changed.
func (s *scenario) show(ch changes) {
	for _, e := range ch.events {
		fmt.Fprintf(&s.out, "  event %s %s", e.kind, e.entryID)
		if e.svid != nil {
			fmt.Fprintf(&s.out, " svid#%d", e.svid.seq)
		}
		if !e.at.IsZero() {
			fmt.Fprintf(&s.out, " retry %s", s.rel(e.at))
		}
		if e.err != nil {
			fmt.Fprintf(&s.out, " (%v)", e.err)
		}
		s.out.WriteString("\n")
	}
	var flags []string
	if ch.notify {
		flags = append(flags, "notify")
	}
	if ch.wake {
		flags = append(flags, "wake")
	}
	if ch.jwtBundles {
		flags = append(flags, "jwt-bundles")
	}
	if ch.overCapacity > 0 {
		flags = append(flags, fmt.Sprintf("over-capacity=%d", ch.overCapacity))
	}
	if len(ch.jwtDrop) > 0 {
		d := slices.Clone(ch.jwtDrop)
		slices.Sort(d)
		flags = append(flags, "jwt-drop["+strings.Join(d, ",")+"]")
	}
	if len(flags) > 0 {
		fmt.Fprintf(&s.out, "  changes: %s\n", strings.Join(flags, " "))
	}
}

// state prints every entry and the next time-driven event.
func (s *scenario) state() {
	for _, id := range s.st.sortedIDs() {
		st := s.st.peek(id)
		fmt.Fprintf(&s.out, "  %-4s %-8s gen %d %s", id, st.phase(s.now), st.gen, strings.TrimPrefix(st.entry.GetSpiffeId(), "spiffe://example.org"))
		if sv := st.svid; sv != nil {
			fmt.Fprintf(&s.out, " | svid#%d %s by %s renew %s expires %s", sv.seq,
				strings.TrimPrefix(sv.spiffeID.String(), "spiffe://example.org"), s.caOf[sv.leafAKI()],
				s.rel(sv.renewAt), s.rel(sv.notAfter))
			if sv.mintedFor != st.fp {
				s.out.WriteString(" (for an older version)")
			}
			if sv.tainted {
				s.out.WriteString(" tainted")
			}
		}
		if st.pending != nil {
			fmt.Fprintf(&s.out, " | held since %s, by %s", s.rel(st.pendingSince), s.caOf[st.pending.leafAKI()])
		}
		if st.failures > 0 || !st.retryAt.IsZero() {
			fmt.Fprintf(&s.out, " | failures %d retry %s", st.failures, s.rel(st.retryAt))
		}
		if st.denied {
			s.out.WriteString(" | denied")
		}
		if s.st.policy.max > 0 {
			var flags []string
			if st.eager {
				flags = append(flags, "eager")
			}
			if st.refs > 0 {
				flags = append(flags, fmt.Sprintf("active(%d)", st.refs))
			} else if st.active {
				flags = append(flags, "active until "+s.rel(unnanos(st.activeUntil)))
			}
			if st.q == qSpare {
				flags = append(flags, "spare")
			}
			if len(flags) > 0 {
				fmt.Fprintf(&s.out, " | %s", strings.Join(flags, " "))
			}
		}
		s.out.WriteString("\n")
	}
	if s.st.policy.max > 0 {
		z := s.st.Sizes()
		fmt.Fprintf(&s.out, "  cache %d/%d svids, %d over\n", z.svids, z.max, z.over)
	}
	for _, td := range s.st.sortedFederated() {
		b := s.st.federated[td]
		fmt.Fprintf(&s.out, "  federated %s v%d by %s\n", td.Name(), b.version, s.casOf(b))
	}
	fmt.Fprintf(&s.out, "  next %s\n", s.rel(s.st.NextEvent()))
}

// casOf names the CAs of a federated bundle.
func (s *scenario) casOf(b *fedBundle) string {
	var names []string
	if b.x509 != nil {
		for _, c := range b.x509.X509Authorities() {
			names = append(names, s.caOf[string(c.SubjectKeyId)])
		}
	}
	slices.Sort(names)
	return strings.Join(names, "+")
}

// deliveries prints the snapshots the subscriptions received.
func (s *scenario) deliveries() {
	names := make([]string, 0, len(s.subNames))
	bySub := make(map[string]*subscription, len(s.subNames))
	for sub, n := range s.subNames {
		names = append(names, n)
		bySub[n] = sub
	}
	slices.Sort(names)
	for _, n := range names {
		select {
		case snap := <-bySub[n].ch:
			var ids, fed []string
			for _, id := range snap.Identities {
				ids = append(ids, id.EntryID)
			}
			for td, b := range snap.Federated {
				var cas []string
				for _, c := range b.X509Authorities() {
					cas = append(cas, s.caOf[string(c.SubjectKeyId)])
				}
				slices.Sort(cas)
				fed = append(fed, td.Name()+"="+strings.Join(cas, "+"))
			}
			slices.Sort(fed)
			fmt.Fprintf(&s.out, "  snapshot to %s: [%s] federated [%s]\n", n, strings.Join(ids, " "), strings.Join(fed, " "))
		default:
		}
	}
}

// jobsOf parses a comma-separated list of job numbers.
func (s *scenario) jobsOf(line, arg string) []*mintJob {
	var jobs []*mintJob
	for _, f := range strings.Split(arg, ",") {
		n, err := strconv.Atoi(strings.TrimPrefix(f, "#"))
		if err != nil || s.jobs[n] == nil {
			s.fatalf(line, "no job %q", f)
		}
		jobs = append(jobs, s.jobs[n])
		delete(s.jobs, n)
	}
	return jobs
}

func scenarioEntry(id, path string) *sigilv1.Entry {
	e := entry(id, path, 1, "uid:1")
	return e
}

func runX509Scenario(t *testing.T, path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	s := &scenario{
		t:     t,
		start: start,
		now:   start,
		st:    newX509State(func() float64 { return 0 }),
		cas:   make(map[string]*testCA),
		caOf:  make(map[string]string),
		jobs:  make(map[int]*mintJob),

		subs:     newSubscriptions(),
		subNames: make(map[*subscription]string),
	}
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			s.out.WriteString(line + "\n")
			continue
		}
		fields := strings.Fields(line)
		args := fields[1:]
		opts := map[string]string{}
		var pos []string
		for _, a := range args {
			if k, v, ok := strings.Cut(a, "="); ok && fields[0] != "entries" && fields[0] != "federated" && fields[0] != "close" {
				opts[k] = v
			} else {
				pos = append(pos, a)
			}
		}
		fmt.Fprintf(&s.out, "> %s   (now %s)\n", line, s.rel(s.now))
		var ch changes
		switch fields[0] {
		case "bundle":
			b := x509bundle.New(testTD)
			for _, name := range pos {
				b.AddX509Authority(s.ca(name).cert)
			}
			changed, c := s.st.SetBundle(b, s.now)
			if !changed {
				s.out.WriteString("  unchanged\n")
			}
			ch = c
		case "entries":
			var es []*sigilv1.Entry
			for _, a := range pos {
				id, p, ok := strings.Cut(a, "=")
				if !ok {
					s.fatalf(line, "want ID=PATH, got %q", a)
				}
				es = append(es, scenarioEntry(id, p))
			}
			ch = s.st.ReplaceEntries(es)
		case "upsert":
			if len(pos) != 2 {
				s.fatalf(line, "want upsert ID PATH")
			}
			e := scenarioEntry(pos[0], pos[1])
			if v, ok := opts["rev"]; ok {
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					s.fatalf(line, "%v", err)
				}
				e.Revision = n
			}
			if v, ok := opts["ttl"]; ok {
				n, err := strconv.ParseInt(v, 10, 32)
				if err != nil {
					s.fatalf(line, "%v", err)
				}
				e.X509SvidTtl = int32(n)
			}
			if v, ok := opts["dns"]; ok {
				e.DnsNames = []string{v}
			}
			if v, ok := opts["uid"]; ok {
				e.Selectors = []*sigilv1.Selector{sel("uid:" + v)}
			}
			if v, ok := opts["fed"]; ok {
				e.FederatesWith = strings.Split(v, "+")
			}
			ch = s.st.ApplyDelta([]*sigilv1.Entry{e}, nil)
		case "delete":
			ch = s.st.ApplyDelta(nil, pos)
		case "taint":
			tainted := map[string]bool{}
			for _, name := range pos {
				tainted[string(s.ca(name).cert.SubjectKeyId)] = true
			}
			ch = s.st.Tainted(tainted)
		case "advance":
			d, err := time.ParseDuration(pos[0])
			if err != nil {
				s.fatalf(line, "%v", err)
			}
			s.now = s.now.Add(d)
			continue
		case "tick":
			ch = s.st.Tick(s.now)
		case "start":
			n := 10
			if len(pos) > 0 {
				if n, err = strconv.Atoi(pos[0]); err != nil {
					s.fatalf(line, "%v", err)
				}
			}
			jobs, next := s.st.StartMints(s.now, n, func() map[*entryState]bool { return s.subs.waiting(&s.st) })
			var names []string
			for _, j := range jobs {
				s.njob++
				s.jobs[s.njob] = j
				names = append(names, fmt.Sprintf("#%d %s", s.njob, j.id))
			}
			fmt.Fprintf(&s.out, "  jobs [%s] then next %s\n", strings.Join(names, ", "), s.rel(next))
		case "mint":
			if len(pos) != 2 {
				s.fatalf(line, "want mint JOB CA")
			}
			jobs := s.jobsOf(line, pos[0])
			ca := s.ca(pos[1])
			ttl := time.Hour
			if v, ok := opts["ttl"]; ok {
				if ttl, err = time.ParseDuration(v); err != nil {
					s.fatalf(line, "%v", err)
				}
			}
			results := make([]mintResult, len(jobs))
			for i, j := range jobs {
				key, _, err := newKeyAndCSR()
				if err != nil {
					t.Fatal(err)
				}
				j.key = key
				var pub crypto.PublicKey = key.Public()
				if opts["key"] == "other" {
					other, _, _ := newKeyAndCSR()
					pub = other.Public()
				}
				id, err := spiffeid.FromString(j.fp.spiffeID)
				if err != nil {
					t.Fatal(err)
				}
				if p, ok := opts["id"]; ok {
					id = spiffeid.RequireFromPath(testTD, "/"+p)
				}
				chain := ca.sign(t, id, pub, s.now, ttl)
				results[i] = checkMint(j, mintOutcome{chain: chain}, s.st.bundle, s.now)
			}
			var n int
			n, ch = s.st.MintFinished(results, s.now)
			fmt.Fprintf(&s.out, "  installed %d\n", n)
		case "fail", "deny":
			if len(pos) < 1 {
				s.fatalf(line, "want %s JOB", fields[0])
			}
			jobs := s.jobsOf(line, pos[0])
			out := mintOutcome{err: status.Error(codes.Unavailable, "server unreachable")}
			if fields[0] == "deny" {
				out = mintOutcome{err: status.Error(codes.PermissionDenied, "entry not authorized for this agent"), denied: true}
			} else if len(pos) > 1 {
				out = mintOutcome{err: errors.New(strings.Join(pos[1:], " "))}
			}
			results := make([]mintResult, len(jobs))
			for i, j := range jobs {
				results[i] = checkMint(j, out, s.st.bundle, s.now)
			}
			_, ch = s.st.MintFinished(results, s.now)
		case "reset":
			ch = s.st.ResetRetries()
		case "federated", "fedremove":
			full := len(pos) > 0 && pos[0] == "full"
			if full {
				pos = pos[1:]
			}
			var bundles []*fedBundle
			var removed []spiffeid.TrustDomain
			for _, a := range pos {
				if fields[0] == "fedremove" {
					removed = append(removed, spiffeid.RequireTrustDomainFromString(a))
					continue
				}
				name, cas, ok := strings.Cut(a, "=")
				if !ok {
					s.fatalf(line, "want TD=CA[+CA...], got %q", a)
				}
				pb := &sigilv1.Bundle{TrustDomain: name}
				for _, c := range strings.Split(cas, "+") {
					pb.X509Authorities = append(pb.X509Authorities, &sigilv1.X509Authority{Certificate: s.ca(c).cert.Raw})
				}
				b, err := parseFederated(testTD, pb)
				if err != nil {
					s.fatalf(line, "%v", err)
				}
				bundles = append(bundles, b)
			}
			var evs []fedEvent
			evs, ch = s.st.SetFederated(full, bundles, nil, removed)
			for _, e := range evs {
				fmt.Fprintf(&s.out, "  federated %s %s", e.kind, e.td.Name())
				if e.bundle != nil {
					fmt.Fprintf(&s.out, " v%d", e.bundle.version)
				}
				s.out.WriteString("\n")
			}
		case "report":
			rs := s.st.reportStates()
			slices.SortFunc(rs, func(a, b entryReport) int { return strings.Compare(a.id, b.id) })
			for _, r := range rs {
				fmt.Fprintf(&s.out, "  report %s %s", r.id, r.spiffeID)
				if r.sv != nil {
					fmt.Fprintf(&s.out, " svid#%d renew %s expires %s", r.sv.seq, s.rel(r.sv.renewAt), s.rel(r.sv.notAfter))
				}
				fmt.Fprintf(&s.out, " attempt %s failures %d error %q\n", s.rel(r.lastAttempt), r.failStreak, r.lastError)
			}
			continue
		case "subscribe":
			if len(pos) != 2 {
				s.fatalf(line, "want subscribe NAME UID")
			}
			sub := &subscription{
				sels: registration.NewSelectorSet([]*sigilv1.Selector{sel("uid:" + pos[1])}),
				ch:   make(chan *workloadapi.X509Snapshot, 1),
			}
			s.subNames[sub] = pos[0]
			s.subs.add(sub, &s.st)
			s.deliveries()
			if s.st.policy.max > 0 {
				s.state()
			}
			continue
		case "close":
			var sub *subscription
			for sb, n := range s.subNames {
				if n == pos[0] {
					sub = sb
				}
			}
			if sub == nil {
				s.fatalf(line, "no subscription %q", pos[0])
			}
			delete(s.subNames, sub)
			s.subs.remove(sub, &s.st)
			s.st.Release(s.now)
			s.state()
			continue
		case "cache":
			c := SVIDCacheConfig{}
			if v, ok := opts["max"]; ok {
				if c.MaxSVIDs, err = strconv.Atoi(v); err != nil {
					s.fatalf(line, "%v", err)
				}
			}
			if v, ok := opts["eager"]; ok {
				c.EagerSelectors = strings.Split(v, ",")
			}
			if v, ok := opts["idle"]; ok {
				if c.IdleAfter, err = time.ParseDuration(v); err != nil {
					s.fatalf(line, "%v", err)
				}
			}
			if err := c.validate(); err != nil {
				s.fatalf(line, "%v", err)
			}
			ch = s.st.SetPolicy(newCachePolicy(c))
		default:
			s.fatalf(line, "unknown command %q", fields[0])
		}
		s.show(ch)
		if ch.notify {
			s.subs.notify(&s.st)
		}
		s.st.Release(s.now)
		s.deliveries()
		s.state()
	}
	return s.out.String()
}
