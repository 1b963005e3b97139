package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	spiffewl "github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/internal/eventually"
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

// TestAgentServesFederatedBundles: federated bundles from the sync stream
// (in the full set, then as deltas) reach a go-spiffe workload whose entry
// federates with their trust domain, on FetchX509Context,
// FetchX509Bundles and FetchJWTBundles; a JWT-SVID of the federated trust
// domain validates for it, and stops validating when its entry no longer
// federates with that trust domain.
func TestAgentServesFederatedBundles(t *testing.T) {
	srv := newFakeServer(t)
	uid := "uid:" + strconv.Itoa(os.Getuid())
	p1, p2 := newTestCA(t, time.Now()), newTestCA(t, time.Now())
	pkey := newPartnerJWTKey(t)
	srv.setFederated("partner.test", fedProto(t, partnerTD, 1, []*testCA{p1}, pkey))
	srv.setFederated("other.test", fedProto(t, otherTD, 1, []*testCA{newTestCA(t, time.Now())}))
	srv.upsert(fedEntry("me", "me", 1, uid, partnerTD))
	cfg := srv.config(t, t.TempDir())
	r := startAgent(t, cfg)
	addr := spiffewl.WithAddr("unix://" + cfg.SocketPath)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	client, err := spiffewl.New(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	// From the full set: partner.test's bundle, not other.test's, which
	// the entry does not name.
	x509ctx, err := client.FetchX509Context(ctx)
	if err != nil {
		t.Fatalf("FetchX509Context: %v", err)
	}
	pb, err := x509ctx.Bundles.GetX509BundleForTrustDomain(partnerTD)
	if err != nil || !pb.HasX509Authority(p1.cert) {
		t.Fatalf("partner.test bundle: %v", err)
	}
	if x509ctx.Bundles.Has(otherTD) {
		t.Fatal("got other.test's bundle without federating with it")
	}
	if !x509ctx.Bundles.Has(testTD) {
		t.Fatal("own bundle missing")
	}
	jb, err := client.FetchJWTBundles(ctx)
	if err != nil {
		t.Fatalf("FetchJWTBundles: %v", err)
	}
	if b, err := jb.GetJWTBundleForTrustDomain(partnerTD); err != nil || !b.HasJWTAuthority(pkey.kid) {
		t.Fatalf("partner.test JWT bundle: %v", err)
	}

	// A partner's JWT-SVID validates.
	tok, _, err := pkey.signer.SignJWTSVID(ctx, ca.JWTSVIDParams{SPIFFEID: spiffeid.RequireFromPath(partnerTD, "/client"), Audience: []string{"me"}})
	if err != nil {
		t.Fatal(err)
	}
	svid, err := client.ValidateJWTSVID(ctx, tok, "me")
	if err != nil {
		t.Fatalf("ValidateJWTSVID of a partner token: %v", err)
	}
	if svid.ID.String() != "spiffe://partner.test/client" {
		t.Fatalf("validated %v", svid.ID)
	}

	// A rotation pushed as a delta reaches the workload.
	srv.setFederated("partner.test", fedProto(t, partnerTD, 2, []*testCA{p1, p2}, pkey))
	eventually.NoError(t, 10*time.Second, func() error {
		bs, err := client.FetchX509Bundles(ctx)
		if err != nil {
			return err
		}
		if b, err := bs.GetX509BundleForTrustDomain(partnerTD); err != nil || !b.HasX509Authority(p2.cert) {
			return fmt.Errorf("partner.test bundle without the new CA (%v)", err)
		}
		return nil
	})

	// The entry stops federating with partner.test: the bundle and the
	// validation go.
	srv.upsert(entry("me", "me", 1, uid))
	eventually.NoError(t, 10*time.Second, func() error {
		if _, err := client.ValidateJWTSVID(ctx, tok, "me"); err == nil {
			return errors.New("partner token still validates")
		}
		bs, err := client.FetchX509Bundles(ctx)
		if err != nil {
			return err
		}
		if bs.Has(partnerTD) {
			return errors.New("partner.test bundle still served")
		}
		return nil
	})

	// Federating again, then the server removes the bundle.
	srv.upsert(fedEntry("me", "me", 1, uid, partnerTD))
	eventually.NoError(t, 10*time.Second, func() error {
		_, err := client.ValidateJWTSVID(ctx, tok, "me")
		return err
	})
	srv.setFederated("partner.test", nil)
	eventually.NoError(t, 10*time.Second, func() error {
		if _, err := client.ValidateJWTSVID(ctx, tok, "me"); err == nil {
			return errors.New("partner token validates after the bundle was removed")
		}
		if got := r.cache.federatedBundles(); got[partnerTD] != nil {
			return errors.New("agent still holds partner.test's bundle")
		}
		return nil
	})

	// A new stream's full set (reset) no longer holds other.test: the
	// agent drops it.
	if r.cache.federatedBundles()[otherTD] == nil {
		t.Fatal("other.test's bundle missing before the reset")
	}
	_, _, syncs := srv.counts()
	srv.mu.Lock()
	delete(srv.federated, "other.test")
	srv.mu.Unlock()
	srv.cutStreams()
	eventually.NoError(t, 15*time.Second, func() error {
		if _, _, n := srv.counts(); n == syncs {
			return errors.New("no new sync stream yet")
		}
		if got := r.cache.federatedBundles(); len(got) != 0 {
			return fmt.Errorf("agent holds %d federated bundles after the reset", len(got))
		}
		return nil
	})
	r.stop(t)
}

// newPartnerJWTKey is a JWT signing key of partner.test on the wall
// clock.
func newPartnerJWTKey(t *testing.T) *testJWTKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	kid, err := ca.KeyIDOf(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ca.NewJWTSigner(partnerTD, kid, key, time.Now().Add(24*time.Hour), time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &testJWTKey{kid: kid, key: key, signer: s}
}
