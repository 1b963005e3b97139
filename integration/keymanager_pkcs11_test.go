package integration

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/ca/keymanager/pkcs11"
	"github.com/sigil-id/sigil/ca/keymanager/pkcs11/softhsmtest"
	"github.com/sigil-id/sigil/internal/eventually"
)

// TestKeyManagerPKCS11 runs a real server whose CA, JWT and cluster
// identity keys are in a SoftHSM2 token (key_manager "pkcs11"): an agent
// gets a workload SVID; a forced CA rotation (authority prepare, then
// activate) makes the new key in the token, and workloads get SVIDs it
// signed; after the server stops, the token holds the old and the new CA
// key, the JWT key and the cluster identity key, whose public halves are
// those of the certificates the server published; the server restarts on
// the same keys. No private key is in any file under the server's
// directory (data directory, Raft log and snapshots, configuration, log),
// in a saved snapshot or in the admin CLI's output: neither key material
// in any encoding (PEM, PKCS #8, SEC 1, PKCS #1, also in base64) nor any
// workload key the agent handed out.
func TestKeyManagerPKCS11(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	tk := softhsmtest.New(t, "sigil")
	// The server process inherits both; this process opens the token too.
	tk.Setenv(t)
	t.Setenv("SIGIL_IT_HSM_PIN", tk.PIN)

	root := t.TempDir()
	s := newServerWith(t, filepath.Join(root, "server"), fmt.Sprintf(`
  cluster_address      = %q
  ca_ttl               = "120s"
  x509_svid_ttl        = "10s"
  agent_svid_ttl       = "30s"
  jwt_svid_ttl         = "10s"
  ca_propagation_delay = "1s"`, freeAddr(t)))
	appendConfig(t, s.config, fmt.Sprintf(`plugins {
  node_attestor "join_token" {}
  key_manager "pkcs11" {
    module      = %q
    token_label = %q
    pin_env     = "SIGIL_IT_HSM_PIN"
  }
}
`, tk.Module, tk.Label))
	s.start()
	a := newAgent(t, s, filepath.Join(root, "agent"))
	a.start()
	want := "spiffe://" + trustDomain + "/hsm/workload"
	createEntry(t, s, want, a.id, uidSelector(t))

	workload := map[string]crypto.Signer{}
	first := fetchID(t, a.socket, want)
	firstCA := svidCA(t, first, want)
	collectWorkloadKeys(first, workload)
	t.Logf("first CA: %x", firstCA.SubjectKeyId)

	// Forced rotation.
	var cliOut bytes.Buffer
	cliOut.WriteString(s.cli("authority", "prepare", "-kind", "x509"))
	eventually.NoError(t, 20*time.Second, func() error {
		out, err := s.cliErr("authority", "activate", "-kind", "x509")
		if err != nil {
			return fmt.Errorf("activate: %v: %s", err, out)
		}
		cliOut.WriteString(out)
		return nil
	})
	var secondCA *x509.Certificate
	eventually.NoError(t, 40*time.Second, func() error {
		xc := fetchID(t, a.socket, want)
		collectWorkloadKeys(xc, workload)
		c := svidCA(t, xc, want)
		if bytes.Equal(c.SubjectKeyId, firstCA.SubjectKeyId) {
			return errors.New("the workload SVID is still signed by the first CA")
		}
		secondCA = c
		return nil
	})
	t.Logf("after rotation: SVID signed by CA %x", secondCA.SubjectKeyId)
	if samePub(firstCA.PublicKey, secondCA.PublicKey) {
		t.Fatal("the rotation kept the CA key")
	}

	snap := filepath.Join(t.TempDir(), "state.snap")
	s.cli("cluster", "snapshot", "save", snap)
	for _, args := range [][]string{
		{"bundle", "show"},
		{"authority", "show", "-output", "json"},
		{"entry", "list", "-output", "json"},
		{"agent", "list", "-output", "json"},
	} {
		cliOut.WriteString(s.cli(args...))
	}
	active := s.authorities().active("x509")
	a.p.stop()
	s.p.stop()

	// The token holds the keys, the server's directory none.
	found := tokenKeys(t, tk)
	var x509Keys, jwtKeys int
	for id := range found {
		switch {
		case strings.HasPrefix(id, "authorities/x509-ca-"):
			x509Keys++
		case strings.HasPrefix(id, "authorities/jwt-key-"):
			jwtKeys++
		}
	}
	t.Logf("keys in the token: %v", keysOf(found))
	if x509Keys < 2 || jwtKeys < 1 {
		t.Fatalf("the token holds %d CA and %d JWT keys, want at least 2 and 1", x509Keys, jwtKeys)
	}
	for name, cert := range map[string]*x509.Certificate{"first CA": firstCA, "rotated CA": secondCA} {
		if !anyKey(found, "authorities/x509-ca-", cert.PublicKey) {
			t.Errorf("the %s's key is not in the token", name)
		}
	}
	clusterCA := readCertPEM(t, filepath.Join(s.dir, "data", "cluster", "ca.pem"))
	if k, ok := found["cluster_identity/x509-ca"]; !ok || !samePub(k.Public(), clusterCA.PublicKey) {
		t.Errorf("the cluster identity CA key is not in the token (found %v)", keysOf(found))
	}

	blobs := map[string][]byte{"admin CLI output": cliOut.Bytes()}
	var err error
	if blobs["snapshot file"], err = os.ReadFile(snap); err != nil || len(blobs["snapshot file"]) == 0 {
		t.Fatalf("snapshot file: %v", err)
	}
	raftFiles := 0
	err = filepath.WalkDir(s.dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			if err == nil && de.Name() == "keys" {
				t.Errorf("the server made a key directory %s", p)
			}
			return err
		}
		if strings.HasSuffix(p, ".key.pem") {
			t.Errorf("the server wrote a key file %s", p)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if strings.Contains(p, string(filepath.Separator)+"raft"+string(filepath.Separator)) {
			raftFiles++
		}
		blobs[p] = b
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := blobs[s.p.log]; !ok || raftFiles < 1 {
		t.Fatalf("the scan would prove little: log scanned %v, %d Raft files", ok, raftFiles)
	}
	// Controls: the Raft files and snapshot hold the state; the matchers
	// find private keys where there are some.
	var raftBytes []byte
	for p, b := range blobs {
		if strings.Contains(p, string(filepath.Separator)+"raft"+string(filepath.Separator)) {
			raftBytes = append(raftBytes, b...)
		}
	}
	if !bytes.Contains(raftBytes, []byte(want)) || !bytes.Contains(blobs["snapshot file"], []byte(want)) {
		t.Errorf("control: the Raft files or the snapshot do not hold the entry %s", want)
	}
	agentKey, err := os.ReadFile(filepath.Join(a.dir, "data", "agent_svid.key"))
	if err != nil {
		t.Fatal(err)
	}
	if where := privateKeyMaterial(agentKey); where == "" {
		t.Error("control: the generic matcher finds no key in the agent's key file")
	}
	for name, b := range keyEncodings(t) {
		if where := privateKeyMaterial(b); where == "" {
			t.Errorf("control: the generic matcher misses a key as %s", name)
		}
	}
	if len(workload) < 1 {
		t.Fatal("no workload key collected")
	}
	leaks := 0
	for where, b := range blobs {
		if what := privateKeyMaterial(b); what != "" {
			leaks++
			t.Errorf("private key material (%s) in %s", what, where)
		}
		for name, k := range workload {
			for _, f := range heldKeyForms(t, k) {
				if bytes.Contains(b, f) {
					leaks++
					t.Errorf("workload key %s found in %s", name, where)
				}
			}
		}
	}
	t.Logf("scanned %d files/outputs (%d Raft files) for key material and %d workload keys: %d leaks", len(blobs), raftFiles, len(workload), leaks)

	// The server restarts on the keys in the token.
	s.start()
	if got := s.authorities().active("x509"); got != active {
		t.Errorf("after a restart the active CA is %s, was %s", got, active)
	}
	a.start()
	again := svidCA(t, fetchID(t, a.socket, want), want)
	if !samePub(again.PublicKey, secondCA.PublicKey) {
		t.Errorf("after a restart the SVID is signed by %x, want the rotated CA %x", again.SubjectKeyId, secondCA.SubjectKeyId)
	}
}

// svidCA returns the bundle certificate that signed the SVID want in xc.
func svidCA(t *testing.T, xc *workloadapi.X509Context, want string) *x509.Certificate {
	t.Helper()
	id := spiffeid.RequireFromString(want)
	for _, sv := range xc.SVIDs {
		if sv.ID != id {
			continue
		}
		leaf := sv.Certificates[0]
		b, err := xc.Bundles.GetX509BundleForTrustDomain(id.TrustDomain())
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range b.X509Authorities() {
			if bytes.Equal(c.SubjectKeyId, leaf.AuthorityKeyId) && leaf.CheckSignatureFrom(c) == nil {
				return c
			}
		}
		t.Fatalf("no bundle certificate signed the SVID (authority key id %x)", leaf.AuthorityKeyId)
	}
	t.Fatalf("no SVID %s", want)
	return nil
}

func collectWorkloadKeys(xc *workloadapi.X509Context, into map[string]crypto.Signer) {
	for _, sv := range xc.SVIDs {
		into["workload-"+sv.Certificates[0].SerialNumber.Text(16)] = sv.PrivateKey
	}
}

func samePub(a, b crypto.PublicKey) bool {
	e, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && e.Equal(b)
}

func readCertPEM(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s is not PEM", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// tokenKeys opens the token as the server (trust domain, node s1) and
// returns the keys it finds by the ids the server uses, as
// "scope/id".
func tokenKeys(t *testing.T, tk *softhsmtest.Token) map[string]crypto.Signer {
	t.Helper()
	cfg := pkcs11.DefaultConfig()
	cfg.Module, cfg.TokenLabel, cfg.PIN = tk.Module, tk.Label, tk.PIN
	cfg.TrustDomain, cfg.NodeName = spiffeid.RequireTrustDomainFromString(trustDomain), "s1"
	st, err := pkcs11.NewStore(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	found := map[string]crypto.Signer{}
	probe := func(scope ca.KeyScope, ids ...string) {
		km, err := st.OpenKeyManager(ctx, scope)
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range ids {
			k, err := km.GetKey(ctx, id)
			switch {
			case err == nil:
				found[string(scope)+"/"+id] = k
			case !errors.Is(err, ca.ErrKeyNotFound):
				t.Fatalf("%s/%s: %v", scope, id, err)
			}
		}
	}
	var ids []string
	for n := range 10 {
		ids = append(ids, fmt.Sprintf("x509-ca-%d", n), fmt.Sprintf("jwt-key-%d", n))
	}
	probe(ca.KeyScopeAuthorities, ids...)
	probe(ca.KeyScopeClusterIdentity, "x509-ca")
	return found
}

func keysOf(m map[string]crypto.Signer) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func anyKey(found map[string]crypto.Signer, prefix string, pub crypto.PublicKey) bool {
	for id, k := range found {
		if strings.HasPrefix(id, prefix) && samePub(k.Public(), pub) {
			return true
		}
	}
	return false
}

// privateKeyPatterns are byte strings found in private keys whatever the
// key: the PEM header, and DER that only private keys hold: the start of
// PKCS #8 EC and RSA keys, the curve and public key fields that follow
// the secret in SEC 1 P-256 and P-384 keys, and the start of SEC 1 P-256
// and PKCS #1 RSA-2048 keys. The long ones are also looked for in base64
// (standard and URL) at each of the three alignments.
var privateKeyPatterns = func() map[string][]byte {
	der := map[string]string{
		"PKCS #8 EC":         "020100301306072a8648ce3d0201",
		"PKCS #8 RSA":        "020100300d06092a864886f70d0101010500",
		"SEC 1 P-256 fields": "a00a06082a8648ce3d030107a144034200",
		"SEC 1 P-384 fields": "a00706052b81040022a16403620004",
		"SEC 1 P-256 start":  "30770201010420",
		"PKCS #1 RSA-2048":   "02010002820101",
	}
	out := map[string][]byte{"PEM PRIVATE KEY": []byte("PRIVATE KEY-----")}
	for name, h := range der {
		b, err := hex.DecodeString(h)
		if err != nil {
			panic(err)
		}
		out[name] = b
		for k := range 3 {
			part := b[k:]
			part = part[:len(part)/3*3]
			if len(part) < 12 {
				continue // a short base64 string would match by chance
			}
			out[fmt.Sprintf("%s (base64, offset %d)", name, k)] = []byte(base64.StdEncoding.EncodeToString(part))
			out[fmt.Sprintf("%s (base64url, offset %d)", name, k)] = []byte(base64.RawURLEncoding.EncodeToString(part))
		}
	}
	return out
}()

// privateKeyMaterial names the first private key pattern found in b, or
// returns "".
func privateKeyMaterial(b []byte) string {
	for name, p := range privateKeyPatterns {
		if bytes.Contains(b, p) {
			return name
		}
	}
	return ""
}

// keyEncodings returns a fresh P-256 key in the encodings a leak could
// take, each embedded in other bytes, as controls of the matcher.
func keyEncodings(t *testing.T) map[string][]byte {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p8, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	sec1, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	wrap := func(b []byte) []byte { return append(append([]byte(`{"x":"`), b...), `"}`...) }
	out := map[string][]byte{
		"PKCS #8 PEM":  wrap(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: p8})),
		"SEC 1 PEM":    wrap(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1})),
		"PKCS #8 DER":  wrap(p8),
		"SEC 1 DER":    wrap(sec1),
		"PKCS #8 b64":  wrap([]byte(base64.StdEncoding.EncodeToString(p8))),
		"SEC 1 b64url": wrap([]byte(base64.RawURLEncoding.EncodeToString(sec1))),
	}
	for k := 1; k < 3; k++ {
		// base64 of the DER at another offset in a longer message.
		out[fmt.Sprintf("PKCS #8 b64 at offset %d", k)] = wrap([]byte(base64.StdEncoding.EncodeToString(append(make([]byte, k), p8...))))
	}
	return out
}
