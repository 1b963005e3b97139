package server

import (
	"context"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// apply commits a command to the replicated store and returns its result.
// Every write of the server goes through here.
func (s *Server) apply(ctx context.Context, cmd *sigilv1.Command) (*sigilv1.CommandResult, error) {
	return s.store.Apply(ctx, cmd)
}
