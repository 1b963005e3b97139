package server

import (
	"github.com/sigil-id/sigil/audit"
)

// audit emits ev through the server's audit sink: Config.AuditSink, or
// by default the zap sink on the server's logger, so that audit records
// keep their place in the log.
func (s *Server) audit(ev audit.Event) {
	s.auditSink.Audit(ev)
}
