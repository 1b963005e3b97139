package server

import (
	"testing"

	"github.com/sigil-id/sigil/agent"
)

// TestAgentBatchFitsServerLimit: the largest batch an agent may be
// configured to send is one the server accepts (an agent configured with
// a larger sync_batch_size used to have every batch refused).
func TestAgentBatchFitsServerLimit(t *testing.T) {
	if agent.MaxSyncBatchSize > MaxBatchSize {
		t.Fatalf("agent.MaxSyncBatchSize %d > server.MaxBatchSize %d", agent.MaxSyncBatchSize, MaxBatchSize)
	}
}
