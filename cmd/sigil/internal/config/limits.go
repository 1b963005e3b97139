package config

import (
	"fmt"
	"time"

	"github.com/sigil-id/sigil/registration"
)

// validateLifetimes refuses SVID lifetimes shorter than
// registration.MinSVIDTTL (agents could not renew such SVIDs in time) and
// a join token lifetime outside registration's bounds. Zero means the
// server's default and is always accepted.
func (s *Server) validateLifetimes() error {
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"x509_svid_ttl", s.X509SVIDTTL},
		{"agent_svid_ttl", s.AgentSVIDTTL},
		{"jwt_svid_ttl", s.JWTSVIDTTL},
	} {
		if d.v != 0 && d.v < registration.MinSVIDTTL {
			return fmt.Errorf("%s %v is too short: the minimum is %v, below which agents cannot renew SVIDs in time", d.name, d.v, registration.MinSVIDTTL)
		}
	}
	if s.JoinTokenTTL != 0 {
		if err := registration.CheckJoinTokenTTL(s.JoinTokenTTL); err != nil {
			return fmt.Errorf("join_token_ttl %v out of range: want %v to %v", s.JoinTokenTTL, registration.MinJoinTokenTTL, registration.MaxJoinTokenTTL)
		}
	}
	return nil
}
