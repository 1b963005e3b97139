package integration

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/ca/keymanager/disk"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/eventually"
)

// Helpers of this file are prefixed "cl" (cluster attacks).

// clView is `sigil authority show -output json` with the bundle's owners.
type clView struct {
	ServerID string `json:"server_id"`
	Slots    []struct {
		Kind    string `json:"kind"`
		ID      string `json:"id"`
		State   string `json:"state"`
		Tainted bool   `json:"tainted"`
	} `json:"slots"`
	Bundle []struct {
		Kind     string `json:"kind"`
		ID       string `json:"id"`
		ServerID string `json:"server_id"`
		Tainted  bool   `json:"tainted"`
	} `json:"bundle"`
}

func clShow(t *testing.T, n *haNode) clView {
	t.Helper()
	var v clView
	out, err := sigilErr("authority", "show", "-output", "json", "-socket", n.admin)
	if err != nil {
		t.Fatalf("%s: authority show: %v %s", n.name, err, out)
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("%s: authority show output %q: %v", n.name, out, err)
	}
	return v
}

func (v clView) active(kind string) string {
	for _, s := range v.Slots {
		if s.Kind == kind && s.State == "active" {
			return s.ID
		}
	}
	return ""
}

// bundle returns ("in the bundle", "tainted") for the authority id.
func (v clView) bundle(id string) (in, tainted bool) {
	for _, b := range v.Bundle {
		if b.ID == id {
			return true, b.Tainted
		}
	}
	return false, false
}

// clWait polls cond every 200ms until it returns "" or within passes;
// it fails the test with the last reason.
func clWait(t *testing.T, within time.Duration, what string, cond func() string) {
	t.Helper()
	err := eventually.Wait(within, func() error {
		if last := cond(); last != "" {
			return errors.New(last)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%s not reached: %v", what, err)
	}
}

// clState is what must not change when an attack is refused: the Raft
// applied index and every server's bundle listing.
func clState(t *testing.T, ns []*haNode) string {
	t.Helper()
	// Followers apply a moment after the leader: read until every node
	// has applied the same index (bounded), so that replication lag is not
	// mistaken for a change.
	var state string
	_ = eventually.Wait(10*time.Second, func() error {
		var b strings.Builder
		settled := true
		var first uint64
		for i, n := range ns {
			m, err := n.members(context.Background())
			if err != nil {
				t.Fatalf("%s: members: %v", n.name, err)
			}
			if i == 0 {
				first = m.AppliedIndex
			} else if m.AppliedIndex != first {
				settled = false
			}
			v := clShow(t, n)
			fmt.Fprintf(&b, "%s applied=%d bundle=%v\n", n.name, m.AppliedIndex, v.Bundle)
		}
		state = b.String()
		if !settled {
			return errors.New("applied indexes differ")
		}
		return nil
	})
	// Past the bound the unsettled state is returned: the comparison
	// that follows reports it.
	return state
}

// clWorkloadBundles fetches the X.509 and JWT bundles of the trust domain
// from an agent's Workload API with go-spiffe.
func clWorkloadBundles(t *testing.T, socket string) (*x509bundle.Bundle, *jwtbundle.Bundle) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	addr := workloadapi.WithAddr("unix://" + socket)
	xs, err := workloadapi.FetchX509Bundles(ctx, addr)
	if err != nil {
		t.Fatalf("FetchX509Bundles: %v", err)
	}
	js, err := workloadapi.FetchJWTBundles(ctx, addr)
	if err != nil {
		t.Fatalf("FetchJWTBundles: %v", err)
	}
	td := spiffeid.RequireTrustDomainFromString(trustDomain)
	xb, err := xs.GetX509BundleForTrustDomain(td)
	if err != nil {
		t.Fatal(err)
	}
	jb, err := js.GetJWTBundleForTrustDomain(td)
	if err != nil {
		t.Fatal(err)
	}
	return xb, jb
}

func clSKI(c *x509.Certificate) string { return hex.EncodeToString(c.SubjectKeyId) }

// clBundleShowIDs is the authority IDs of `sigil bundle show` (PEM) of n.
func clBundleShowIDs(t *testing.T, n *haNode) map[string]bool {
	t.Helper()
	out := sigil(t, "bundle", "show", "-socket", n.admin)
	ids := map[string]bool{}
	data := []byte(out)
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		ids[clSKI(c)] = true
	}
	if len(ids) == 0 {
		t.Fatalf("%s: bundle show printed no certificate: %q", n.name, out)
	}
	return ids
}

