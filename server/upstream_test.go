package server

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/ca"
	upmemory "github.com/sigil-id/sigil/ca/upstream/memory"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/health"
	"github.com/sigil-id/sigil/internal/eventually"
)

// TestServerWithUpstreamAuthority: a server whose CA certificate an
// upstream authority signs. The bundle that agents and workloads get holds
// the upstream root alone (the server's CA is listed as an intermediate),
// agents attest and get SVIDs over TLS whose chains carry the intermediate
// both ways, SVIDs verify against the root alone, and the leader mirrors
// the upstream's roots into the bundle.
func TestServerWithUpstreamAuthority(t *testing.T) {
	// The real clock: the test's TLS clients check certificates on it.
	clk := clock.New()
	up, err := upmemory.New(clk, upmemory.Options{Intermediate: true})
	if err != nil {
		t.Fatal(err)
	}
	h := startServerConfig(t, clk, nil, func(c *Config) { c.UpstreamAuthority = up })
	srv := h.srv

	pb, err := srv.store.Read().Bundle(testTD.Name())
	if err != nil {
		t.Fatal(err)
	}
	if len(pb.X509Authorities) != 1 || !bytes.Equal(pb.X509Authorities[0].Certificate, up.Root().Raw) || !pb.X509Authorities[0].Upstream {
		t.Fatalf("bundle anchors: %d, want the upstream root alone", len(pb.X509Authorities))
	}
	if len(pb.X509Intermediates) != 1 || pb.X509Intermediates[0].ServerId != "s1" || !pb.X509Intermediates[0].Intermediate {
		t.Fatalf("bundle intermediates: %+v", pb.X509Intermediates)
	}
	if !srv.x509CA().Upstream() || len(srv.x509CA().Chain()) != 2 {
		t.Fatalf("server CA chain of %d, want CA + upstream intermediate", len(srv.x509CA().Chain()))
	}

	// Attestation and issuance over the node API: the agent verifies the
	// server's chain, the server the agent's, both to the root alone.
	a := h.attest()
	if len(a.chain) != 3 {
		t.Fatalf("agent SVID chain of %d, want leaf, server CA, upstream intermediate", len(a.chain))
	}
	e := h.createEntry("spiffe://example.org/web", a.id, "unix:uid:1000")
	wkey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	resp, err := a.node.BatchNewX509SVID(context.Background(), &sigilv1.BatchNewX509SVIDRequest{Requests: []*sigilv1.X509SVIDRequest{
		{EntryId: e.Id, Csr: newCSR(t, wkey, "w")},
	}})
	if err != nil || resp.Results[0].Status.Code != 0 {
		t.Fatalf("issue: %v %v", err, resp.GetResults())
	}
	var chain []*x509.Certificate
	for _, der := range resp.Results[0].Chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, c)
	}
	root := x509bundle.FromX509Authorities(testTD, []*x509.Certificate{up.Root()})
	id, _, err := x509svid.Verify(chain, root, x509svid.WithTime(clk.Now()))
	if err != nil || id.String() != "spiffe://example.org/web" {
		t.Fatalf("workload SVID against the upstream root: %v", err)
	}

	// The upstream adds a root (its own rotation): the leader mirrors it.
	other, err := upmemory.New(clk, upmemory.Options{})
	if err != nil {
		t.Fatal(err)
	}
	up.AddRoot(other.Root())
	srv.kickRotation()
	eventually.True(t, 30*time.Second, func() bool {
		pb, err := srv.store.Read().Bundle(testTD.Name())
		return err == nil && len(pb.X509Authorities) == 2
	}, "the upstream's new root did not reach the bundle")
}

// TestUpstreamFailingAlert: an upstream authority that fails when the next
// CA key is due delays it (the active key keeps signing), raises
// SigilUpstreamAuthorityFailing after upstream_failing_after with the
// error, and the alert resolves once a CA certificate is signed.
func TestUpstreamFailingAlert(t *testing.T) {
	clk := clock.NewFake(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	up, err := upmemory.New(clk, upmemory.Options{})
	if err != nil {
		t.Fatal(err)
	}
	h := startServerConfig(t, clk, nil, func(c *Config) {
		c.UpstreamAuthority = up
		c.EvaluateInterval = testEvalInterval
	})
	srv := h.srv
	eventually.True(t, 30*time.Second, func() bool { return srv.store.IsLeader() }, "no leader")
	act, ok := srv.auth.x509.Active()
	if !ok {
		t.Fatal("no active CA")
	}
	up.SetFailure(errors.New("upstream PKI unreachable"))
	clk.Set(ca.PrepareAt(act))
	srv.kickRotation()
	eventually.True(t, 30*time.Second, func() bool { s, _ := srv.upstream.state(); return !s.IsZero() }, "upstream failure not recorded")
	if gaugeSum(t, srv, "sigil_server_upstream_authority_failing") != 1 {
		t.Fatal("gauge does not show the failing upstream")
	}
	// The active key still signs.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := srv.x509CA().SignX509SVID(context.Background(), ca.X509SVIDParams{PublicKey: key.Public(), SPIFFEID: spiffeid.RequireFromPath(testTD, "/w")}); err != nil {
		t.Fatalf("signing while the upstream is down: %v", err)
	}
	k := health.KeyUpstreamFailing + "s1"
	untilEval(t, clk, "SigilUpstreamAuthorityFailing", func() bool { return raftAlerts(srv)[k] != nil })
	r := raftAlerts(srv)[k]
	if r.Name != health.NameUpstreamFailing || !strings.Contains(r.Details["last_error"], "upstream PKI unreachable") {
		t.Fatalf("alert = %+v", r)
	}
	if n := len(srv.auth.x509.Slots()); n != 1 {
		t.Fatalf("%d slots while the upstream fails, want the active one", n)
	}

	up.SetFailure(nil)
	untilEval(t, clk, "resolution", func() bool { return raftAlerts(srv)[k] == nil })
	if s := srv.auth.x509.Slots(); len(s) != 2 || !s[1].Upstream() {
		t.Fatalf("no successor signed upstream after recovery: %+v", s)
	}
}
