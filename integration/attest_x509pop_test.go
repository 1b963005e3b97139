package integration

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigil-id/sigil/internal/eventually"
)

// x509popCA is a test certificate authority for the x509pop attestor: a
// root (the server's CA bundle) and an intermediate that signs the agents'
// leaves (sent by the agents in their chains).
type x509popCA struct {
	root, inter *x509.Certificate
	interKey    crypto.Signer
	serial      int64
}

func x509popKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func x509popCert(t *testing.T, tmpl, parent *x509.Certificate, pub any, key crypto.Signer) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newX509popCA(t *testing.T) *x509popCA {
	t.Helper()
	now := time.Now()
	rootKey, interKey := x509popKey(t), x509popKey(t)
	rootTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "x509pop test root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	root := x509popCert(t, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	inter := x509popCert(t, &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "x509pop test intermediate"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign},
		root, interKey.Public(), rootKey)
	return &x509popCA{root: root, inter: inter, interKey: interKey, serial: 100}
}

// issue writes a leaf for cn and dnsName, its chain (leaf, intermediate)
// and its key (mode 0600) under dir, and returns the paths and the leaf.
func (ca *x509popCA) issue(t *testing.T, dir, cn, dnsName string) (certPath, keyPath string, leaf *x509.Certificate) {
	t.Helper()
	ca.serial++
	key := x509popKey(t)
	now := time.Now()
	leaf = x509popCert(t, &x509.Certificate{SerialNumber: big.NewInt(ca.serial), Subject: pkix.Name{CommonName: cn}, DNSNames: []string{dnsName},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(12 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}},
		ca.inter, key.Public(), ca.interKey)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	chain := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.inter.Raw})...)
	certPath = filepath.Join(dir, "node.crt")
	if err := os.WriteFile(certPath, chain, 0o644); err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	keyPath = filepath.Join(dir, "node.key")
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath, leaf
}

