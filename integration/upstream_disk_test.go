package integration

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/sigil-id/sigil/ca/keymanager/pkcs11/softhsmtest"
	"github.com/sigil-id/sigil/internal/eventually"
)

// TestUpstreamDisk runs a real server whose CA certificates are signed by
// an operator's PKI (upstream_authority "disk": a root and an intermediate
// made by the test, the intermediate's key in a file) and an agent: a
// workload (this test, through go-spiffe) gets an X.509-SVID whose chain
// is [SVID, server CA, operator intermediate]; `openssl verify -CAfile
// upstream-root.pem -untrusted chain.pem svid.pem` accepts it; the
// workload's X.509 bundle of the trust domain is exactly the upstream root.
// After a forced CA rotation (authority prepare, activate) the SVID is
// signed by a new server CA, still verifies with openssl against the same
// root, and the bundle (the workload's and `sigil bundle show`) is
// unchanged. Then the operator replaces the issuing CA's certificate and
// key in the files: the next rotation's CA certificate is signed by the
// new one, SVIDs still verify to the same root, and the bundle is still
// unchanged. The server stops cleanly (closing its upstream authority).
func TestUpstreamDisk(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatal("openssl is not in PATH: apt-get install -y openssl")
	}
	root := t.TempDir()
	up := newOperatorPKI(t, filepath.Join(root, "upstream"))

	s := newServerWith(t, filepath.Join(root, "server"), `
  ca_ttl               = "1h"
  x509_svid_ttl        = "10s"
  agent_svid_ttl       = "30s"
  ca_propagation_delay = "1s"`)
	appendConfig(t, s.config, fmt.Sprintf(`plugins {
  node_attestor "join_token" {}
  key_manager "disk" {}
  upstream_authority "disk" {
    cert_file   = %q
    bundle_file = %q
    key_file    = %q
  }
}
`, up.certFile, up.rootFile, up.keyFile))
	s.start()
	bundleBefore := s.cli("bundle", "show")
	if got := pemCertsOf(t, []byte(bundleBefore)); len(got) != 1 || !got[0].Equal(up.root) {
		t.Fatalf("sigil bundle show lists %d certificates, want the upstream root alone:\n%s", len(got), bundleBefore)
	}
	a := newAgent(t, s, filepath.Join(root, "agent"))
	a.start()
	want := "spiffe://" + trustDomain + "/upstream/workload"
	createEntry(t, s, want, a.id, uidSelector(t))

	first := fetchID(t, a.socket, want)
	firstCA := checkUpstreamSVID(t, openssl, first, want, up, filepath.Join(root, "first"))
	t.Logf("first server CA %q, signed by %q", firstCA.Subject, up.inter.Subject)

	// Forced rotation: the new CA key's certificate is signed upstream.
	second := rotateUpstreamCA(t, s, a, want, firstCA)
	secondCA := checkUpstreamSVID(t, openssl, second, want, up, filepath.Join(root, "second"))
	t.Logf("after rotation: server CA %q, signed by %q", secondCA.Subject, up.inter.Subject)
	if secondCA.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(firstCA.PublicKey) {
		t.Fatal("the rotation kept the CA key")
	}
	if got := s.cli("bundle", "show"); got != bundleBefore {
		t.Errorf("sigil bundle show changed across the rotation:\nbefore\n%s\nafter\n%s", bundleBefore, got)
	}

	// The operator replaces the issuing CA (same root) in the files of the
	// running server: the next CA certificate is signed by the new one,
	// SVIDs carry it, and the bundle still is the root alone.
	oldInter := up.inter
	up.renew("Operator Issuing CA 2")
	third := rotateUpstreamCA(t, s, a, want, secondCA)
	thirdCA := checkUpstreamSVID(t, openssl, third, want, up, filepath.Join(root, "third"))
	if thirdCA.CheckSignatureFrom(oldInter) == nil {
		t.Fatal("after the replacement the server CA is still signed by the previous issuing CA")
	}
	t.Logf("after the replacement: server CA signed by %q", up.inter.Subject)
	if got := s.cli("bundle", "show"); got != bundleBefore {
		t.Errorf("sigil bundle show changed after the upstream replacement:\n%s", got)
	}
	s.p.stop()
	logb, err := os.ReadFile(s.p.log)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(logb, []byte("upstream files reloaded")) || !bytes.Contains(logb, []byte("Operator Issuing CA 2")) {
		t.Error("the server log does not report the reload of the upstream files")
	}
}

