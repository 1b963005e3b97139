package server

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/health"
	"github.com/sigil-id/sigil/internal/clusterpb"
	"github.com/sigil-id/sigil/raftstore"
)

// healthView is the cluster-wide view the leader evaluates: the latest
// report of each agent across all servers, each server's failure
// counters and key manager state, and the members whose reports could not
// be gathered.
type healthView struct {
	// Reports: one per agent, the most recently received across servers.
	Reports []health.AgentReport
	// Counters: one per server reached (this one included).
	Counters []serverCounters
	// Unreachable: member name → why its reports could not be gathered.
	Unreachable map[string]error
	// Servers: the key manager state of each server, this one included;
	// a member not reached now is given as at its last answer.
	Servers []health.Server
}

// serverCounters are one server process's cumulative failure counters.
type serverCounters struct {
	Server, Instance string
	Failures         health.Failures
}

// gatherTimeout bounds the AgentReports call to one member.
const gatherTimeout = 2 * time.Second

// gatherCache holds each member's last AgentReports answer, so that the
// next call asks only for the reports changed since.
type gatherCache struct {
	mu      sync.Mutex
	members map[string]*memberReports // by member name
}

// memberReports is what the leader knows of one member's reports.
type memberReports struct {
	// instance and generation of the member's last answer.
	instance   string
	generation uint64
	// reports: the member's agents whose content is known, by agent ID.
	reports map[string]health.AgentReport
	// keyManager: the member's key manager state at its last answer.
	keyManager health.Server
}

// gatherHealth builds the cluster-wide view: this server's reports and
// counters, and those of every other member, pulled over the cluster API
// (incrementally: a member sends only the reports that changed since the
// last gather). It is called by the leader's evaluation loop only, never
// concurrently, and bounds each member's call by ctx and gatherTimeout;
// members are asked concurrently. A member that cannot be reached is in
// Unreachable, and the reports it held at its last answer stay in the
// view (the latest known state of those agents). A member of an earlier
// version (AgentReports unimplemented) is reached and holds no reports.
func (s *Server) gatherHealth(ctx context.Context) healthView {
	s.evictReports()
	view := healthView{Unreachable: map[string]error{}}
	latest := map[string]health.AgentReport{}
	add := func(r health.AgentReport) {
		if cur, ok := latest[r.AgentID]; !ok || r.ReceivedAt.After(cur.ReceivedAt) {
			latest[r.AgentID] = r
		}
	}
	for _, r := range s.reports.healthReports(s.cfg.NodeName) {
		add(r)
	}
	view.Counters = append(view.Counters, serverCounters{Server: s.cfg.NodeName, Instance: s.instance, Failures: s.failures()})
	view.Servers = append(view.Servers, s.healthServer())

	var members []raftstore.Member
	if s.cluster != nil {
		var err error
		if members, err = s.store.Members(); err != nil {
			view.Unreachable[s.cfg.NodeName] = fmt.Errorf("server: reading the cluster members: %w", err)
		}
	}
	type result struct {
		name     string
		reports  map[string]health.AgentReport
		counters *serverCounters
		keys     *health.Server
		err      error
	}
	s.gather.mu.Lock()
	if s.gather.members == nil {
		s.gather.members = map[string]*memberReports{}
	}
	cached := make(map[string]*memberReports, len(members))
	for _, m := range members {
		if m.ID != s.cfg.NodeName {
			cached[m.ID] = s.gather.members[m.ID]
		}
	}
	s.gather.mu.Unlock()

	results := make(chan result, len(cached))
	var wg sync.WaitGroup
	for _, m := range members {
		if m.ID == s.cfg.NodeName {
			continue
		}
		wg.Add(1)
		go func(m raftstore.Member, prev *memberReports) {
			defer wg.Done()
			next, counters, err := s.gatherMember(ctx, m, prev)
			res := result{name: m.ID, counters: counters, err: err}
			if next != nil {
				res.reports, res.keys = next.reports, &next.keyManager
				s.gather.mu.Lock()
				s.gather.members[m.ID] = next
				s.gather.mu.Unlock()
			} else if prev != nil {
				res.reports, res.keys = prev.reports, &prev.keyManager
			}
			results <- res
		}(m, cached[m.ID])
	}
	wg.Wait()
	close(results)
	for res := range results {
		if res.err != nil {
			view.Unreachable[res.name] = res.err
		}
		if res.counters != nil {
			view.Counters = append(view.Counters, *res.counters)
		}
		if res.keys != nil && res.keys.Name != "" {
			view.Servers = append(view.Servers, *res.keys)
		}
		for _, r := range res.reports {
			add(r)
		}
	}
	// Forget the members that left.
	s.gather.mu.Lock()
	for name := range s.gather.members {
		if _, ok := cached[name]; !ok {
			delete(s.gather.members, name)
		}
	}
	s.gather.mu.Unlock()

	view.Reports = make([]health.AgentReport, 0, len(latest))
	for _, r := range latest {
		view.Reports = append(view.Reports, r)
	}
	return view
}