// newX509popServer returns a server (not started) that accepts join
// tokens and x509pop attestations against ca.
func newX509popServer(t *testing.T, dir string, ca *x509popCA) *server {
	t.Helper()
	s := newServer(t, dir)
	bundle := filepath.Join(dir, "x509pop-ca.pem")
	if err := os.WriteFile(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.root.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	appendConfig(t, s.config, fmt.Sprintf(`plugins {
  node_attestor "join_token" {}
  node_attestor "x509pop" {
    ca_bundle_path = %q
  }
  key_manager "disk" {}
}
`, bundle))
	return s
}

func appendConfig(t *testing.T, path, text string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(text); err != nil {
		t.Fatal(err)
	}
}

// newX509popAgent returns an agent (not started) that attests with the
// x509pop attestor, its certificate for cn and dnsName issued by ca; its
// id is spiffe://<td>/sigil/agent/x509pop/<leaf SHA-256>.
func newX509popAgent(t *testing.T, s *server, dir string, ca *x509popCA, cn, dnsName string) *agent {
	t.Helper()
	certPath, keyPath, leaf := ca.issue(t, filepath.Join(dir, "pki"), cn, dnsName)
	bundle := filepath.Join(dir, "bootstrap.pem")
	if err := os.WriteFile(bundle, []byte(s.cli("bundle", "show")), 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(leaf.Raw)
	a := &agent{
		t:      t,
		dir:    dir,
		config: filepath.Join(dir, "agent.hcl"),
		socket: filepath.Join(dir, "public", "api.sock"),
		health: freeAddr(t),
		id:     "spiffe://" + trustDomain + "/sigil/agent/x509pop/" + hex.EncodeToString(sum[:]),
	}
	cfg := fmt.Sprintf(`agent {
  trust_domain      = %q
  server_address    = %q
  data_dir          = %q
  socket_path       = %q
  trust_bundle_path = %q
  health_address    = %q
  log_level         = "debug"
}
plugins {
  node_attestor "x509pop" {
    certificate_path = %q
    private_key_path = %q
  }
  workload_attestor "unix" {}
}
`, trustDomain, s.addr, filepath.Join(dir, "data"), a.socket, bundle, a.health, certPath, keyPath)
	if err := os.WriteFile(a.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return a
}

// TestAttestX509popNodeAlias: three real agent processes attest to a real
// server with certificates from a test CA, proving possession of their
// keys. A node alias on the x509pop SAN selector of two of them gives both
// the aliased workload entry, which a go-spiffe workload receives from
// each; the third, whose certificate names another SAN, serves its own
// alias's entry and not the first.
func TestAttestX509popNodeAlias(t *testing.T) {
	root := t.TempDir()
	ca := newX509popCA(t)
	s := newX509popServer(t, filepath.Join(root, "server"), ca)
	s.start()

	poolA := "spiffe://" + trustDomain + "/pool-a"
	poolB := "spiffe://" + trustDomain + "/pool-b"
	servers := "spiffe://" + trustDomain + "/sigil/server"
	createEntry(t, s, poolA, servers, "x509pop:san:dns:pool-a.it.test")
	createEntry(t, s, poolB, servers, "x509pop:san:dns:pool-b.it.test")
	webA := poolA + "/web"
	webB := poolB + "/web"
	createEntry(t, s, webA, poolA, uidSelector(t))
	createEntry(t, s, webB, poolB, uidSelector(t))

	a1 := newX509popAgent(t, s, filepath.Join(root, "a1"), ca, "node-1", "pool-a.it.test")
	a2 := newX509popAgent(t, s, filepath.Join(root, "a2"), ca, "node-2", "pool-a.it.test")
	a3 := newX509popAgent(t, s, filepath.Join(root, "a3"), ca, "node-3", "pool-b.it.test")
	for _, a := range []*agent{a1, a2, a3} {
		a.start()
	}

	for _, a := range []*agent{a1, a2} {
		xc := fetchID(t, a.socket, webA)
		for _, sv := range xc.SVIDs {
			if sv.ID.String() == webB {
				t.Fatalf("agent %s serves %s, aliased to a SAN it does not have", a.id, webB)
			}
		}
	}
	xc := fetchID(t, a3.socket, webB)
	for _, sv := range xc.SVIDs {
		if sv.ID.String() == webA {
			t.Fatalf("the third agent serves %s without the pool-a SAN", webA)
		}
	}
	if len(xc.SVIDs) != 1 {
		t.Fatalf("the third agent serves %d SVIDs, want 1 (%s)", len(xc.SVIDs), webB)
	}

	// The agents are known by their leaf fingerprints, with the x509pop
	// node selectors.
	for i, a := range []*agent{a1, a2, a3} {
		out := s.cli("agent", "show", "-spiffe-id", a.id, "-output", "json")
		for _, want := range []string{fmt.Sprintf("subject:cn:node-%d", i+1), "ca:fingerprint:" + fingerprintHex(ca.root.Raw), "ca:fingerprint:" + fingerprintHex(ca.inter.Raw)} {
			if !strings.Contains(out, want) {
				t.Fatalf("agent show %s lacks selector %q:\n%s", a.id, want, out)
			}
		}
	}
}

// TestAttestX509popRefused: an agent whose certificate chains to another
// CA does not get in; the server says why in one public message and the
// agent exits with it.
func TestAttestX509popRefused(t *testing.T) {
	root := t.TempDir()
	s := newX509popServer(t, filepath.Join(root, "server"), newX509popCA(t))
	s.start()
	a := newX509popAgent(t, s, filepath.Join(root, "a"), newX509popCA(t), "intruder", "pool-a.it.test")
	a.p = startProc(t, "agent", filepath.Join(a.dir, "agent.log"), nil, sigilBin, "agent", "-config", a.config)
	// The agent is told why (it exits, or keeps retrying if a later
	// version retries refusals): the one public message, nothing more.
	eventually.NoError(t, 60*time.Second, func() error {
		if !strings.Contains(a.logText(), "x509pop certificate or proof of possession refused") {
			return fmt.Errorf("the agent's log does not say why it was refused:\n%s", tail(a.logText(), 3000))
		}
		return nil
	})
	if log := a.logText(); strings.Contains(log, "unknown authority") {
		t.Fatalf("the agent was told the server's private reason:\n%s", tail(log, 3000))
	}
	if out, err := s.cliErr("agent", "show", "-spiffe-id", a.id, "-output", "json"); err == nil {
		t.Fatalf("the refused agent is known to the server:\n%s", out)
	}
}

func fingerprintHex(der []byte) string {
	s := sha256.Sum256(der)
	return hex.EncodeToString(s[:])
}
