package server

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/health"
	"github.com/sigil-id/sigil/internal/clusterpb"
)

// Bounds of one agent report (Node.Report). A report past them is refused
// whole with InvalidArgument and the held state is unchanged.
const (
	MaxReportSVIDs    = 20000 // svids of one report
	MaxReportRemoved  = 20000 // removed entry IDs of one report
	maxReportSPIFFEID = 2048
	maxReportEntryID  = 128
	maxReportSerial   = 64
	maxReportError    = 256
)

// reportLimits bound what a reportStore holds. A report that would take
// the store past them is refused whole with ResourceExhausted.
type reportLimits struct {
	// MaxAgents is how many agents' reports are held.
	MaxAgents int
	// MaxAgentSVIDs is how many workload SVIDs one agent's merged
	// report holds (deltas add to it).
	MaxAgentSVIDs int
	// MaxAgentBytes bounds one agent's merged report (estimated as
	// reportBytes counts it).
	MaxAgentBytes int64
	// MaxBytes bounds every report held (same estimate).
	MaxBytes int64
	// MaxAge: a report not refreshed (a heartbeat counts) for longer is
	// dropped.
	MaxAge time.Duration
	// AnswerBytes is the size above which an AgentReports answer leaves
	// the remaining changed reports for the next call.
	AnswerBytes int
	// MinGap is the least time between two reports of one agent that
	// the store applies; a report sooner is refused with
	// ResourceExhausted before it is validated (an agent sends one every
	// few seconds at most; a compromised one must not make the server
	// merge 20,000-SVID reports in a loop). A full report answering
	// need_full is exempt.
	MinGap time.Duration
}

// defaultReportLimits: 100,000 agents; 20,000 SVIDs and 16 MiB per agent
// (a full report of 20,000 SVIDs of typical size, about 250 bytes each
// as counted, takes 5 MiB); 512 MiB in all (about two million SVIDs of
// typical size); reports older than 24 hours dropped; AgentReports
// answers of about 32 MiB (the cluster client's receive limit is 64 MiB).
func defaultReportLimits() reportLimits {
	return reportLimits{
		MaxAgents:     100000,
		MaxAgentSVIDs: MaxReportSVIDs,
		MaxAgentBytes: 16 << 20,
		MaxBytes:      512 << 20,
		MaxAge:        24 * time.Hour,
		AnswerBytes:   32 << 20,
		MinGap:        time.Second,
	}
}

// svidState is one SVID as an agent reported it (the fields of
// sigilv1.SVIDState, kept compact).
type svidState struct {
	entryID, spiffeID, serial, lastError string
	expiresAt, renewAt, lastAttempt      int64
	failures                             uint32
}

// svidOverhead estimates the memory of one svidState beyond its strings.
const svidOverhead = 128

func (v *svidState) bytes() int64 {
	return int64(svidOverhead + len(v.entryID) + len(v.spiffeID) + len(v.serial) + len(v.lastError))
}

func svidFromProto(p *sigilv1.SVIDState) svidState {
	return svidState{
		entryID: p.EntryId, spiffeID: p.SpiffeId, serial: p.Serial, lastError: p.LastError,
		expiresAt: p.ExpiresAt, renewAt: p.RenewAt, lastAttempt: p.LastAttempt, failures: p.Failures,
	}
}

func (v *svidState) proto() *sigilv1.SVIDState {
	return &sigilv1.SVIDState{
		EntryId: v.entryID, SpiffeId: v.spiffeID, Serial: v.serial, LastError: v.lastError,
		ExpiresAt: v.expiresAt, RenewAt: v.renewAt, LastAttempt: v.lastAttempt, Failures: v.failures,
	}
}

// unixTime is a report's Unix seconds as a time; zero stays the zero time.
func unixTime(sec int64) time.Time {
	if sec == 0 {
		return time.Time{}
	}
	return time.Unix(sec, 0).UTC()
}

func (v *svidState) health() health.SVID {
	return health.SVID{
		EntryID: v.entryID, SPIFFEID: v.spiffeID, Serial: v.serial,
		ExpiresAt: unixTime(v.expiresAt), RenewAt: unixTime(v.renewAt), LastAttempt: unixTime(v.lastAttempt),
		LastError: v.lastError, Failures: v.failures,
	}
}

// heldReport is the merged state of one agent: its last full report with
// every later delta applied.
type heldReport struct {
	seq        uint64
	receivedAt time.Time
	// gen is the store generation of the last change of content (a
	// heartbeat does not change it).
	gen         uint64
	agent       svidState
	svids       map[string]svidState // by entry ID
	held        uint32
	truncated   bool
	generatedAt int64
	bytes       int64
	// askedFull: the last answer to the agent was need_full, so its
	// next full report is not held to MinGap.
	askedFull bool
}

