package policy

import (
	"sort"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// The index answers "which rules could allow this caller to reach this
// target" with a handful of map lookups instead of a scan of every rule:
//
//	trust domain → whole-domain rules
//	             → exact path → rules
//	             → path prefix → rules (looked up for each ancestor of the caller's path)
//	             → globs, grouped by segment count and keyed on one literal segment
//
// and inside each of those, rules are split by target: by service name,
// by literal gRPC service, and the rest. Lists hold rule indices in file
// order, so the first full match in each list is the earliest.

type refs struct {
	bySvc  map[string][]int32
	byGRPC map[string][]int32
	any    []int32
}

func appendIdx(l []int32, idx int32) []int32 {
	if n := len(l); n > 0 && l[n-1] == idx {
		return l
	}
	return append(l, idx)
}

func (r *refs) add(idx int32, tm *targetMatcher) {
	switch {
	case tm.service != "":
		if r.bySvc == nil {
			r.bySvc = map[string][]int32{}
		}
		r.bySvc[tm.service] = appendIdx(r.bySvc[tm.service], idx)
	case tm.proto == GRPC && tm.grpcSvc != "":
		if r.byGRPC == nil {
			r.byGRPC = map[string][]int32{}
		}
		r.byGRPC[tm.grpcSvc] = appendIdx(r.byGRPC[tm.grpcSvc], idx)
	default:
		r.any = appendIdx(r.any, idx)
	}
}

type globRef struct {
	g    *glob
	refs refs
	// first is the lowest rule index in refs, to skip globs that cannot
	// beat a match already found.
	first int32
}

// globGroup holds the globs with one segment count (and no "**").
type globGroup struct {
	// keyed[pos][literal] are globs whose segment pos is that literal.
	positions []int
	keyed     map[int]map[string][]*globRef
	// unkeyed globs have no literal segment.
	unkeyed []*globRef
}

type tdIndex struct {
	all       refs
	exact     map[string]*refs
	prefix    map[string]*refs
	byLen     map[int]*globGroup
	restGlobs []*globRef // globs ending in "**"
	globText  map[string]*globRef
	pending   []*globRef // globs to group once every rule is indexed
}

func (p *Policy) index(idx int32, r *rule) {
	for _, fm := range r.from {
		ti := p.byTD[fm.td]
		if ti == nil {
			ti = &tdIndex{exact: map[string]*refs{}, prefix: map[string]*refs{}, byLen: map[int]*globGroup{}, globText: map[string]*globRef{}}
			p.byTD[fm.td] = ti
		}
		var target *refs
		switch fm.kind {
		case idTrustDomain:
			target = &ti.all
		case idExact:
			target = getRefs(ti.exact, fm.path)
		case idPrefix:
			target = getRefs(ti.prefix, fm.path)
		case idGlob:
			target = &ti.globRef(fm.g, idx).refs
		}
		for _, tm := range r.to {
			target.add(idx, tm)
		}
	}
}

func getRefs(m map[string]*refs, k string) *refs {
	r := m[k]
	if r == nil {
		r = &refs{}
		m[k] = r
	}
	return r
}

func (ti *tdIndex) globRef(g *glob, idx int32) *globRef {
	if gr := ti.globText[g.text]; gr != nil {
		return gr
	}
	gr := &globRef{g: g, first: idx}
	ti.globText[g.text] = gr
	if g.rest {
		ti.restGlobs = append(ti.restGlobs, gr)
	} else {
		ti.pending = append(ti.pending, gr)
	}
	return gr
}

// groupGlobs files the globs (without "**") by segment count, each keyed
// on its most selective literal segment: the position whose literal is
// shared by the fewest globs of the group, so /ns/*/sa/web-1 is keyed on
// "web-1" and /ns/team-1/sa/* on "team-1".
func (ti *tdIndex) groupGlobs() {
	type posLit struct {
		pos int
		lit string
	}
	freq := map[int]map[posLit]int{}
	for _, gr := range ti.pending {
		n := len(gr.g.segs)
		if freq[n] == nil {
			freq[n] = map[posLit]int{}
		}
		for i, s := range gr.g.segs {
			if !s.star && s.parts == nil {
				freq[n][posLit{i, s.lit}]++
			}
		}
	}
	for _, gr := range ti.pending {
		n := len(gr.g.segs)
		grp := ti.byLen[n]
		if grp == nil {
			grp = &globGroup{keyed: map[int]map[string][]*globRef{}}
			ti.byLen[n] = grp
		}
		best, bestN := -1, 0
		for i, s := range gr.g.segs {
			if s.star || s.parts != nil {
				continue
			}
			if c := freq[n][posLit{i, s.lit}]; best < 0 || c < bestN {
				best, bestN = i, c
			}
		}
		if best < 0 {
			grp.unkeyed = append(grp.unkeyed, gr)
			continue
		}
		byLit := grp.keyed[best]
		if byLit == nil {
			byLit = map[string][]*globRef{}
			grp.keyed[best] = byLit
			grp.positions = append(grp.positions, best)
			sort.Ints(grp.positions)
		}
		lit := gr.g.segs[best].lit
		byLit[lit] = append(byLit[lit], gr)
	}
	ti.pending = nil
}

// matchState carries the best match found so far through a decision.
type matchState struct {
	rules []*rule
	t     *Target
	now   time.Time
	best  int32
	near  int32
}

func (s *matchState) scanList(l []int32) {
	for _, idx := range l {
		if s.best >= 0 && idx >= s.best {
			return
		}
		r := s.rules[idx]
		if !r.matchTarget(s.t) {
			continue
		}
		if r.timed() && !r.active(s.now) {
			if s.near < 0 || idx < s.near {
				s.near = idx
			}
			continue
		}
		s.best = idx
		return
	}
}

func (s *matchState) scan(r *refs) {
	if r == nil {
		return
	}
	if r.bySvc != nil && s.t.Service != "" {
		s.scanList(r.bySvc[s.t.Service])
	}
	if r.byGRPC != nil && s.t.Protocol == GRPC {
		s.scanList(r.byGRPC[grpcService(s.t.Path)])
	}
	s.scanList(r.any)
}

func (s *matchState) scanGlob(gr *globRef, path string) {
	if s.best >= 0 && gr.first >= s.best {
		return
	}
	if gr.g.match(path) {
		s.scan(&gr.refs)
	}
}

// segmentCount counts the segments of a SPIFFE ID path ("/a/b" has 2).
func segmentCount(path string) int {
	return strings.Count(path, "/")
}

// segmentAt returns segment i of path ("/a/b/c", 1 → "b").
func segmentAt(path string, i int) string {
	for k := 0; k <= i; k++ {
		if len(path) == 0 {
			return ""
		}
		path = path[1:]
		j := strings.IndexByte(path, '/')
		if k == i {
			if j < 0 {
				return path
			}
			return path[:j]
		}
		if j < 0 {
			return ""
		}
		path = path[j:]
	}
	return ""
}

// Decide answers whether peer may call t at time now. It never fails:
// an unknown peer, an empty policy or a nil *Policy deny.
func (p *Policy) Decide(peer spiffeid.ID, t Target, now time.Time) Decision {
	d := Decision{Peer: peer, Target: t}
	if p == nil {
		d.why = whyNoRule
		if peer.IsZero() {
			d.why = whyNoPeer
		}
		return d
	}
	d.source = p.source
	if peer.IsZero() {
		d.why = whyNoPeer
		return p.fallback(d)
	}
	s := matchState{rules: p.rules, t: &t, now: now, best: -1, near: -1}
	// A Sigil agent or server is not a workload: only a rule naming its
	// exact ID allows it, and shadow mode does not let it through.
	reserved := IsReserved(peer)
	if ti := p.byTD[peer.TrustDomain().Name()]; ti != nil {
		if reserved {
			s.scan(ti.exact[peer.Path()])
		} else {
			s.scanTrustDomain(ti, peer.Path())
		}
	}
	if s.best >= 0 {
		d.Effect = Allow
		d.Rule = p.rules[s.best].name
		return d
	}
	d.why = whyNoRule
	if reserved {
		d.why = whyReserved
	}
	if s.near >= 0 {
		d.why = whyOutsideWindow
		d.near = p.rules[s.near]
	}
	if reserved {
		d.Effect = Deny
		return d
	}
	return p.fallback(d)
}

// scanTrustDomain scans every rule of one trust domain that may match
// path: any-ID rules, the exact ID, path prefixes and globs.
func (s *matchState) scanTrustDomain(ti *tdIndex, path string) {
	s.scan(&ti.all)
	if len(ti.exact) > 0 {
		s.scan(ti.exact[path])
	}
	if len(ti.prefix) > 0 {
		for q := path; q != ""; q = q[:strings.LastIndexByte(q, '/')] {
			s.scan(ti.prefix[q])
		}
	}
	if len(ti.byLen) > 0 {
		if grp := ti.byLen[segmentCount(path)]; grp != nil {
			for _, pos := range grp.positions {
				for _, gr := range grp.keyed[pos][segmentAt(path, pos)] {
					s.scanGlob(gr, path)
				}
			}
			for _, gr := range grp.unkeyed {
				s.scanGlob(gr, path)
			}
		}
	}
	for _, gr := range ti.restGlobs {
		s.scanGlob(gr, path)
	}
}

// fallback turns a would-be denial into ShadowDeny when the policy, or a
// shadow rule whose targets include the call, is in shadow mode.
func (p *Policy) fallback(d Decision) Decision {
	if p.mode == Shadow {
		d.Effect = ShadowDeny
		return d
	}
	for _, idx := range p.shadowRules {
		if r := p.rules[idx]; r.matchTarget(&d.Target) {
			d.Effect = ShadowDeny
			d.Rule = r.name
			return d
		}
	}
	d.Effect = Deny
	return d
}
