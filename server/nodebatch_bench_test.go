package server

import (
	"context"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// BenchmarkNodeBatchMintHandler calls the node API's BatchNewX509SVID
// handler of a real server directly, without gRPC, with batches of 500
// CSRs for 500 entries of one agent (the agent's batch size): the
// server's own work per SVID (CSR check, authorization, signature, audit,
// metrics), with its allocations per SVID (B/op and allocs/op are per
// batch: divide by 500).
func BenchmarkNodeBatchMintHandler(b *testing.B) {
	h := startServerConfig(b, nil, nil, func(c *Config) { c.Logger = zap.NewNop() })
	a := h.attest()
	const n = 500
	entries := createThroughAdmin(b, h, a.id, 0, n)
	req := &sigilv1.BatchNewX509SVIDRequest{}
	for _, id := range entries {
		req.Requests = append(req.Requests, &sigilv1.X509SVIDRequest{EntryId: id, Csr: newCSR(b, mustKey(b), "")})
	}
	api := &nodeAPI{s: h.srv}
	ctx := context.WithValue(context.Background(), agentKey{}, spiffeid.RequireFromString(a.id))
	b.ReportAllocs()
	for b.Loop() {
		resp, err := api.BatchNewX509SVID(ctx, req)
		if err != nil || len(resp.Results) != n || resp.Results[n-1].Status.GetCode() != 0 {
			b.Fatalf("batch: %v", err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*n), "µs/SVID")
}