// reportBase estimates the memory of a heldReport beyond its SVIDs.
const reportBase = 256

// reportStore keeps the last report of each agent that reports to this
// server, in memory only (reports are never written to Raft). Deltas are
// applied when their base is the report held, and otherwise answered
// need_full. A generation counter, from a random base chosen when the
// store is made, numbers the changes of content, so that the leader can
// ask for the reports changed since its last call (list). It is safe for
// concurrent use.
type reportStore struct {
	lim reportLimits

	mu     sync.Mutex
	base   uint64 // the generation of the empty store
	gen    uint64 // the last generation handed out
	bytes  int64
	agents map[string]*heldReport
}

// newReportStore returns an empty store whose generations start at a
// random base (below 2^62, so that they never wrap).
func newReportStore(lim reportLimits) *reportStore {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("server: random generation base: %v", err)) // crypto/rand does not fail
	}
	base := binary.BigEndian.Uint64(b[:])>>2 + 1
	return &reportStore{lim: lim, base: base, gen: base, agents: map[string]*heldReport{}}
}

// validateReport checks the bounds of a report: the message limits of the
// contract (api/sigil/v1/node.proto), and the consistency of full and
// delta reports. It is pure.
func validateReport(r *sigilv1.AgentReport) error {
	switch {
	case r == nil:
		return fmt.Errorf("no report")
	case r.Seq == 0:
		return fmt.Errorf("seq: must be at least 1")
	case len(r.Svids) > MaxReportSVIDs:
		return fmt.Errorf("svids: %d, more than %d", len(r.Svids), MaxReportSVIDs)
	case len(r.Removed) > MaxReportRemoved:
		return fmt.Errorf("removed: %d, more than %d", len(r.Removed), MaxReportRemoved)
	}
	if r.Full {
		if r.BaseSeq != 0 {
			return fmt.Errorf("base_seq: must be 0 in a full report, got %d", r.BaseSeq)
		}
		if len(r.Removed) > 0 {
			return fmt.Errorf("removed: must be empty in a full report")
		}
	} else if r.BaseSeq >= r.Seq {
		return fmt.Errorf("seq %d: must be greater than base_seq %d", r.Seq, r.BaseSeq)
	}
	if r.AgentSvid != nil {
		if r.AgentSvid.EntryId != "" {
			return fmt.Errorf("agent_svid: entry_id must be empty")
		}
		if err := validateSVIDState(r.AgentSvid); err != nil {
			return fmt.Errorf("agent_svid: %w", err)
		}
	}
	seen := make(map[string]struct{}, len(r.Svids)+len(r.Removed))
	for i, v := range r.Svids {
		if v == nil || v.EntryId == "" {
			return fmt.Errorf("svids[%d]: entry_id is required", i)
		}
		if err := validateSVIDState(v); err != nil {
			return fmt.Errorf("svids[%d]: %w", i, err)
		}
		if _, dup := seen[v.EntryId]; dup {
			return fmt.Errorf("svids[%d]: entry %q named twice", i, shortString(v.EntryId))
		}
		seen[v.EntryId] = struct{}{}
	}
	for i, id := range r.Removed {
		if id == "" || len(id) > maxReportEntryID {
			return fmt.Errorf("removed[%d]: entry_id must be 1..%d bytes", i, maxReportEntryID)
		}
		if _, dup := seen[id]; dup {
			return fmt.Errorf("removed[%d]: entry %q named twice", i, shortString(id))
		}
		seen[id] = struct{}{}
	}
	return nil
}

func validateSVIDState(v *sigilv1.SVIDState) error {
	switch {
	case len(v.EntryId) > maxReportEntryID:
		return fmt.Errorf("entry_id: %d bytes, more than %d", len(v.EntryId), maxReportEntryID)
	case len(v.SpiffeId) > maxReportSPIFFEID:
		return fmt.Errorf("spiffe_id: %d bytes, more than %d", len(v.SpiffeId), maxReportSPIFFEID)
	case len(v.Serial) > maxReportSerial:
		return fmt.Errorf("serial: %d bytes, more than %d", len(v.Serial), maxReportSerial)
	case len(v.LastError) > maxReportError:
		return fmt.Errorf("last_error: %d bytes, more than %d", len(v.LastError), maxReportError)
	case v.ExpiresAt < 0, v.RenewAt < 0, v.LastAttempt < 0:
		return fmt.Errorf("times: must not be negative")
	}
	return nil
}

