package integration

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/sigil-id/sigil/internal/eventually"
)

// TestNestedClusters: two Sigil clusters of one trust domain, nested. The
// upstream cluster (a server with allow_downstream and its agent) has an
// entry marked downstream for the downstream server's process (told apart
// by its executable path); the downstream server runs
// upstream_authority "sigil" pointed at the upstream agent's Workload API
// socket, so its CA certificate is signed by the upstream server, and its
// bundle's trust anchors are the upstream's roots. A workload in each
// cluster (go-spiffe, one mTLS handshake per request) authorizes the
// other's SPIFFE ID; their exchange goes on without a failure through a
// forced CA rotation in the downstream cluster (sigil authority prepare,
// activate, and taint of the old key), after which the downstream
// workload holds an SVID of the new key, signed upstream again. A downstream workload's SVID verifies with
// `openssl verify -CAfile upstream-root.pem -untrusted chain.pem`, before
// and after the rotation.
func TestNestedClusters(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal("openssl is required (apt-get install -y openssl)")
	}
	root := t.TempDir()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	uid := uidSelector(t)

	// Binaries told apart by path: the downstream server, the workload of
	// each cluster.
	bins := filepath.Join(root, "bin")
	os.MkdirAll(bins, 0o755)
	downSigil := filepath.Join(bins, "sigil-downstream")
	upWeb, downClient := filepath.Join(bins, "upweb"), filepath.Join(bins, "downclient")
	for _, c := range []struct{ src, dst string }{{sigilBin, downSigil}, {mtlsloopBin(t), upWeb}, {mtlsloopBin(t), downClient}} {
		b, err := os.ReadFile(c.src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(c.dst, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}

	// The upstream cluster.
	up := newServerWith(t, filepath.Join(root, "up"), `
  allow_downstream = true`)
	up.start()
	upAgent := newAgent(t, up, filepath.Join(root, "upagent"))
	upAgent.start()
	downServerID := "spiffe://" + trustDomain + "/nested/downstream-server"
	out := up.cli("entry", "create", "-spiffe-id", downServerID, "-parent-id", upAgent.id,
		"-selector", uid, "-selector", "unix:path:"+downSigil, "-downstream")
	if !strings.Contains(out, "Downstream       : true") {
		t.Fatalf("entry create -downstream: %s", out)
	}
	webID := "spiffe://" + trustDomain + "/nested/up/web"
	createEntry(t, up, webID, upAgent.id, uid, "unix:path:"+upWeb)
	upRootPEM := up.cli("bundle", "show")
	upRoots := parsePEMCerts(t, upRootPEM)
	upRootFile := filepath.Join(root, "upstream-root.pem")
	if err := os.WriteFile(upRootFile, []byte(upRootPEM), 0o644); err != nil {
		t.Fatal(err)
	}

	// The downstream cluster: its server is a workload of the upstream
	// agent.
	down := newServerWith(t, filepath.Join(root, "down"), fmt.Sprintf(`
  ca_propagation_delay = "1s"
  plugins {
    node_attestor "join_token" {}
    key_manager "disk" {}
    upstream_authority "sigil" {
      server_address      = %q
      workload_api_socket = %q
      timeout             = "20s"
    }
  }`, up.addr, upAgent.socket))
	renameNode(t, down, "d1")
	down.p = startProc(t, "downstream server", filepath.Join(down.dir, "server.log"), nil, downSigil, "server", "-config", down.config)
	waitReady(t, down.p, "http://"+down.health+"/ready")

	// The downstream bundle's trust anchors are the upstream's roots; its
	// CA certificate is an intermediate under them.
	downRoots := parsePEMCerts(t, down.cli("bundle", "show"))
	if !sameCertSet(downRoots, upRoots) {
		t.Fatalf("the downstream bundle holds %d certificates, want the upstream's %d roots", len(downRoots), len(upRoots))
	}
	downAgent := newAgent(t, down, filepath.Join(root, "downagent"))
	downAgent.start()
	clientID := "spiffe://" + trustDomain + "/nested/down/client"
	createEntry(t, down, clientID, downAgent.id, uid, "unix:path:"+downClient)
	testerID := "spiffe://" + trustDomain + "/nested/down/tester"
	createEntry(t, down, testerID, downAgent.id, uid, "unix:path:"+exe)

	firstKey := down.authorities().active("x509")
	if firstKey == "" {
		t.Fatal("the downstream server has no active X.509 key")
	}
	nestedOpenSSLVerify(t, downAgent.socket, testerID, firstKey, upRootFile, filepath.Join(root, "before"))

	// mTLS between the clusters: the upstream workload serves, the
	// downstream one dials; each accepts only the other's ID.
	addr := freeAddr(t)
	lp := &loopPair{t: t, webStatus: filepath.Join(root, "web.json"), cliStatus: filepath.Join(root, "client.json")}
	lp.web = startProc(t, "upweb", filepath.Join(root, "upweb.log"), []string{"SPIFFE_ENDPOINT_SOCKET=unix://" + upAgent.socket},
		upWeb, "serve", addr, clientID, lp.webStatus)
	lp.client = startProc(t, "downclient", filepath.Join(root, "downclient.log"), []string{"SPIFFE_ENDPOINT_SOCKET=unix://" + downAgent.socket},
		downClient, "dial", addr, webID, lp.cliStatus)
	eventually.NoError(t, 60*time.Second, func() error {
		w, c := lp.status()
		if w.Failures+c.Failures > 0 {
			return eventually.Stop(fmt.Errorf("failed nested requests: web %+v client %+v", w, c))
		}
		if w.Requests <= 5 || c.Requests <= 5 {
			return fmt.Errorf("no mTLS traffic between the clusters yet: web %+v client %+v", w, c)
		}
		return nil
	})
	if _, c := lp.status(); c.SVIDAuthority != firstKey {
		t.Fatalf("the downstream workload's SVID is signed by %s, want the downstream key %s", c.SVIDAuthority, firstKey)
	}

	// A forced CA rotation in the downstream cluster: the new key is
	// signed upstream when it is prepared.
	before, _ := lp.status()
	if out := down.cli("authority", "prepare"); !strings.Contains(out, "Prepared x509 key") {
		t.Fatalf("prepare: %s", out)
	}
	next := down.authorities().prepared("x509")
	if next == "" || next == firstKey {
		t.Fatalf("prepared key %q (active %s)", next, firstKey)
	}
	time.Sleep(1500 * time.Millisecond) // the downstream's propagation delay (1s)
	if out := down.cli("authority", "activate"); !strings.Contains(out, next) {
		t.Fatalf("activate: %s", out)
	}
	// Tainting the old key makes the agents re-mint now rather than at
	// half-life.
	down.cli("authority", "taint", "-id", firstKey)
	eventually.NoError(t, 60*time.Second, func() error {
		if _, c := lp.status(); c.SVIDAuthority != next {
			return fmt.Errorf("the downstream workload holds an SVID of %s, want the new key %s", c.SVIDAuthority, next)
		}
		return nil
	})
	_, moved := lp.status()
	eventually.NoError(t, 30*time.Second, func() error {
		if _, c := lp.status(); c.Requests-moved.Requests < 20 {
			return fmt.Errorf("%d requests since the downstream workload moved to the new key", c.Requests-moved.Requests)
		}
		return nil
	})
	web, client := lp.stop()
	lp.checkNoFailures(web, client)
	t.Logf("nested loop: client %d requests (%d since the rotation began), web %d, failures %d+%d",
		client.Requests, client.Requests-before.Requests, web.Requests, client.Failures, web.Failures)
	nestedOpenSSLVerify(t, downAgent.socket, testerID, next, upRootFile, filepath.Join(root, "after"))

	// The upstream signed both downstream CA certificates, and the
	// downstream bundle still holds the upstream's roots only.
	logText, _ := os.ReadFile(filepath.Join(up.dir, "server.log"))
	if n := strings.Count(string(logText), "downstream CA certificate signed"); n < 2 {
		t.Errorf("the upstream server logged %d downstream CA signatures, want at least 2", n)
	}
	if got := parsePEMCerts(t, down.cli("bundle", "show")); !sameCertSet(got, upRoots) {
		t.Errorf("after the rotation the downstream bundle holds %d certificates, want the upstream's %d roots", len(got), len(upRoots))
	}
}

// renameNode changes the node_name of a server's configuration.
func renameNode(t *testing.T, s *server, name string) {
	t.Helper()
	b, err := os.ReadFile(s.config)
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.Replace(string(b), `node_name      = "s1"`, fmt.Sprintf(`node_name      = %q`, name), 1)
	if cfg == string(b) {
		t.Fatal("no node_name in the server configuration")
	}
	if err := os.WriteFile(s.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
}

// nestedOpenSSLVerify waits until this process (the workload id of the
// downstream agent at socket) holds an SVID signed by the downstream key
// authority, and checks with openssl that it verifies to the upstream
// root through the chain the agent serves.
func nestedOpenSSLVerify(t *testing.T, socket, id, authority, rootFile, dir string) {
	t.Helper()
	var svid []*x509.Certificate
	eventually.NoError(t, 60*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		xc, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr("unix://"+socket))
		if err != nil {
			return err
		}
		for _, s := range xc.SVIDs {
			if s.ID.String() == id {
				if got := hex.EncodeToString(s.Certificates[0].AuthorityKeyId); got != authority {
					return fmt.Errorf("SVID of %s signed by %s, want %s", id, got, authority)
				}
				svid = s.Certificates
				return nil
			}
		}
		return fmt.Errorf("no SVID for %s", id)
	})
	if len(svid) < 2 {
		t.Fatalf("the SVID chain has %d certificates: the downstream CA certificate must follow the leaf", len(svid))
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	leaf, chain := filepath.Join(dir, "svid.pem"), filepath.Join(dir, "chain.pem")
	writePEMCerts(t, leaf, svid[:1])
	writePEMCerts(t, chain, svid[1:])
	out, err := exec.Command("openssl", "verify", "-CAfile", rootFile, "-untrusted", chain, leaf).CombinedOutput()
	if err != nil || !strings.Contains(string(out), ": OK") {
		t.Fatalf("openssl verify -CAfile upstream-root.pem -untrusted chain.pem svid.pem: %v\n%s", err, out)
	}
	// The leaf alone does not verify: the downstream CA is no trust anchor.
	if out, err := exec.Command("openssl", "verify", "-CAfile", rootFile, leaf).CombinedOutput(); err == nil {
		t.Fatalf("the leaf verified without its chain:\n%s", out)
	}
}

func parsePEMCerts(t *testing.T, s string) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	rest := []byte(s)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		t.Fatalf("no certificate in %q", s)
	}
	return out
}

func writePEMCerts(t *testing.T, path string, certs []*x509.Certificate) {
	t.Helper()
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// sameCertSet reports whether a and b hold the same certificates.
func sameCertSet(a, b []*x509.Certificate) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		found := false
		for _, y := range b {
			if x.Equal(y) {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}