// clSlotKey loads a server's key of one slot from its data directory, as
// an attacker who took the server's disk would.
type clSlotState struct {
	Slots []struct {
		ID          string `json:"id"`
		KeyID       string `json:"key_id"`
		Certificate []byte `json:"certificate"`
	} `json:"slots"`
}

func clLoadSlotKey(t *testing.T, n *haNode, kind, id string) (crypto.Signer, *x509.Certificate) {
	t.Helper()
	data := filepath.Join(n.dir, "data")
	raw, err := os.ReadFile(filepath.Join(data, "authorities-"+kind+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var st clSlotState
	if err := json.Unmarshal(raw, &st); err != nil {
		t.Fatal(err)
	}
	km, err := disk.New(filepath.Join(data, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st.Slots {
		if s.ID != id {
			continue
		}
		key, err := km.GetKey(context.Background(), s.KeyID)
		if err != nil {
			t.Fatalf("%s: key %s: %v", n.name, s.KeyID, err)
		}
		var cert *x509.Certificate
		if len(s.Certificate) > 0 {
			if cert, err = x509.ParseCertificate(s.Certificate); err != nil {
				t.Fatal(err)
			}
		}
		return key, cert
	}
	t.Fatalf("%s has no %s slot %s", n.name, kind, id)
	return nil, nil
}

// clForgeSVID signs an X.509-SVID for id with a CA key.
func clForgeSVID(t *testing.T, caKey crypto.Signer, caCert *x509.Certificate, id string) []*x509.Certificate {
	t.Helper()
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(id)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "forged"},
		URIs:         []*url.URL{u},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, leafKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return []*x509.Certificate{leaf}
}

// clForgeJWT signs a JWT-SVID for id with a server's JWT key.
func clForgeJWT(t *testing.T, key crypto.Signer, kid, id string) string {
	t.Helper()
	signer, err := ca.NewJWTSigner(spiffeid.RequireTrustDomainFromString(trustDomain), kid, key, time.Now().Add(time.Hour), 5*time.Minute, clock.New())
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := signer.SignJWTSVID(context.Background(), ca.JWTSVIDParams{SPIFFEID: spiffeid.RequireFromString(id), Audience: []string{"cl"}})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// clJWTKid is the kid header of a compact JWT.
func clJWTKid(t *testing.T, token string) string {
	t.Helper()
	h, _, _ := strings.Cut(token, ".")
	raw, err := base64.RawURLEncoding.DecodeString(h)
	if err != nil {
		t.Fatal(err)
	}
	var hdr struct {
		Kid string `json:"kid"`
	}
	if err := json.Unmarshal(raw, &hdr); err != nil {
		t.Fatal(err)
	}
	return hdr.Kid
}

// clFetch returns the workload's X.509-SVID and a JWT-SVID from an agent.
func clFetch(socket string) (*x509svid.SVID, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	addr := workloadapi.WithAddr("unix://" + socket)
	xs, err := workloadapi.FetchX509SVID(ctx, addr)
	if err != nil {
		return nil, "", err
	}
	js, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "cl"}, addr)
	if err != nil {
		return nil, "", err
	}
	return xs, js.Marshal(), nil
}

// TestAttackClusterRemovedServerKeysLeaveBundle: a server is removed (and
// stopped, as an operator decommissions it). Its CA and JWT keys are
// tainted at once on every remaining server; every agent that held SVIDs
// it signed gets new ones from another server's keys; after the grace
// period (removed_server_grace, 10s here) its keys are gone from every
// server's bundle and from the Workload API bundles; an X.509-SVID or a
// JWT-SVID signed afterwards with its keys (taken from its disk) no
// longer verifies, although the same forgery verified before the removal.
func TestAttackClusterRemovedServerKeysLeaveBundle(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	const grace = 10 * time.Second
	c := newHACluster(t, haDir(t), 3, 141, `removed_server_grace = "10s"`)
	c.start()
	dir := t.TempDir()

	// Two agents, each with a workload entry for this process.
	var agents []*agent
	var wants []string
	for i, via := range c.nodes[:2] {
		a := haAgent(t, c, via, filepath.Join(dir, fmt.Sprintf("agent%d", i+1)))
		want := fmt.Sprintf("spiffe://%s/cl/workload%d", trustDomain, i+1)
		createEntry(t, &server{t: t, admin: via.admin}, want, a.id, uidSelector(t))
		fetchID(t, a.socket, want)
		agents, wants = append(agents, a), append(wants, want)
	}
	// The victim is the server the first agent uses (whose CA signed its
	// workload's SVID); it must not be the leader (the leader carries out
	// the removal).
	var victim *haNode
	clWait(t, 10*time.Second, "the first agent's server", func() string {
		xs, _, err := clFetch(agents[0].socket)
		if err != nil {
			return err.Error()
		}
		aki := hex.EncodeToString(xs.Certificates[0].AuthorityKeyId)
		for _, n := range c.nodes {
			if clShow(t, n).active("x509") == aki {
				victim = n
				return ""
			}
		}
		return "no server's active CA signed " + aki
	})
	if c.leader() == victim {
		sigil(t, "cluster", "transfer-leader", "-socket", victim.admin)
		if c.leader() == victim {
			t.Fatal("leadership stayed on the victim")
		}
	}
	var rest []*haNode
	for _, n := range c.nodes {
		if n != victim {
			rest = append(rest, n)
		}
	}
	vv := clShow(t, victim)
	caV, jwtV := vv.active("x509"), vv.active("jwt")
	if caV == "" || jwtV == "" {
		t.Fatalf("victim %s has no active keys: %+v", victim.name, vv.Slots)
	}
	// Before: the first agent's SVIDs come from the victim's keys, and a
	// forgery with the victim's keys verifies against the Workload API
	// bundles (the control of the attack below).
	clWait(t, 10*time.Second, "SVIDs of the victim's keys", func() string {
		xs, tok, err := clFetch(agents[0].socket)
		if err != nil {
			return err.Error()
		}
		if got := hex.EncodeToString(xs.Certificates[0].AuthorityKeyId); got != caV {
			return "X.509-SVID signed by " + got
		}
		if kid := clJWTKid(t, tok); kid != jwtV {
			return "JWT-SVID signed by " + kid
		}
		return ""
	})
	caKey, caCert := clLoadSlotKey(t, victim, "x509", caV)
	jwtKey, _ := clLoadSlotKey(t, victim, "jwt", jwtV)
	xb, jb := clWorkloadBundles(t, agents[1].socket)
	if _, _, err := x509svid.Verify(clForgeSVID(t, caKey, caCert, wants[1]), xb); err != nil {
		t.Fatalf("control: an SVID signed by the victim's CA does not verify before the removal: %v", err)
	}
	if _, err := jwtsvid.ParseAndValidate(clForgeJWT(t, jwtKey, jwtV, wants[1]), jb, []string{"cl"}); err != nil {
		t.Fatalf("control: a JWT signed by the victim's key does not validate before the removal: %v", err)
	}

	removedAt := time.Now()
	out := sigil(t, "cluster", "remove", victim.name, "-socket", rest[0].admin)
	if !strings.Contains(out, "tainted") {
		t.Errorf("remove output does not say the keys are tainted: %q", out)
	}
	// Tainted at once on every remaining server.
	clWait(t, 3*time.Second, "the victim's keys tainted everywhere", func() string {
		for _, n := range rest {
			v := clShow(t, n)
			for _, id := range []string{caV, jwtV} {
				if in, tainted := v.bundle(id); !in || !tainted {
					return fmt.Sprintf("%s: %s in bundle=%v tainted=%v", n.name, id, in, tainted)
				}
			}
		}
		return ""
	})
	if d := time.Since(removedAt); d >= grace {
		t.Fatalf("checking the taint took %v, longer than the grace period", d)
	}
	victim.p.stop()
	c.waitMembers(rest[0], 2, 15*time.Second)
	// Every agent now serves SVIDs of the other servers' keys.
	restCAs := map[string]bool{}
	restJWTs := map[string]bool{}
	for _, n := range rest {
		v := clShow(t, n)
		restCAs[v.active("x509")], restJWTs[v.active("jwt")] = true, true
	}
	for i, a := range agents {
		clWait(t, 20*time.Second, fmt.Sprintf("agent %d re-minted", i+1), func() string {
			xs, tok, err := clFetch(a.socket)
			if err != nil {
				return err.Error()
			}
			if got := hex.EncodeToString(xs.Certificates[0].AuthorityKeyId); !restCAs[got] {
				return "X.509-SVID still signed by " + got
			}
			if kid := clJWTKid(t, tok); !restJWTs[kid] {
				return "JWT-SVID signed by " + kid
			}
			return ""
		})
	}

	// After the grace period the keys are gone from every bundle.
	clWait(t, grace+30*time.Second, "the victim's keys out of every bundle", func() string {
		for _, n := range rest {
			v := clShow(t, n)
			for _, id := range []string{caV, jwtV} {
				if in, _ := v.bundle(id); in {
					return fmt.Sprintf("%s: %s still in the bundle", n.name, id)
				}
			}
			if clBundleShowIDs(t, n)[caV] {
				return n.name + ": bundle show still prints the victim's CA"
			}
		}
		for i, a := range agents {
			xb, jb := clWorkloadBundles(t, a.socket)
			for _, cert := range xb.X509Authorities() {
				if clSKI(cert) == caV {
					return fmt.Sprintf("agent %d: Workload API X.509 bundle still has the victim's CA", i+1)
				}
			}
			if jb.HasJWTAuthority(jwtV) {
				return fmt.Sprintf("agent %d: Workload API JWT bundle still has the victim's key", i+1)
			}
		}
		return ""
	})
	if d := time.Since(removedAt); d < grace-time.Second {
		t.Fatalf("the victim's keys left the bundle after %v, before the grace period %v", d, grace)
	}

	// The attack: what the removed server's keys sign now verifies nowhere.
	for i, a := range agents {
		xb, jb := clWorkloadBundles(t, a.socket)
		if _, _, err := x509svid.Verify(clForgeSVID(t, caKey, caCert, wants[i]), xb); err == nil {
			t.Errorf("agent %d: an SVID signed by the removed server's CA verifies against the Workload API bundle", i+1)
		}
		if _, err := jwtsvid.ParseAndValidate(clForgeJWT(t, jwtKey, jwtV, wants[i]), jb, []string{"cl"}); err == nil {
			t.Errorf("agent %d: a JWT signed by the removed server's key validates against the Workload API bundle", i+1)
		}
	}
	// Nothing else changed: the remaining servers still serve, and their
	// bundles agree.
	if a, b := clShow(t, rest[0]).Bundle, clShow(t, rest[1]).Bundle; fmt.Sprint(a) != fmt.Sprint(b) {
		t.Errorf("bundles differ:\n%v\n%v", a, b)
	}
	for i, a := range agents {
		fetchID(t, a.socket, wants[i])
	}
}

// TestAttackClusterTaintOtherServersKey: from server A, `sigil authority
// taint|revoke -authority ID` acts on server B's key, cluster-wide. A
// member's only usable key and an untainted key are refused with the
// steps to take, and those refusals change nothing; a retired key of B is
// tainted on every server and in B's own slots, then revoked: it leaves
// every server's bundle, B's slots and the Workload API bundle.
func TestAttackClusterTaintOtherServersKey(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newHACluster(t, haDir(t), 3, 151, `ca_propagation_delay = "2s"`)
	c.start()
	srvA, srvB := c.nodes[0], c.nodes[1]
	a := haAgent(t, c, srvA, filepath.Join(t.TempDir(), "agent"))
	want := "spiffe://" + trustDomain + "/cl/taint"
	createEntry(t, &server{t: t, admin: srvA.admin}, want, a.id, uidSelector(t))
	fetchID(t, a.socket, want)

	old := clShow(t, srvB).active("x509")
	before := clState(t, c.nodes)
	// B's only key: refused, with what to do instead.
	if out, err := sigilErr("authority", "taint", "-authority", old, "-socket", srvA.admin); err == nil ||
		!strings.Contains(out, "only untainted") || !strings.Contains(out, "cluster remove") {
		t.Fatalf("tainting B's only key: %v %s", err, out)
	}
	// Not tainted: revoke refused.
	if out, err := sigilErr("authority", "revoke", "-authority", old, "-socket", srvA.admin); err == nil || !strings.Contains(out, "not tainted") {
		t.Fatalf("revoking an untainted key: %v %s", err, out)
	}
	// Unknown: refused.
	if out, err := sigilErr("authority", "taint", "-authority", "00112233", "-socket", srvA.admin); err == nil || !strings.Contains(out, "no authority") {
		t.Fatalf("tainting an unknown key: %v %s", err, out)
	}
	if after := clState(t, c.nodes); after != before {
		t.Fatalf("refused operations changed the state:\n%s\n%s", before, after)
	}

	// B rotates; its old key is retired, then tainted from A.
	sigil(t, "authority", "prepare", "-socket", srvB.admin)
	time.Sleep(2500 * time.Millisecond) // the propagation delay
	sigil(t, "authority", "activate", "-socket", srvB.admin)
	cur := clShow(t, srvB).active("x509")
	if cur == old || cur == "" {
		t.Fatalf("B's active key %q after rotation, old %q", cur, old)
	}
	out := sigil(t, "authority", "taint", "-authority", old, "-socket", srvA.admin)
	if !strings.Contains(out, "Tainted x509 authority "+old+" of server "+srvB.name) {
		t.Fatalf("taint output %q", out)
	}
	clWait(t, 10*time.Second, "B's old key tainted everywhere", func() string {
		for _, n := range c.nodes {
			if in, tainted := clShow(t, n).bundle(old); !in || !tainted {
				return fmt.Sprintf("%s: in bundle=%v tainted=%v", n.name, in, tainted)
			}
		}
		for _, s := range clShow(t, srvB).Slots {
			if s.ID == old && !s.Tainted {
				return "B's own slot is not tainted"
			}
		}
		return ""
	})

	out = sigil(t, "authority", "revoke", "-authority", old, "-socket", srvA.admin)
	if !strings.Contains(out, "Revoked x509 authority "+old) {
		t.Fatalf("revoke output %q", out)
	}
	clWait(t, 10*time.Second, "B's old key out of every bundle", func() string {
		for _, n := range c.nodes {
			if in, _ := clShow(t, n).bundle(old); in {
				return n.name + ": still in the bundle"
			}
			if clBundleShowIDs(t, n)[old] {
				return n.name + ": bundle show still prints it"
			}
		}
		for _, s := range clShow(t, srvB).Slots {
			if s.ID == old {
				return "still in B's slots"
			}
		}
		xb, _ := clWorkloadBundles(t, a.socket)
		for _, cert := range xb.X509Authorities() {
			if clSKI(cert) == old {
				return "still in the Workload API bundle"
			}
		}
		return ""
	})
	// It stays out: B does not publish it again.
	time.Sleep(2 * time.Second)
	for _, n := range c.nodes {
		if in, _ := clShow(t, n).bundle(old); in {
			t.Fatalf("%s: the revoked key came back", n.name)
		}
	}
	// Revoking it again: no such authority, nothing changes.
	before = clState(t, c.nodes)
	if out, err := sigilErr("authority", "revoke", "-authority", old, "-socket", srvA.admin); err == nil || !strings.Contains(out, "no authority") {
		t.Fatalf("revoking a revoked key: %v %s", err, out)
	}
	if after := clState(t, c.nodes); after != before {
		t.Fatalf("a refused revoke changed the state:\n%s\n%s", before, after)
	}
	fetchID(t, a.socket, want)
}

// TestAttackClusterIdentityCANotInWorkloadBundle: no server's cluster
// identity CA is in the bundle agents and workloads trust (Workload API,
// `sigil bundle show`, `sigil authority show`), so an SVID signed with an
// identity CA key taken from a server's disk verifies for no workload;
// the servers still authenticate each other (all members healthy, also
// after a restart, when a server presents its identity-CA-signed SVID).
func TestAttackClusterIdentityCANotInWorkloadBundle(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newHACluster(t, haDir(t), 3, 161)
	c.start()
	a := haAgent(t, c, c.nodes[0], filepath.Join(t.TempDir(), "agent"))
	want := "spiffe://" + trustDomain + "/cl/identity"
	createEntry(t, &server{t: t, admin: c.nodes[0].admin}, want, a.id, uidSelector(t))
	fetchID(t, a.socket, want)

	xb, _ := clWorkloadBundles(t, a.socket)
	wl := map[string]bool{}
	for _, cert := range xb.X509Authorities() {
		wl[clSKI(cert)] = true
	}
	if len(wl) < 3 {
		t.Fatalf("Workload API bundle has %d authorities, want every server's CA", len(wl))
	}
	for _, n := range c.nodes {
		pemData, err := os.ReadFile(filepath.Join(n.dir, "data", "cluster", "ca.pem"))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := pem.Decode(pemData)
		if b == nil {
			t.Fatalf("%s: no identity CA certificate", n.name)
		}
		idCert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		id := clSKI(idCert)
		if wl[id] {
			t.Errorf("%s's identity CA is in the Workload API bundle", n.name)
		}
		for _, m := range c.nodes {
			if clBundleShowIDs(t, m)[id] {
				t.Errorf("%s's identity CA is in `bundle show` of %s", n.name, m.name)
			}
			if in, _ := clShow(t, m).bundle(id); in {
				t.Errorf("%s's identity CA is in `authority show` of %s", n.name, m.name)
			}
		}
		// An attacker with the identity CA key mints a workload SVID: it
		// verifies against nothing a workload trusts.
		km, err := disk.New(filepath.Join(n.dir, "data", "cluster", "keys"))
		if err != nil {
			t.Fatal(err)
		}
		key, err := km.GetKey(context.Background(), "x509-ca")
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := x509svid.Verify(clForgeSVID(t, key, idCert, want), xb); err == nil {
			t.Errorf("an SVID signed by %s's identity CA verifies against the Workload API bundle", n.name)
		}
		// And the agent's own bundle file holds no identity CA either.
		saved, err := os.ReadFile(filepath.Join(a.dir, "data", "bundle.pem"))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(saved, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: idCert.Raw})) {
			t.Errorf("the agent's saved bundle holds %s's identity CA", n.name)
		}
	}

	// Server-to-server mTLS still works: a restarted member (which
	// presents an SVID of its identity CA until its CA key is loaded)
	// rejoins, and writes through a follower commit.
	r := c.nodes[2]
	if c.leader() == r {
		r = c.nodes[1]
	}
	r.p.stop()
	r.start()
	c.waitMembers(c.nodes[0], 3, 30*time.Second)
	createEntry(t, &server{t: t, admin: r.admin}, "spiffe://"+trustDomain+"/cl/after-restart", a.id, "unix:uid:4242")
	m, err := r.members(context.Background())
	if err != nil || len(m.Members) != 3 {
		t.Fatalf("members after restart: %v %v", m, err)
	}
}