// rotateUpstreamCA forces a rotation of the server's X.509 CA (authority
// prepare, then activate) and waits until the workload's SVID want is
// signed by another CA than prev; it returns the workload's context then.
func rotateUpstreamCA(t *testing.T, s *server, a *agent, want string, prev *x509.Certificate) *workloadapi.X509Context {
	t.Helper()
	s.cli("authority", "prepare", "-kind", "x509")
	eventually.NoError(t, 20*time.Second, func() error {
		out, err := s.cliErr("authority", "activate", "-kind", "x509")
		if err != nil {
			return fmt.Errorf("activate: %v: %s", err, out)
		}
		return nil
	})
	var got *workloadapi.X509Context
	eventually.NoError(t, 40*time.Second, func() error {
		xc := fetchID(t, a.socket, want)
		sv := svidOf(xc, want)
		if len(sv.Certificates) < 2 {
			return fmt.Errorf("SVID chain of %d certificates", len(sv.Certificates))
		}
		if bytes.Equal(sv.Certificates[1].Raw, prev.Raw) {
			return errors.New("the workload SVID is still signed by the previous server CA")
		}
		got = xc
		return nil
	})
	return got
}

// operatorPKI is the test's stand-in for an operator's PKI: a root and an
// intermediate that signs Sigil's CA certificates, in files.
type operatorPKI struct {
	t                           *testing.T
	root, inter                 *x509.Certificate
	rootKey                     crypto.Signer
	rootFile, certFile, keyFile string
	serial                      int64
}

func newOperatorPKI(t *testing.T, dir string) *operatorPKI {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	p := &operatorPKI{t: t, rootFile: filepath.Join(dir, "upstream-root.pem"),
		certFile: filepath.Join(dir, "issuing-ca.pem"), keyFile: filepath.Join(dir, "issuing-ca.key")}
	tmpl := p.template("Operator Root")
	tmpl.MaxPathLen = 2
	p.root, p.rootKey = p.issue(tmpl, nil)
	p.write(p.rootFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.root.Raw}))
	p.renew("Operator Issuing CA")
	return p
}

// template is a CA certificate of the operator's PKI named cn.
func (p *operatorPKI) template(cn string) *x509.Certificate {
	p.serial++
	now := time.Now()
	return &x509.Certificate{
		SerialNumber: big.NewInt(p.serial), Subject: pkix.Name{Organization: []string{"Operator PKI"}, CommonName: cn},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(30 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
	}
}

// issue signs tmpl for a new key with the root (self-signed if the root
// is not made yet).
func (p *operatorPKI) issue(tmpl *x509.Certificate, parentKey crypto.Signer) (*x509.Certificate, crypto.Signer) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		p.t.Fatal(err)
	}
	parent := p.root
	if parent == nil {
		parent, parentKey = tmpl, k
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, k.Public(), parentKey)
	if err != nil {
		p.t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		p.t.Fatal(err)
	}
	return c, k
}

// renew makes a new issuing CA named cn under the root and writes its
// certificate and key in place of the previous ones (key first), as an
// operator replacing the upstream certificate does.
func (p *operatorPKI) renew(cn string) {
	tmpl := p.template(cn)
	tmpl.MaxPathLen = 1
	var key crypto.Signer
	p.inter, key = p.issue(tmpl, p.rootKey)
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		p.t.Fatal(err)
	}
	p.write(p.keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	p.write(p.certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.inter.Raw}))
}

func (p *operatorPKI) write(path string, b []byte) {
	if err := os.WriteFile(path, b, 0o600); err != nil {
		p.t.Fatal(err)
	}
}

func svidOf(xc *workloadapi.X509Context, want string) *x509svid.SVID {
	for _, sv := range xc.SVIDs {
		if sv.ID.String() == want {
			return sv
		}
	}
	return nil
}

