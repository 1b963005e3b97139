package server

import (
	"context"

	"github.com/sigil-id/sigil/health"
)

// healthView is the cluster-wide view the leader evaluates: the latest
// report of each agent across all servers, each server's failure
// counters, and the members whose reports could not be gathered.
type healthView struct {
	// Reports: one per agent, the most recently received across servers.
	Reports []health.AgentReport
	// Counters: one per server reached (this one included).
	Counters []serverCounters
	// Unreachable: member name → why its reports could not be gathered.
	Unreachable map[string]error
}

// serverCounters are one server process's cumulative failure counters.
type serverCounters struct {
	Server, Instance string
	Failures         health.Failures
}

// gatherHealth builds the cluster-wide view: this server's reports and
// counters, and those of every other member, pulled over the cluster API
// (incrementally: a member sends only the reports that changed since the
// last gather). It is called by the leader's evaluation loop only, never
// concurrently, and bounds each member's call by ctx.
func (s *Server) gatherHealth(ctx context.Context) healthView {
	panic("server: gatherHealth not implemented yet")
}
