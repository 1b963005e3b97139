package integration

// Attacks on the mtls library and on the CA certificates, against a real
// sigil server and agent: workloads get their SVIDs from the agent's
// Workload API (this test process is the workload), the attacker holds
// what a compromised node would hold (the agent's SVID and key, or the
// server's CA key from its data directory). Each case asserts the refusal
// and that the server's state did not change.

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/mtls"
	"github.com/sigil-id/sigil/mtls/mtlstest"
	"github.com/sigil-id/sigil/mtls/policy"
)

// ---- helpers (prefixed mtlsAtk) ----

// mtlsAtkState is the server state an attack must not change.
type mtlsAtkState struct {
	entries, agents, bundle string
	index                   uint64
}

func mtlsAtkSnapshot(t *testing.T, s *server) mtlsAtkState {
	t.Helper()
	st := mtlsAtkState{
		entries: s.cli("entry", "list", "-output", "json"),
		agents:  s.cli("agent", "list", "-output", "json"),
		bundle:  s.cli("bundle", "show"),
	}
	ac := dialAdmin(t, s.admin)
	defer ac.conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := ac.cluster.Members(ctx, &sigilv1.MembersRequest{})
	if err != nil || m.AppliedIndex == 0 {
		t.Fatalf("cluster members: applied index %d, %v", m.GetAppliedIndex(), err)
	}
	st.index = m.AppliedIndex
	return st
}

func mtlsAtkUnchanged(t *testing.T, before, after mtlsAtkState) {
	t.Helper()
	if before.entries != after.entries {
		t.Errorf("entry list changed:\nbefore %s\nafter  %s", before.entries, after.entries)
	}
	if before.agents != after.agents {
		t.Errorf("agent list changed:\nbefore %s\nafter  %s", before.agents, after.agents)
	}
	if before.bundle != after.bundle {
		t.Error("bundle changed")
	}
	if before.index != after.index {
		t.Errorf("Raft applied index moved from %d to %d", before.index, after.index)
	}
}

// mtlsAtkSetup starts a server and an agent and issues ids to this test
// process; it returns a Source per id (fed by the agent's Workload API).
func mtlsAtkSetup(t *testing.T, ids ...string) (*server, *agent, map[string]*mtls.Source) {
	t.Helper()
	root := t.TempDir()
	s := newServer(t, filepath.Join(root, "server"))
	s.start()
	a := newAgent(t, s, filepath.Join(root, "agent"))
	a.start()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		createEntry(t, s, id, a.id, uidSelector(t), "unix:path:"+exe)
	}
	for _, id := range ids {
		fetchID(t, a.socket, id)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srcs := map[string]*mtls.Source{}
	for _, id := range ids {
		src, err := mtls.NewSource(ctx, mtls.WithSocket(a.socket), mtls.WithSVIDID(spiffeid.RequireFromString(id)))
		if err != nil {
			t.Fatalf("source for %s: %v", id, err)
		}
		t.Cleanup(func() { src.Close() })
		srcs[id] = src
	}
	return s, a, srcs
}

// mtlsAtkServe accepts TLS connections with cfg on loopback, answers
// "ok\n" after a successful handshake and reports handshake errors.
func mtlsAtkServe(t *testing.T, cfg *tls.Config) (string, chan error) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	errs := make(chan error, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := tls.Server(c, cfg)
				tc.SetDeadline(time.Now().Add(10 * time.Second))
				if err := tc.Handshake(); err != nil {
					select {
					case errs <- err:
					default:
					}
					return
				}
				io.WriteString(tc, "ok\n")
			}()
		}
	}()
	return l.Addr().String(), errs
}

// mtlsAtkExchange connects, reads the answer to the end (taking in the
// session tickets) and returns the client's connection state.
func mtlsAtkExchange(addr string, cfg *tls.Config) (tls.ConnectionState, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err == nil && string(b) != "ok\n" {
		err = errors.New("unexpected answer " + string(b))
	}
	return c.ConnectionState(), err
}