// checkUpstreamSVID checks the workload's SVID want in xc against the
// operator's PKI: its chain is [SVID, server CA, operator intermediate],
// the bundle of the trust domain is the upstream root alone, go-spiffe
// verifies the SVID with that bundle, and `openssl verify -CAfile
// upstream-root.pem -untrusted chain.pem svid.pem` (files written in dir)
// succeeds. It returns the server CA.
func checkUpstreamSVID(t *testing.T, openssl string, xc *workloadapi.X509Context, want string, up *operatorPKI, dir string) *x509.Certificate {
	t.Helper()
	sv := svidOf(xc, want)
	if sv == nil {
		t.Fatalf("no SVID %s", want)
	}
	chain := sv.Certificates
	if len(chain) != 3 {
		t.Fatalf("SVID chain of %d certificates, want SVID, server CA, operator intermediate", len(chain))
	}
	serverCA := chain[1]
	if !chain[2].Equal(up.inter) {
		t.Fatalf("the chain's third certificate is %q, want the operator intermediate", chain[2].Subject)
	}
	if err := serverCA.CheckSignatureFrom(up.inter); err != nil {
		t.Fatalf("the server CA is not signed by the operator intermediate: %v", err)
	}
	if len(serverCA.URIs) != 1 || serverCA.URIs[0].String() != "spiffe://"+trustDomain || !serverCA.IsCA || serverCA.MaxPathLen != 0 {
		t.Fatalf("server CA: URIs %v, CA %v, path length %d", serverCA.URIs, serverCA.IsCA, serverCA.MaxPathLen)
	}
	td := spiffeid.RequireTrustDomainFromString(trustDomain)
	b, err := xc.Bundles.GetX509BundleForTrustDomain(td)
	if err != nil {
		t.Fatal(err)
	}
	if anchors := b.X509Authorities(); len(anchors) != 1 || !anchors[0].Equal(up.root) {
		t.Fatalf("the workload's X.509 bundle holds %d authorities, want exactly the upstream root", len(anchors))
	}
	if id, _, err := x509svid.Verify(chain, xc.Bundles); err != nil || id.String() != want {
		t.Fatalf("go-spiffe verification of the SVID with the workload's bundle: %v", err)
	}

	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	svidFile, chainFile := filepath.Join(dir, "svid.pem"), filepath.Join(dir, "chain.pem")
	var rest []byte
	for _, c := range chain[1:] {
		rest = append(rest, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	if err := os.WriteFile(svidFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: chain[0].Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(chainFile, rest, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(openssl, "verify", "-CAfile", up.rootFile, "-untrusted", chainFile, svidFile).CombinedOutput()
	if err != nil || !strings.Contains(string(out), svidFile+": OK") {
		t.Fatalf("openssl verify -CAfile %s -untrusted %s %s: %v\n%s", up.rootFile, chainFile, svidFile, err, out)
	}
	// Control: without the upstream root openssl refuses the SVID.
	other := filepath.Join(dir, "not-the-root.pem")
	if err := os.WriteFile(other, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: up.inter.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(openssl, "verify", "-CAfile", other, "-untrusted", chainFile, svidFile).CombinedOutput(); err == nil {
		t.Fatalf("control: openssl verified the SVID without the upstream root:\n%s", out)
	}
	return serverCA
}

// pemCertsOf parses the PEM certificates of b.
func pemCertsOf(t *testing.T, b []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}

// TestUpstreamDiskPKCS11 runs a real server whose upstream key is in a
// SoftHSM2 token (upstream_authority "disk" with key_pkcs11; the key
// imported with softhsm2-util --import, its file removed): a workload's
// SVID verifies with openssl against the upstream root, and the server
// stops cleanly, closing its session with the token.
func TestUpstreamDiskPKCS11(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatal("openssl is not in PATH: apt-get install -y openssl")
	}
	tk := softhsmtest.New(t, "upstream")
	tk.Setenv(t) // the server process inherits SOFTHSM2_CONF
	root := t.TempDir()
	up := newOperatorPKI(t, filepath.Join(root, "upstream"))
	util, _, err := softhsmtest.Find()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(util, "--import", up.keyFile, "--token", tk.Label, "--label", "upstream-ca", "--id", "a1b2c3", "--pin", tk.PIN)
	cmd.Env = append(os.Environ(), tk.Env())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("softhsm2-util --import: %v\n%s", err, out)
	}
	if err := os.Remove(up.keyFile); err != nil {
		t.Fatal(err)
	}

	s := newServerWith(t, filepath.Join(root, "server"), "")
	appendConfig(t, s.config, fmt.Sprintf(`plugins {
  node_attestor "join_token" {}
  key_manager "disk" {}
  upstream_authority "disk" {
    cert_file   = %q
    bundle_file = %q
    key_pkcs11 {
      module      = %q
      token_label = %q
      pin_file    = %q
      key_label   = "upstream-ca"
    }
  }
}
`, up.certFile, up.rootFile, tk.Module, tk.Label, tk.WritePIN(t)))
	s.start()
	a := newAgent(t, s, filepath.Join(root, "agent"))
	a.start()
	want := "spiffe://" + trustDomain + "/upstream/hsm-workload"
	createEntry(t, s, want, a.id, uidSelector(t))
	checkUpstreamSVID(t, openssl, fetchID(t, a.socket, want), want, up, filepath.Join(root, "svid"))
	a.p.stop()
	s.p.stop()
}