// gatherMember asks member m for the reports changed since its last
// answer prev (nil: none) and returns what the leader then knows of its
// reports (nil when unchanged: an earlier version's member) and its
// counters.
func (s *Server) gatherMember(ctx context.Context, m raftstore.Member, prev *memberReports) (*memberReports, *serverCounters, error) {
	cc, err := s.cluster.Conn(m.Address)
	if err != nil {
		return nil, nil, fmt.Errorf("server: agent reports from %s: %w", m.Address, err)
	}
	var since uint64
	if prev != nil {
		since = prev.generation
	}
	cctx, cancel := context.WithTimeout(ctx, gatherTimeout)
	defer cancel()
	resp, err := clusterpb.NewClusterClient(cc).AgentReports(cctx, &clusterpb.AgentReportsRequest{Since: since})
	switch {
	case status.Code(err) == codes.Unimplemented:
		return &memberReports{reports: map[string]health.AgentReport{}, keyManager: health.Server{Name: m.ID}}, &serverCounters{Server: m.ID}, nil
	case err != nil:
		return nil, nil, fmt.Errorf("server: agent reports from %s: %w", m.Address, err)
	}
	if prev == nil || prev.instance != resp.Instance {
		prev = &memberReports{reports: map[string]health.AgentReport{}}
	}
	next := &memberReports{instance: resp.Instance, generation: resp.Generation, reports: make(map[string]health.AgentReport, len(resp.Reports)),
		keyManager: health.Server{Name: m.ID, KeyManagerError: cutUTF8(resp.KeyManagerError, maxKeyErrorLen),
			KeyManagerFailingSince: unixTime(resp.KeyManagerFailingSince),
			UpstreamError:          cutUTF8(resp.UpstreamError, maxKeyErrorLen), UpstreamFailingSince: unixTime(resp.UpstreamFailingSince)}}
	for _, hr := range resp.Reports {
		received := unixTime(hr.ReceivedAt)
		if hr.Report != nil {
			if validateReport(hr.Report) != nil || !hr.Report.Full {
				continue // a member's bug: that agent's report is left out
			}
			next.reports[hr.AgentId] = reportToHealth(hr.AgentId, m.ID, received, hr.Report)
			continue
		}
		if r, ok := prev.reports[hr.AgentId]; ok {
			r.ReceivedAt = received
			next.reports[hr.AgentId] = r
		}
		// Otherwise its content comes with a later answer.
	}
	counters := &serverCounters{Server: m.ID, Instance: resp.Instance,
		Failures: health.Failures{Attestation: resp.AttestationFailures, Signing: resp.SigningFailures}}
	return next, counters, nil
}

// reportToHealth is the full report r of agentID, held by server and last
// received at received, as package health reads it.
func reportToHealth(agentID, server string, received time.Time, r *sigilv1.AgentReport) health.AgentReport {
	out := health.AgentReport{
		AgentID: agentID, Server: server, ReceivedAt: received,
		Held: int(r.Held), Truncated: r.Truncated, SVIDs: make([]health.SVID, 0, len(r.Svids)),
	}
	if r.AgentSvid != nil {
		v := svidFromProto(r.AgentSvid)
		out.AgentSVID = v.health()
	}
	for _, p := range r.Svids {
		v := svidFromProto(p)
		out.SVIDs = append(out.SVIDs, v.health())
	}
	return out
}
