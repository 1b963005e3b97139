package agent

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	spiffewl "github.com/spiffe/go-spiffe/v2/workloadapi"
)

// TestAgentServesWorkloadAPI fetches an SVID through the Workload API
// socket with go-spiffe's client, as a real workload would.
func TestAgentServesWorkloadAPI(t *testing.T) {
	srv := newFakeServer(t)
	srv.upsert(entry("me", "me", 1, "uid:"+strconv.Itoa(os.Getuid())))
	cfg := srv.config(t, t.TempDir())
	r := startAgent(t, cfg)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	svid, err := spiffewl.FetchX509SVID(ctx, spiffewl.WithAddr("unix://"+cfg.SocketPath))
	if err != nil {
		t.Fatalf("FetchX509SVID: %v", err)
	}
	if svid.ID.String() != "spiffe://example.org/me" {
		t.Fatalf("got SVID for %s", svid.ID)
	}
	bundles, err := spiffewl.FetchX509Bundles(ctx, spiffewl.WithAddr("unix://"+cfg.SocketPath))
	if err != nil {
		t.Fatalf("FetchX509Bundles: %v", err)
	}
	b, err := bundles.GetX509BundleForTrustDomain(testTD)
	if err != nil || !b.HasX509Authority(srv.ca.cert) {
		t.Fatalf("bundle: %v", err)
	}
	r.stop(t)
}
