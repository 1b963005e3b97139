package server

import (
	"context"
	"time"

	"github.com/sigil-id/sigil/internal/storepb"
)

// applyFaultFunc is the type of Server.applyFault, a test's fault
// injected at the apply seam.
type applyFaultFunc func(ctx context.Context, cmd *storepb.Command) error

// apply commits a command to the replicated store and returns its result.
// Every write of the server goes through here. On a follower the command
// is forwarded to the leader (see cluster.Cluster.Apply); a nil error means it is
// committed, and applied on this server too, so the caller reads its own
// write.
func (s *Server) apply(ctx context.Context, cmd *storepb.Command) (*storepb.CommandResult, error) {
	if s.applyFault != nil {
		if err := s.applyFault(ctx, cmd); err != nil {
			return nil, err
		}
	}
	if s.cluster != nil {
		return s.cluster.Apply(ctx, cmd)
	}
	start := time.Now()
	res, err := s.store.Apply(ctx, cmd)
	s.metrics.ObserveCommit(time.Since(start), err)
	return res, err
}