// TestAttackMTLSResumptionAfterDeny: a client authorized once resumes
// its TLS session after the server's policy file was changed to deny it.
// The resumed handshake (DidResume on both sides) is refused, with the
// policy's reason, and nothing changed on the sigil server.
func TestAttackMTLSResumptionAfterDeny(t *testing.T) {
	td := "spiffe://" + trustDomain
	srvID, cliID := td+"/mtls-atk/echo", td+"/mtls-atk/web"
	s, _, srcs := mtlsAtkSetup(t, srvID, cliID)

	polPath := filepath.Join(t.TempDir(), "policy.hcl")
	mtlsWriteFile(t, polPath, `rule "web-to-echo" {
  from = ["`+cliID+`"]
  to   = ["service:echo"]
}`)
	reloaded := make(chan struct{}, 4)
	w, err := policy.Watch(polPath, policy.WithInterval(20*time.Millisecond),
		policy.WithOnReload(func(_ *policy.Policy, err error) {
			if err == nil {
				reloaded <- struct{}{}
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	srvCfg := mtls.ServerConfig(srcs[srvID], mtls.WithAuthorizer(mtls.NewEnforcer(w).Authorize), mtls.WithService("echo"))
	var srvResumed atomic.Bool
	verify := srvCfg.VerifyConnection
	srvCfg.VerifyConnection = func(cs tls.ConnectionState) error {
		srvResumed.Store(cs.DidResume)
		if verify == nil {
			return nil
		}
		return verify(cs)
	}
	addr, errs := mtlsAtkServe(t, srvCfg)

	cliCfg := mtls.ClientConfig(srcs[cliID], mtls.WithServerID(spiffeid.RequireFromString(srvID)))
	cliCfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	if st, err := mtlsAtkExchange(addr, cliCfg); err != nil || st.DidResume {
		t.Fatalf("first connection: resumed=%v %v", st.DidResume, err)
	}
	st, err := mtlsAtkExchange(addr, cliCfg)
	if err != nil || !st.DidResume || !srvResumed.Load() {
		t.Fatalf("second connection did not resume (client %v, server %v): %v", st.DidResume, srvResumed.Load(), err)
	}

	before := mtlsAtkSnapshot(t, s)
	mtlsWriteFile(t, polPath, `rule "nobody" {
  from = ["`+td+`/mtls-atk/batch"]
  to   = ["service:echo"]
}`)
	select {
	case <-reloaded:
	case <-time.After(30 * time.Second):
		t.Fatal("the policy file was not reloaded")
	}
	srvResumed.Store(false)
	if _, err := mtlsAtkExchange(addr, cliCfg); err == nil {
		t.Fatal("a resumed session was accepted after the policy changed to deny")
	}
	if !srvResumed.Load() {
		t.Fatal("the refused handshake was not a resumption: the test did not cover the resumption path")
	}
	select {
	case err := <-errs:
		if !strings.Contains(err.Error(), "mtls: permission denied: "+cliID+" may not call service echo") {
			t.Fatalf("server refused with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the server reported no handshake error")
	}
	mtlsAtkUnchanged(t, before, mtlsAtkSnapshot(t, s))
}

// TestAttackMTLSAgentSVIDAsServer: an attacker holding a node's agent
// SVID and key (from the agent's data directory) serves TLS with it. A
// workload client with the default configuration, one accepting its trust
// domain, and one naming its real server all refuse it; only a client
// naming the agent's exact ID accepts it (so the SVID does verify, and the
// refusals are authorization). Nothing changes on the server.
func TestAttackMTLSAgentSVIDAsServer(t *testing.T) {
	td := "spiffe://" + trustDomain
	srvID, cliID := td+"/mtls-atk/echo", td+"/mtls-atk/web"
	s, a, srcs := mtlsAtkSetup(t, srvID, cliID)
	cli := srcs[cliID]

	agentSVID, err := x509svid.Load(filepath.Join(a.dir, "data", "agent_svid.pem"), filepath.Join(a.dir, "data", "agent_svid.key"))
	if err != nil {
		t.Fatalf("loading the agent SVID: %v", err)
	}
	if agentSVID.ID.String() != a.id || !policy.IsReserved(agentSVID.ID) {
		t.Fatalf("agent SVID is %s, want the reserved %s", agentSVID.ID, a.id)
	}
	bundle, err := cli.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString(trustDomain))
	if err != nil {
		t.Fatal(err)
	}
	before := mtlsAtkSnapshot(t, s)
	rogue := mtlstest.NewSource(agentSVID, bundle)
	addr, _ := mtlsAtkServe(t, mtls.ServerConfig(rogue))

	for _, tc := range []struct {
		name string
		opts []mtls.TLSOption
		want string
	}{
		{"default", nil, "the client does not say which server it accepts"},
		{"member-of", []mtls.TLSOption{mtls.WithAuthorizer(mtls.AuthorizeMemberOf(spiffeid.RequireTrustDomainFromString(trustDomain)))}, "is a Sigil agent or server identity (reserved path /sigil/), not a workload"},
		{"server-id", []mtls.TLSOption{mtls.WithServerID(spiffeid.RequireFromString(srvID))}, "unexpected peer " + a.id},
	} {
		_, err := mtlsAtkExchange(addr, mtls.ClientConfig(cli, tc.opts...))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: the client accepted the agent SVID or failed otherwise: %v (want %q)", tc.name, err, tc.want)
		}
	}
	_, err = mtls.Dial(context.Background(), "tcp", addr, cli)
	if !errors.Is(err, mtls.ErrNoServerAuthorizer) {
		t.Errorf("mtls.Dial without a server ID: %v", err)
	}
	// Control: named exactly, the agent SVID verifies against the bundle.
	if _, err := mtlsAtkExchange(addr, mtls.ClientConfig(cli, mtls.WithServerID(agentSVID.ID))); err != nil {
		t.Fatalf("control, exact agent ID: %v", err)
	}
	mtlsAtkUnchanged(t, before, mtlsAtkSnapshot(t, s))
}

// mtlsAtkCAKey finds, in the server's data directory, the private key of
// a CA certificate of the bundle: what an attacker who read the disk key
// manager's files holds.
func mtlsAtkCAKey(t *testing.T, s *server, bundle []*x509.Certificate) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	var found *x509.Certificate
	var key crypto.Signer
	filepath.WalkDir(filepath.Join(s.dir, "data"), func(p string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() || !strings.HasSuffix(p, ".key.pem") || found != nil {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		blk, _ := pem.Decode(b)
		if blk == nil {
			return nil
		}
		k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
		if err != nil {
			return nil
		}
		signer, ok := k.(crypto.Signer)
		if !ok {
			return nil
		}
		for _, c := range bundle {
			if pub, ok := c.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); ok && pub.Equal(signer.Public()) && c.Subject.SerialNumber == "s1" {
				found, key = c, signer
			}
		}
		return nil
	})
	if found == nil {
		t.Fatal("no key in the server's data directory matches the X.509 CA of node s1 in the bundle")
	}
	return found, key
}

func mtlsAtkForge(t *testing.T, tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mtlsAtkLeaf(serial int64, uri string) *x509.Certificate {
	u, _ := url.Parse(uri)
	return &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		URIs:         []*url.URL{u},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
}

func mtlsAtkPEMFile(t *testing.T, dir, name string, certs ...*x509.Certificate) string {
	t.Helper()
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// mtlsAtkVerify checks chain (leaf first) against the bundle file with
// Go's verifier, go-spiffe and `openssl verify`, and returns their errors
// (nil = accepted).
func mtlsAtkVerify(t *testing.T, bundlePath string, bundle []*x509.Certificate, chain ...*x509.Certificate) (goErr, svidErr, sslErr error, sslOut string) {
	t.Helper()
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, c := range bundle {
		roots.AddCert(c)
	}
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, goErr = chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	_, _, svidErr = x509svid.Verify(chain, x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString(trustDomain), bundle))
	dir := t.TempDir()
	args := []string{"verify", "-CAfile", bundlePath}
	if len(chain) > 1 {
		args = append(args, "-untrusted", mtlsAtkPEMFile(t, dir, "inter.pem", chain[1:]...))
	}
	args = append(args, mtlsAtkPEMFile(t, dir, "leaf.pem", chain[0]))
	out, err := exec.Command("openssl", args...).CombinedOutput()
	return goErr, svidErr, err, strings.TrimSpace(string(out))
}

// TestAttackCANameConstraints: with the real CA key of a running server
// (read from its data directory), an attacker mints a certificate for
// another trust domain and an intermediate CA with a leaf of this trust
// domain under it. Go's verifier, go-spiffe and `openssl verify` against
// the bundle from `sigil bundle show` refuse both, while an SVID the agent
// issued (with DNS SANs) verifies. Nothing changes on the server.
func TestAttackCANameConstraints(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal("openssl is required (apt-get install -y openssl)")
	}
	td := "spiffe://" + trustDomain
	root := t.TempDir()
	s := newServer(t, filepath.Join(root, "server"))
	s.start()
	a := newAgent(t, s, filepath.Join(root, "agent"))
	a.start()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	webID := td + "/mtls-atk/web"
	s.cli("entry", "create", "-spiffe-id", webID, "-parent-id", a.id, "-selector", uidSelector(t),
		"-selector", "unix:path:"+exe, "-dns", "web.it.sigil.test")
	xc := fetchID(t, a.socket, webID)

	bundlePEM := s.cli("bundle", "show")
	bundlePath := filepath.Join(root, "bundle.pem")
	if err := os.WriteFile(bundlePath, []byte(bundlePEM), 0o644); err != nil {
		t.Fatal(err)
	}
	var bundle []*x509.Certificate
	for rest := []byte(bundlePEM); ; {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			break
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		bundle = append(bundle, c)
	}
	caCert, caKey := mtlsAtkCAKey(t, s, bundle)
	before := mtlsAtkSnapshot(t, s)

	// Control: the workload SVID the agent served, DNS SAN included.
	var issued *x509svid.SVID
	for _, sv := range xc.SVIDs {
		if sv.ID.String() == webID {
			issued = sv
		}
	}
	if len(issued.Certificates[0].DNSNames) != 1 {
		t.Fatalf("issued SVID DNS names %v", issued.Certificates[0].DNSNames)
	}
	if g, sv, ssl, out := mtlsAtkVerify(t, bundlePath, bundle, issued.Certificates...); g != nil || sv != nil || ssl != nil {
		t.Fatalf("control, issued SVID: go %v, go-spiffe %v, openssl %v: %s", g, sv, ssl, out)
	}

	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	// A leaf for another trust domain, signed with the real CA key.
	foreign := mtlsAtkForge(t, mtlsAtkLeaf(1001, "spiffe://victim.example/payments"), caCert, leafKey.Public(), caKey)
	g, _, ssl, out := mtlsAtkVerify(t, bundlePath, bundle, foreign)
	if g == nil || !strings.Contains(g.Error(), "constraint") {
		t.Errorf("Go verified a certificate for another trust domain: %v", g)
	}
	if ssl == nil || !strings.Contains(out, "subtree violation") {
		t.Errorf("openssl verified a certificate for another trust domain: %v: %s", ssl, out)
	}
	// Federation mistake: the victim's bundle holding this CA.
	if _, _, err := x509svid.Verify([]*x509.Certificate{foreign}, x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString("victim.example"), bundle)); err == nil {
		t.Error("go-spiffe verified a certificate for another trust domain")
	}

	// An intermediate CA signed with the real CA key, and a leaf of this
	// trust domain under it.
	interKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	interTmpl := mtlsAtkLeaf(1002, td)
	interTmpl.Subject = pkix.Name{CommonName: "rogue intermediate"}
	interTmpl.IsCA, interTmpl.BasicConstraintsValid = true, true
	interTmpl.KeyUsage, interTmpl.ExtKeyUsage = x509.KeyUsageCertSign, nil
	inter := mtlsAtkForge(t, interTmpl, caCert, interKey.Public(), caKey)
	under := mtlsAtkForge(t, mtlsAtkLeaf(1003, td+"/admin"), inter, leafKey.Public(), interKey)
	g, sv, ssl, out := mtlsAtkVerify(t, bundlePath, bundle, under, inter)
	if g == nil || sv == nil {
		t.Errorf("a leaf under a rogue intermediate verified: go %v, go-spiffe %v", g, sv)
	}
	if ssl == nil || !strings.Contains(out, "path length") {
		t.Errorf("openssl verified a leaf under a rogue intermediate: %v: %s", ssl, out)
	}
	mtlsAtkUnchanged(t, before, mtlsAtkSnapshot(t, s))
}