// shortString cuts a caller's string for an error message.
func shortString(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// apply records report r of agentID, received at now. A full report
// replaces what is held; a delta is applied if its base_seq is the seq
// held, else nothing changes and needFull is true. A report out of bounds
// is refused with an InvalidArgument status, one that would take the
// store past its limits with ResourceExhausted; either way nothing
// changes.
func (st *reportStore) apply(agentID string, r *sigilv1.AgentReport, now time.Time) (needFull bool, err error) {
	st.mu.Lock()
	if cur := st.agents[agentID]; cur != nil && now.Sub(cur.receivedAt) < st.lim.MinGap && !(r.GetFull() && cur.askedFull) {
		st.mu.Unlock()
		return false, status.Errorf(codes.ResourceExhausted, "report: sent %v after the previous one; at least %v apart", now.Sub(cur.receivedAt).Round(time.Millisecond), st.lim.MinGap)
	}
	st.mu.Unlock()
	if err := validateReport(r); err != nil {
		return false, status.Errorf(codes.InvalidArgument, "report: %v", err)
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	cur := st.agents[agentID]
	if r.Full {
		return false, st.applyFull(agentID, cur, r, now)
	}
	if cur == nil || cur.seq != r.BaseSeq {
		if cur != nil {
			cur.askedFull = true
		}
		return true, nil
	}
	return false, st.applyDelta(cur, r, now)
}

func (st *reportStore) applyFull(agentID string, cur *heldReport, r *sigilv1.AgentReport, now time.Time) error {
	next := &heldReport{
		seq: r.Seq, receivedAt: now, svids: make(map[string]svidState, len(r.Svids)),
		held: r.Held, truncated: r.Truncated, generatedAt: r.GeneratedAt, bytes: reportBase,
	}
	if r.AgentSvid != nil {
		next.agent = svidFromProto(r.AgentSvid)
	}
	next.bytes += next.agent.bytes()
	for _, p := range r.Svids {
		v := svidFromProto(p)
		next.svids[v.entryID] = v
		next.bytes += v.bytes()
	}
	var curBytes int64
	if cur != nil {
		curBytes = cur.bytes
	} else if len(st.agents) >= st.lim.MaxAgents {
		st.evictLocked(now, nil) // make room of the reports aged out, if any
	}
	if err := st.fits(cur == nil, len(next.svids), next.bytes, curBytes); err != nil {
		return err
	}
	if cur != nil && sameContent(cur, next) {
		next.gen = cur.gen
	} else {
		st.gen++
		next.gen = st.gen
	}
	st.bytes += next.bytes - curBytes
	st.agents[agentID] = next
	return nil
}

// fits checks the limits for a report of n SVIDs and size bytes replacing
// one of size old (newAgent: none held for the agent).
func (st *reportStore) fits(newAgent bool, n int, size, old int64) error {
	switch {
	case newAgent && len(st.agents) >= st.lim.MaxAgents:
		return status.Errorf(codes.ResourceExhausted, "report: this server holds the reports of %d agents, its limit", st.lim.MaxAgents)
	case n > st.lim.MaxAgentSVIDs:
		return status.Errorf(codes.ResourceExhausted, "report: %d SVIDs held, more than the %d an agent may report", n, st.lim.MaxAgentSVIDs)
	case size > st.lim.MaxAgentBytes:
		return status.Errorf(codes.ResourceExhausted, "report: about %d bytes, more than the %d an agent's report may take", size, st.lim.MaxAgentBytes)
	case st.bytes-old+size > st.lim.MaxBytes:
		return status.Errorf(codes.ResourceExhausted, "report: the reports held would take more than %d bytes", st.lim.MaxBytes)
	}
	return nil
}

func (st *reportStore) applyDelta(cur *heldReport, r *sigilv1.AgentReport, now time.Time) error {
	// Size the result before changing anything.
	n, size := len(cur.svids), cur.bytes
	changed := cur.held != r.Held || cur.truncated != r.Truncated
	var agent svidState
	if r.AgentSvid != nil {
		agent = svidFromProto(r.AgentSvid)
		size += agent.bytes() - cur.agent.bytes()
		changed = changed || agent != cur.agent
	}
	for _, p := range r.Svids {
		v := svidFromProto(p)
		old, ok := cur.svids[v.entryID]
		if ok {
			size -= old.bytes()
			changed = changed || old != v
		} else {
			n++
			changed = true
		}
		size += v.bytes()
	}
	for _, id := range r.Removed {
		if old, ok := cur.svids[id]; ok {
			n--
			size -= old.bytes()
			changed = true
		}
	}
	if err := st.fits(false, n, size, cur.bytes); err != nil {
		return err
	}
	if r.AgentSvid != nil {
		cur.agent = agent
	}
	for _, p := range r.Svids {
		cur.svids[p.EntryId] = svidFromProto(p)
	}
	for _, id := range r.Removed {
		delete(cur.svids, id)
	}
	cur.seq, cur.receivedAt = r.Seq, now
	cur.held, cur.truncated, cur.generatedAt = r.Held, r.Truncated, r.GeneratedAt
	st.bytes += size - cur.bytes
	cur.bytes = size
	if changed {
		st.gen++
		cur.gen = st.gen
	}
	return nil
}

// sameContent reports whether a and b hold the same SVID states, counts
// and flags (seq, times of receipt and generation aside).
func sameContent(a, b *heldReport) bool {
	if a.agent != b.agent || a.held != b.held || a.truncated != b.truncated || len(a.svids) != len(b.svids) {
		return false
	}
	for id, v := range a.svids {
		if w, ok := b.svids[id]; !ok || w != v {
			return false
		}
	}
	return true
}

// evict drops the reports not refreshed within MaxAge before now, and
// those of agents for which keep is false (deleted or banned agents);
// keep may be nil.
func (st *reportStore) evict(now time.Time, keep func(agentID string) bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.evictLocked(now, keep)
}

// evictLocked is evict with st.mu held.
func (st *reportStore) evictLocked(now time.Time, keep func(agentID string) bool) {
	for id, h := range st.agents {
		if now.Sub(h.receivedAt) > st.lim.MaxAge || (keep != nil && !keep(id)) {
			st.bytes -= h.bytes
			delete(st.agents, id)
		}
	}
}

// len is how many agents' reports are held.
func (st *reportStore) len() int {
	st.mu.Lock()
	defer st.mu.Unlock()
	return len(st.agents)
}

// toProto is h as a full report.
func (h *heldReport) toProto() *sigilv1.AgentReport {
	r := &sigilv1.AgentReport{
		Seq: h.seq, Full: true, Held: h.held, Truncated: h.truncated, GeneratedAt: h.generatedAt,
		Svids: make([]*sigilv1.SVIDState, 0, len(h.svids)),
	}
	if h.agent != (svidState{}) {
		r.AgentSvid = h.agent.proto()
	}
	for _, v := range h.sortedSVIDs() {
		r.Svids = append(r.Svids, v.proto())
	}
	return r
}

// sortedSVIDs are h's SVIDs by renew_at, then entry ID.
func (h *heldReport) sortedSVIDs() []*svidState {
	out := make([]*svidState, 0, len(h.svids))
	for _, v := range h.svids {
		out = append(out, &v)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].renewAt != out[j].renewAt {
			return out[i].renewAt < out[j].renewAt
		}
		return out[i].entryID < out[j].entryID
	})
	return out
}

