package integration

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/sigil-id/sigil/internal/eventually"
)

// TestRotationUnderTraffic: with a 40s CA and 8s SVIDs, two go-spiffe
// workloads exchange mTLS requests (a new handshake each) through at least
// three CA rotations and many SVID rotations without a single failure; at
// the end every SVID in use was signed by the active key, and the keys
// that were retired and have expired are gone from the bundle.
func TestRotationUnderTraffic(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	root := t.TempDir()
	s := newServerWith(t, filepath.Join(root, "server"), `
  ca_ttl               = "40s"
  x509_svid_ttl        = "8s"
  agent_svid_ttl       = "15s"
  jwt_svid_ttl         = "10s"
  ca_propagation_delay = "3s"`)
	s.start()
	a := newAgent(t, s, filepath.Join(root, "agent"))
	a.start()
	lp := startLoopPair(t, s, a, root)

	var actives []string
	seen := map[string]bool{}
	notAfter := map[string]int64{}
	deadline := time.Now().Add(150 * time.Second)
	for len(actives) < 4 && time.Now().Before(deadline) {
		v := s.authorities()
		for _, sl := range v.Slots {
			notAfter[sl.ID], _ = strconv.ParseInt(sl.NotAfter, 10, 64)
		}
		if id := v.active("x509"); id != "" && !seen[id] {
			seen[id] = true
			actives = append(actives, id)
			t.Logf("active CA key %d: %s", len(actives), id)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if len(actives) < 4 {
		t.Fatalf("saw %d active CA keys within the deadline, want 4 (three rotations)", len(actives))
	}
	// Wait until the second key, retired by the third, has expired: then
	// it must have left the bundle.
	if d := time.Until(time.Unix(notAfter[actives[1]], 0).Add(1500 * time.Millisecond)); d > 0 {
		t.Logf("waiting %v for the second key to expire", d.Round(time.Second))
		time.Sleep(d)
	}

	// Within one SVID lifetime both workloads hold SVIDs of the active key.
	var web, client loopStatus
	var v authorityView
	err := eventually.Wait(15*time.Second, func() error {
		v = s.authorities()
		web, client = lp.status()
		if act := v.active("x509"); web.SVIDAuthority != act || client.SVIDAuthority != act {
			return errors.New("workloads not on the active key")
		}
		return nil
	})
	if err != nil {
		t.Errorf("workloads hold SVIDs of %s and %s, active key is %s", web.SVIDAuthority, client.SVIDAuthority, v.active("x509"))
	}
	// Retired keys that expired have left the bundle; nothing expired is
	// in it.
	for _, id := range actives[:2] {
		if v.inBundle("x509", id) {
			t.Errorf("retired and expired CA key %s is still in the bundle", id)
		}
	}
	now := time.Now().Unix()
	for _, b := range v.Bundle {
		if na, _ := strconv.ParseInt(b.NotAfter, 10, 64); na <= now {
			t.Errorf("expired %s authority %s is still in the bundle", b.Kind, b.ID)
		}
	}

	web, client = lp.stop()
	lp.checkNoFailures(web, client)
	t.Logf("web: %d requests, %d SVIDs from %d CA keys; client: %d requests, %d SVIDs from %d CA keys",
		web.Requests, web.SVIDsSeen, len(web.Authorities), client.Requests, client.SVIDsSeen, len(client.Authorities))
	if web.SVIDsSeen < 8 || client.SVIDsSeen < 8 {
		t.Errorf("too few SVID rotations: web %d, client %d", web.SVIDsSeen, client.SVIDsSeen)
	}
	if len(client.Authorities) < 3 {
		t.Errorf("client SVIDs came from %d CA keys, want at least 3", len(client.Authorities))
	}
	if client.Requests < 500 {
		t.Errorf("only %d requests", client.Requests)
	}
	if strings.Contains(a.logText(), "SVID expired before it could be renewed") {
		t.Error("an SVID expired in the agent before it was renewed")
	}
}

// TestTaintAndRevoke: an operator prepares and activates a new CA key and
// taints the old one; every workload then holds an SVID from the new key
// within a sync interval, no request fails, and the old key can be
// revoked. Revoking the active or an untainted key is refused.
func TestTaintAndRevoke(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	root := t.TempDir()
	s := newServerWith(t, filepath.Join(root, "server"), `
  ca_ttl               = "10m"
  x509_svid_ttl        = "2m"
  agent_svid_ttl       = "5m"
  ca_propagation_delay = "2s"`)
	s.start()
	a := newAgent(t, s, filepath.Join(root, "agent"))
	a.start()
	lp := startLoopPair(t, s, a, root)

	old := s.authorities().active("x509")
	if out, err := s.cliErr("authority", "taint", "-id", old); err == nil || !strings.Contains(out, "active key") {
		t.Fatalf("tainting the active key: %v %s", err, out)
	}
	if out, err := s.cliErr("authority", "revoke", "-id", old); err == nil || !strings.Contains(out, "active key") {
		t.Fatalf("revoking the active key: %v %s", err, out)
	}
	out := s.cli("authority", "prepare")
	if !strings.Contains(out, "Prepared x509 key") {
		t.Fatalf("prepare: %s", out)
	}
	time.Sleep(2500 * time.Millisecond) // the propagation delay
	out = s.cli("authority", "activate")
	if strings.Contains(out, "Warning") {
		t.Errorf("activate after the propagation delay warned: %s", out)
	}
	cur := s.authorities().active("x509")
	if cur == old || cur == "" {
		t.Fatalf("active key %q after activation, old %q", cur, old)
	}
	if out, err := s.cliErr("authority", "revoke", "-id", old); err == nil || !strings.Contains(out, "not tainted") {
		t.Fatalf("revoking an untainted key: %v %s", err, out)
	}
	s.cli("authority", "taint", "-id", old)
	tainted := time.Now()
	var web, client loopStatus
	eventually.NoError(t, 5*time.Second, func() error {
		if web, client = lp.status(); web.SVIDAuthority != cur || client.SVIDAuthority != cur {
			return fmt.Errorf("after the taint workloads hold SVIDs of %s and %s, want %s", web.SVIDAuthority, client.SVIDAuthority, cur)
		}
		return nil
	})
	t.Logf("every workload moved off the tainted key in %v", time.Since(tainted).Round(time.Millisecond))
	// The agent's own SVID moved too; revoke the old key and keep going.
	time.Sleep(time.Second)
	out = s.cli("authority", "revoke", "-id", old)
	if !strings.Contains(out, "Revoked") {
		t.Fatalf("revoke: %s", out)
	}
	if v := s.authorities(); v.inBundle("x509", old) {
		t.Fatal("revoked key still in the bundle")
	}
	before, _ := lp.status()
	time.Sleep(3 * time.Second)
	web, client = lp.stop()
	if web.Requests <= before.Requests {
		t.Errorf("no requests after the revocation")
	}
	lp.checkNoFailures(web, client)
	if !strings.Contains(a.logText(), "tainted") {
		t.Error("agent log does not mention the taint")
	}
}

// TestOfflineAgent: with every server stopped the agent keeps serving the
// SVIDs it has until they expire, and a workload gets a fresh one within
// seconds of a server's return.
func TestOfflineAgent(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	root := t.TempDir()
	s := newServerWith(t, filepath.Join(root, "server"), `
  ca_ttl         = "10m"
  x509_svid_ttl  = "10s"
  agent_svid_ttl = "2m"`)
	s.start()
	a := newAgent(t, s, filepath.Join(root, "agent"))
	a.start()
	want := "spiffe://" + trustDomain + "/it/offline"
	createEntry(t, s, want, a.id, uidSelector(t))
	fetchID(t, a.socket, want)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	client, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+a.socket))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	// Stop the server just after a renewal, so the SVID has most of its
	// life ahead.
	eventually.NoError(t, 60*time.Second, func() error {
		xc, err := client.FetchX509Context(ctx)
		if err != nil {
			return eventually.Stop(err)
		}
		if left := time.Until(xc.DefaultSVID().Certificates[0].NotAfter); left <= 8500*time.Millisecond {
			return fmt.Errorf("SVID has %v left, want a fresh one", left)
		}
		return nil
	})

	s.p.stop()
	stopped := time.Now()
	// Until the last SVID minted before the stop expires, every fetch
	// returns a valid SVID.
	var lastNotAfter time.Time
	fetches := 0
	for {
		fctx, fcancel := context.WithTimeout(ctx, 2*time.Second)
		// The agent answers at some time after sent: an SVID whose
		// not-after is past sent was served expired. (Checked against
		// the time after the answer, an SVID served a millisecond before
		// its expiry looked expired: a false failure.)
		sent := time.Now()
		xc, err := client.FetchX509Context(fctx)
		fcancel()
		now := time.Now()
		if err != nil {
			if now.Before(lastNotAfter) {
				t.Fatalf("fetch failed %v after the stop, while the SVID was valid until %v: %v", now.Sub(stopped), lastNotAfter, err)
			}
			break // the cached SVID expired and none can be minted
		}
		leaf := xc.DefaultSVID().Certificates[0]
		if !sent.Before(leaf.NotAfter) {
			t.Fatalf("agent served an expired SVID (not after %v, asked at %v)", leaf.NotAfter, sent)
		}
		lastNotAfter = leaf.NotAfter
		fetches++
		if now.Sub(stopped) > 20*time.Second {
			t.Fatal("SVIDs kept coming 20s after the server stopped")
		}
		time.Sleep(300 * time.Millisecond)
	}
	t.Logf("%d fetches served offline over %v", fetches, time.Since(stopped).Round(time.Millisecond))
	if fetches < 8 {
		t.Errorf("only %d fetches served while offline", fetches)
	}
	if err := a.healthErr(); err != nil {
		t.Logf("agent health while offline: %v", err)
	}

	s.start()
	back := time.Now()
	err = eventually.Wait(15*time.Second, func() error {
		fctx, fcancel := context.WithTimeout(ctx, 2*time.Second)
		xc, err := client.FetchX509Context(fctx)
		fcancel()
		if err != nil {
			return err
		}
		if leaf := xc.DefaultSVID().Certificates[0]; !time.Now().Before(leaf.NotAfter) {
			return fmt.Errorf("SVID expired at %v", leaf.NotAfter)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("no fresh SVID after the server returned: %v", err)
	}
	t.Logf("fresh SVID %v after the server returned", time.Since(back).Round(time.Millisecond))
}
