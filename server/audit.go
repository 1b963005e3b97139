package server

import (
	"github.com/sigil-id/sigil/audit"
)

// audit emits ev through the server's audit sink: today the zap sink on
// the server's logger, so audit records keep their place in the log.
// Events take the form of package audit; subscribing another sink
// (alerts, flow logs) changes only this method.
func (s *Server) audit(ev audit.Event) {
	audit.NewZap(s.log).Audit(ev)
}