// health is h as package health reads it, held by server.
func (h *heldReport) health(agentID, server string) health.AgentReport {
	r := health.AgentReport{
		AgentID: agentID, Server: server, ReceivedAt: h.receivedAt,
		AgentSVID: h.agent.health(), Held: int(h.held), Truncated: h.truncated,
		SVIDs: make([]health.SVID, 0, len(h.svids)),
	}
	for _, v := range h.sortedSVIDs() {
		r.SVIDs = append(r.SVIDs, v.health())
	}
	return r
}

// healthReports returns every report held, as package health reads them,
// server being this server's name.
func (st *reportStore) healthReports(server string) []health.AgentReport {
	st.mu.Lock()
	defer st.mu.Unlock()
	out := make([]health.AgentReport, 0, len(st.agents))
	for id, h := range st.agents {
		out = append(out, h.health(id, server))
	}
	return out
}

// list answers AgentReports: every agent held with its time of receipt,
// and the content of those changed after generation since (all when since
// is not a generation of this store: 0, or one of an earlier process).
// When the changed reports exceed AnswerBytes, the oldest changes come
// first and the answer's generation is the last one it covers entirely,
// so that the next call with it gets the rest; at least one changed
// report is always sent.
func (st *reportStore) list(since uint64) *clusterpb.AgentReportsResponse {
	st.mu.Lock()
	defer st.mu.Unlock()
	if since < st.base || since > st.gen {
		since = st.base
	}
	resp := &clusterpb.AgentReportsResponse{Generation: st.gen, Reports: make([]*clusterpb.HeldReport, 0, len(st.agents))}
	var changed []*clusterpb.HeldReport
	gens := map[*clusterpb.HeldReport]uint64{}
	for id, h := range st.agents {
		hr := &clusterpb.HeldReport{AgentId: id, ReceivedAt: h.receivedAt.Unix()}
		resp.Reports = append(resp.Reports, hr)
		if h.gen > since {
			changed = append(changed, hr)
			gens[hr] = h.gen
		}
	}
	sort.Slice(changed, func(i, j int) bool { return gens[changed[i]] < gens[changed[j]] })
	budget := st.lim.AnswerBytes
	for i, hr := range changed {
		h := st.agents[hr.AgentId]
		if i > 0 && int(h.bytes) > budget {
			resp.Generation = gens[hr] - 1
			break
		}
		budget -= int(h.bytes)
		hr.Report = h.toProto()
	}
	return resp
}
