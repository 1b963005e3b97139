package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/cryptotest"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/sigil-id/sigil/clock"
)

var fastTD = spiffeid.RequireTrustDomainFromString("example.org")

// fastKeys holds one key of each kind, generated once: RSA keys are slow
// to make.
var fastKeys = sync.OnceValue(func() map[string]crypto.Signer {
	m := map[string]crypto.Signer{}
	must := func(k crypto.Signer, err error) crypto.Signer {
		if err != nil {
			panic(err)
		}
		return k
	}
	m["p256"] = must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))
	m["p384"] = must(ecdsa.GenerateKey(elliptic.P384(), rand.Reader))
	m["p521"] = must(ecdsa.GenerateKey(elliptic.P521(), rand.Reader))
	m["rsa2048"] = must(rsa.GenerateKey(rand.Reader, 2048))
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	m["ed25519"] = must(ed, err)
	// The CA keys, distinct from the leaf keys.
	m["ca-p256"] = must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))
	m["ca-p384"] = must(ecdsa.GenerateKey(elliptic.P384(), rand.Reader))
	m["ca-rsa2048"] = must(rsa.GenerateKey(rand.Reader, 2048))
	return m
})

var (
	fastCAKinds   = []string{"ca-p256", "ca-p384", "ca-rsa2048"}
	fastLeafKinds = []string{"p256", "p384", "p521", "rsa2048", "ed25519"}
)

// fastCA returns a self-signed CA of signer whose clock reads now, with
// CA TTL caTTL; opts change its configuration first.
func fastCA(t testing.TB, signer crypto.Signer, now time.Time, caTTL time.Duration, opts ...func(*Config)) *CA {
	t.Helper()
	cfg := DefaultConfig()
	cfg.TrustDomain = fastTD
	cfg.ServerID = "server-1"
	cfg.Clock = clock.NewFake(now)
	cfg.CATTL = caTTL
	for _, o := range opts {
		o(&cfg)
	}
	self := &CA{cfg: cfg, td: fastTD, signer: signer}
	cert, err := self.selfSign(signer)
	if err != nil {
		t.Fatal(err)
	}
	return newChainedCA(cfg, signer, cert, nil, true)
}

// randomParams draws an entry: a SPIFFE ID of one to four segments, zero
// to four DNS names of printable ASCII (wildcards and '&' included, which
// change the subject's string type), and a TTL (0: the default).
func randomParams(r *mrand.Rand, pub crypto.PublicKey) X509SVIDParams {
	const segChars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._"
	var id spiffeid.ID
	for {
		var path strings.Builder
		for range 1 + r.IntN(4) {
			path.WriteByte('/')
			for range 1 + r.IntN(12) {
				path.WriteByte(segChars[r.IntN(len(segChars))])
			}
		}
		var err error
		if id, err = spiffeid.FromPath(fastTD, path.String()); err == nil {
			break
		}
	}
	var dns []string
	for range r.IntN(5) {
		var n strings.Builder
		if r.IntN(4) == 0 {
			n.WriteString("*.")
		}
		for range 1 + r.IntN(30) {
			n.WriteByte(byte(0x21 + r.IntN(0x7f-0x21)))
		}
		dns = append(dns, n.String())
	}
	var ttl time.Duration
	if r.IntN(4) != 0 {
		ttl = time.Duration(1+r.Int64N(int64(72*time.Hour/time.Second))) * time.Second
	}
	return X509SVIDParams{PublicKey: pub, SPIFFEID: id, DNSNames: dns, TTL: ttl}
}

// compareWithCreateCertificate builds the template of p, has
// x509.CreateCertificate and the fast encoder each sign it with the same
// deterministic randomness, and fails unless both certificates are the
// same bytes and the fast one verifies under the CA.
func compareWithCreateCertificate(t *testing.T, c *CA, p X509SVIDParams, seed uint64) {
	t.Helper()
	tmpl, err := c.x509SVIDTemplate(p)
	if err != nil {
		t.Fatal(err)
	}
	cryptotest.SetGlobalRandom(t, seed)
	want, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, p.PublicKey, c.signer)
	if err != nil {
		t.Fatalf("CreateCertificate: %v", err)
	}
	cryptotest.SetGlobalRandom(t, seed)
	enc := c.svidEncoder()
	if enc == nil {
		t.Fatal("no fast encoder for this CA")
	}
	got, err := enc.create(tmpl, p.PublicKey, c.signer, nil)
	if err != nil {
		t.Fatalf("fast create: %v", err)
	}
	wantCert, err := x509.ParseCertificate(want)
	if err != nil {
		t.Fatal(err)
	}
	gotCert, err := x509.ParseCertificate(got)
	if err != nil {
		t.Fatalf("fast certificate does not parse: %v", err)
	}
	if !bytes.Equal(gotCert.RawTBSCertificate, wantCert.RawTBSCertificate) {
		t.Fatalf("TBSCertificate differs for %+v:\n got %x\nwant %x", p, gotCert.RawTBSCertificate, wantCert.RawTBSCertificate)
	}
	if err := gotCert.CheckSignatureFrom(c.cert); err != nil {
		t.Fatalf("fast certificate does not verify: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("certificates differ (same TBS, signature differs) for %+v:\n got %x\nwant %x", p, got, want)
	}
}

// TestFastSVIDMatchesCreateCertificate: for random entries, every CA key
// type and every leaf key type, the fast path's certificate is byte for
// byte x509.CreateCertificate's for the same template and randomness.
func TestFastSVIDMatchesCreateCertificate(t *testing.T) {
	keys := fastKeys()
	r := mrand.New(mrand.NewPCG(15, uint64(time.Now().UnixNano())))
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	for _, caKind := range fastCAKinds {
		c := fastCA(t, keys[caKind], now, 24*time.Hour)
		for _, leafKind := range fastLeafKinds {
			t.Run(caKind+"/"+leafKind, func(t *testing.T) {
				for i := range 20 {
					compareWithCreateCertificate(t, c, randomParams(r, keys[leafKind].Public()), uint64(i))
				}
			})
		}
	}
}

// TestFastSVIDTimeEncodings: validity times on both sides of 2050 (UTCTime
// before, GeneralizedTime from 2050 on) and a backdate clamped to the CA's
// NotBefore encode as crypto/x509 encodes them.
func TestFastSVIDTimeEncodings(t *testing.T) {
	keys := fastKeys()
	r := mrand.New(mrand.NewPCG(2050, 1))
	for _, now := range []time.Time{
		time.Date(2049, 12, 31, 23, 30, 0, 0, time.UTC),
		time.Date(2050, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2026, 1, 1, 0, 0, 0, 999_999_999, time.UTC),
	} {
		c := fastCA(t, keys["ca-p256"], now, 48*time.Hour)
		// One second later: NotBefore is clamped to the CA's.
		c.cfg.Clock = clock.NewFake(now.Add(time.Second))
		for i := range 5 {
			compareWithCreateCertificate(t, c, randomParams(r, keys["p256"].Public()), uint64(i))
		}
	}
}

// TestFastSVIDUsedAndVerifiable: SignX509SVID takes the fast path for each
// CA key type, and its chain verifies with go-spiffe's x509svid.Verify,
// crypto/x509 and `openssl verify`.
func TestFastSVIDUsedAndVerifiable(t *testing.T) {
	keys := fastKeys()
	now := time.Now()
	for _, caKind := range fastCAKinds {
		t.Run(caKind, func(t *testing.T) {
			c := fastCA(t, keys[caKind], now, 24*time.Hour)
			id := spiffeid.RequireFromPath(fastTD, "/ns/prod/sa/web")
			chain, err := c.SignX509SVID(context.Background(), X509SVIDParams{PublicKey: keys["p256"].Public(), SPIFFEID: id, DNSNames: []string{"web.example.org", "*.web.example.org"}})
			if err != nil {
				t.Fatal(err)
			}
			if c.fast == nil || !c.fast.checked.Load() {
				t.Fatal("SignX509SVID did not take the fast path (or did not verify its first signature)")
			}
			verifyChainEverywhere(t, c.cert, chain, id)
		})
	}
}

// intermediateCA returns a CA whose key is caKey and whose certificate
// root signed (an upstream-signed intermediate valid from now for a day).
func intermediateCA(t *testing.T, root *CA, caKey crypto.Signer, now time.Time) *CA {
	t.Helper()
	serial, err := newSerial()
	if err != nil {
		t.Fatal(err)
	}
	ski, err := subjectKeyID(caKey.Public())
	if err != nil {
		t.Fatal(err)
	}
	interTmpl := &x509.Certificate{
		SerialNumber: serial, Subject: defaultCASubject("intermediate"),
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
		MaxPathLenZero: true, URIs: root.cert.URIs, SubjectKeyId: ski,
	}
	der, err := x509.CreateCertificate(rand.Reader, interTmpl, root.cert, caKey.Public(), root.signer)
	if err != nil {
		t.Fatal(err)
	}
	inter, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return newChainedCA(root.cfg, caKey, inter, nil, false)
}

// TestFastSVIDUpstreamChain: with a CA certificate an upstream root
// signed, the fast path's SVID chains to the root.
func TestFastSVIDUpstreamChain(t *testing.T) {
	keys := fastKeys()
	now := time.Now()
	root := fastCA(t, keys["ca-p384"], now, 48*time.Hour, func(c *Config) { c.AllowIntermediates = true })
	c := intermediateCA(t, root, keys["ca-p256"], now)
	id := spiffeid.RequireFromPath(fastTD, "/db")
	chain, err := c.SignX509SVID(context.Background(), X509SVIDParams{PublicKey: keys["rsa2048"].Public(), SPIFFEID: id})
	if err != nil {
		t.Fatal(err)
	}
	if c.fast == nil {
		t.Fatal("fast path not taken")
	}
	if len(chain) != 2 || !chain[1].Equal(c.cert) {
		t.Fatalf("chain has %d certificates, want the leaf and the CA certificate", len(chain))
	}
	verifyChainEverywhere(t, root.cert, chain, id)
	compareWithCreateCertificate(t, c, X509SVIDParams{PublicKey: keys["p384"].Public(), SPIFFEID: id, DNSNames: []string{"db"}}, 7)
}

// verifyChainEverywhere checks that chain (leaf first) is an X.509-SVID
// for id under root with go-spiffe, crypto/x509 and openssl.
func verifyChainEverywhere(t *testing.T, root *x509.Certificate, chain []*x509.Certificate, id spiffeid.ID) {
	t.Helper()
	gotID, _, err := x509svid.Verify(chain, x509bundle.FromX509Authorities(fastTD, []*x509.Certificate{root}))
	if err != nil {
		t.Fatalf("x509svid.Verify: %v", err)
	}
	if gotID != id {
		t.Fatalf("x509svid.Verify: ID %s, want %s", gotID, id)
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(root)
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("crypto/x509 Verify: %v", err)
	}
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal("openssl is required (apt-get install -y openssl)")
	}
	dir := t.TempDir()
	write := func(name string, certs ...*x509.Certificate) string {
		var buf bytes.Buffer
		for _, c := range certs {
			if err := pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}); err != nil {
				t.Fatal(err)
			}
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, buf.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	args := []string{"verify", "-CAfile", write("root.pem", root)}
	if len(chain) > 1 {
		args = append(args, "-untrusted", write("inter.pem", chain[1:]...))
	}
	args = append(args, write("leaf.pem", chain[0]))
	out, err := exec.Command("openssl", args...).CombinedOutput()
	if err != nil || !strings.HasSuffix(strings.TrimSpace(string(out)), ": OK") {
		t.Fatalf("openssl verify: %v: %s", err, out)
	}
}

// TestFastSVIDFallsBack: an operator template and a CA key the fast
// encoder does not handle (Ed25519, P-521) take x509.CreateCertificate,
// and still issue.
func TestFastSVIDFallsBack(t *testing.T) {
	keys := fastKeys()
	id := spiffeid.RequireFromPath(fastTD, "/web")
	pub := keys["p256"].Public()

	x, err := ParseX509SVIDTemplate(`{"subject": {"organization": "Example Corp"}}`)
	if err != nil {
		t.Fatal(err)
	}
	c := fastCA(t, keys["ca-p256"], time.Now(), time.Hour)
	c.cfg.X509SVIDTemplate = x
	chain, err := c.SignX509SVID(context.Background(), X509SVIDParams{PublicKey: pub, SPIFFEID: id})
	if err != nil {
		t.Fatal(err)
	}
	if c.fast != nil {
		t.Fatal("the fast encoder was built for a CA with an operator template")
	}
	if o := chain[0].Subject.Organization; len(o) != 1 || o[0] != "Example Corp" {
		t.Fatalf("operator template not applied: organization %q", o)
	}

	for _, kind := range []string{"ed25519", "p521"} {
		c := fastCA(t, keys[kind], time.Now(), time.Hour)
		chain, err := c.SignX509SVID(context.Background(), X509SVIDParams{PublicKey: pub, SPIFFEID: id})
		if err != nil {
			t.Fatalf("%s CA: %v", kind, err)
		}
		if c.fast != nil {
			t.Fatalf("%s CA: fast encoder built", kind)
		}
		if err := chain[0].CheckSignatureFrom(c.cert); err != nil {
			t.Fatalf("%s CA: %v", kind, err)
		}
	}
	if _, err := newSVIDEncoder(fastCA(t, keys["ca-p256"], time.Now(), time.Hour).cert, keys["ca-p384"], nil); err == nil {
		t.Fatal("encoder built for a signer that is not the certificate's key")
	}
}

// recordingObserver counts the failed signatures it is told about.
type recordingObserver struct{ failed atomic.Int64 }

func (o *recordingObserver) KeyOK(string) {}
func (o *recordingObserver) KeyFailed(op string, err error) {
	if op == KeyOpSign {
		o.failed.Add(1)
	}
}

// fixedKM is a KeyManager holding one key.
type fixedKM struct{ key crypto.Signer }

func (k fixedKM) GenerateKey(context.Context, string, KeyType) (crypto.Signer, error) {
	return k.key, nil
}
func (k fixedKM) GetKey(context.Context, string) (crypto.Signer, error) { return k.key, nil }

// TestFastSVIDSampleCatchesWrongKey: an in-process key that stops matching
// the CA certificate (the key behind the CA's re-acquiring signer
// replaced by another) is caught within verifySampleInterval signatures;
// the failure is reported as a failed signature, and from then on every
// signature is verified, so none is issued.
func TestFastSVIDSampleCatchesWrongKey(t *testing.T) {
	keys := fastKeys()
	obs := &recordingObserver{}
	caKey := keys["ca-p256"]
	signer := reacquiring(observeSigner(caKey, obs), fixedKM{caKey}, caKeyID, nil, obs)
	base := fastCA(t, caKey, time.Now(), time.Hour)
	c := newChainedCA(base.cfg, signer, base.cert, nil, true)
	c.cfg.KeyObserver = obs
	id := spiffeid.RequireFromPath(fastTD, "/web")
	p := X509SVIDParams{PublicKey: keys["p256"].Public(), SPIFFEID: id}
	if _, err := c.SignX509SVID(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	if c.fast == nil || !c.fast.checked.Load() || !inProcessKey(signer) {
		t.Fatal("first signature not verified, or key not seen as in-process")
	}

	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer.(*reacquiringSigner).state.Store(&signerState{signer: other})
	caught := -1
	for i := range verifySampleInterval + 1 {
		chain, err := c.SignX509SVID(context.Background(), p)
		if err != nil {
			if !strings.Contains(err.Error(), "does not verify") {
				t.Fatalf("signature %d: unexpected error %v", i, err)
			}
			caught = i
			break
		}
		if chain[0].CheckSignatureFrom(c.cert) == nil {
			t.Fatalf("signature %d by another key verifies", i)
		}
	}
	if caught < 0 {
		t.Fatalf("no verification in %d signatures by the wrong key", verifySampleInterval+1)
	}
	if obs.failed.Load() != 1 {
		t.Fatalf("observer told of %d failed signatures, want 1", obs.failed.Load())
	}
	for i := range 3 {
		if _, err := c.SignX509SVID(context.Background(), p); err == nil {
			t.Fatalf("signature %d after the failure issued an SVID", i)
		}
	}
	if !c.fast.mustVerify(signer) {
		t.Fatal("still sampling after a failed verification")
	}
}

// flakySigner fails its next signature when fail is set.
type flakySigner struct {
	crypto.Signer
	fail atomic.Bool
}

func (s *flakySigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if s.fail.CompareAndSwap(true, false) {
		return nil, errors.New("flaky: HSM unplugged")
	}
	return s.Signer.Sign(r, digest, opts)
}

// TestFastSVIDRechecksAfterSignerError: a signer error is returned, and
// the next signature is verified again; an out-of-process signer (any
// signer that is not a crypto/ecdsa or crypto/rsa key) is always
// verified.
func TestFastSVIDRechecksAfterSignerError(t *testing.T) {
	keys := fastKeys()
	flaky := &flakySigner{Signer: keys["ca-p256"]}
	base := fastCA(t, keys["ca-p256"], time.Now(), time.Hour)
	c := newChainedCA(base.cfg, flaky, base.cert, nil, true)
	p := X509SVIDParams{PublicKey: keys["p256"].Public(), SPIFFEID: spiffeid.RequireFromPath(fastTD, "/web")}
	if _, err := c.SignX509SVID(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	if !c.fast.checked.Load() {
		t.Fatal("first signature not verified")
	}
	if !c.fast.mustVerify(flaky) {
		t.Fatal("an out-of-process signer's signatures are not all verified")
	}
	flaky.fail.Store(true)
	if _, err := c.SignX509SVID(context.Background(), p); err == nil || !strings.Contains(err.Error(), "HSM unplugged") {
		t.Fatalf("signer error not returned: %v", err)
	}
	if c.fast.checked.Load() {
		t.Fatal("a signer error did not reset the first-signature check")
	}
	if _, err := c.SignX509SVID(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	if !c.fast.checked.Load() {
		t.Fatal("signature after the error not verified")
	}
}

// FuzzFastSVID: for any entry (SPIFFE ID path, DNS names separated by
// commas, TTL in seconds), CA key type, and subject key (a CSR's when the
// CSR verifies, else one of each type), SignX509SVID either refuses or
// issues a certificate that verifies, and the fast path's certificate is
// byte for byte x509.CreateCertificate's for the same template and
// randomness.
func FuzzFastSVID(f *testing.F) {
	keys := fastKeys()
	csr := func(k crypto.Signer) []byte {
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, k)
		if err != nil {
			f.Fatal(err)
		}
		return der
	}
	f.Add("/ns/prod/sa/web", "web.example.org", int64(3600), uint8(0), uint8(0), csr(keys["p256"]))
	f.Add("/a", "", int64(0), uint8(1), uint8(3), []byte(nil))
	f.Add("/db/x", "*.db,a&b,_srv.tcp", int64(86400*3), uint8(2), uint8(4), csr(keys["ed25519"]))
	f.Add("/x/y.z", "ünïcode", int64(-5), uint8(0), uint8(1), csr(keys["p384"]))
	now := time.Now()
	var cas []*CA
	for _, kind := range fastCAKinds {
		cas = append(cas, fastCA(f, keys[kind], now, 24*time.Hour))
	}
	f.Fuzz(func(t *testing.T, path, dns string, ttlSeconds int64, caIdx, leafIdx uint8, csrDER []byte) {
		if len(path) > 512 || len(dns) > 4096 || len(csrDER) > MaxCSRSize {
			return
		}
		c := cas[int(caIdx)%len(cas)]
		pub := keys[fastLeafKinds[int(leafIdx)%len(fastLeafKinds)]].Public()
		if len(csrDER) > 0 {
			k, err := VerifyCSR(csrDER)
			if err != nil {
				return
			}
			pub = k
		}
		id, err := spiffeid.FromPath(fastTD, path)
		if err != nil {
			return
		}
		var names []string
		if dns != "" {
			names = strings.Split(dns, ",")
		}
		p := X509SVIDParams{PublicKey: pub, SPIFFEID: id, DNSNames: names, TTL: time.Duration(ttlSeconds%(1<<32)) * time.Second}
		chain, err := c.SignX509SVID(context.Background(), p)
		if err != nil {
			return
		}
		if err := chain[0].CheckSignatureFrom(c.cert); err != nil {
			t.Fatalf("issued SVID does not verify: %v", err)
		}
		if len(chain[0].URIs) != 1 || chain[0].URIs[0].String() != id.String() {
			t.Fatalf("URI SANs %v, want %s", chain[0].URIs, id)
		}
		if fmt.Sprint(chain[0].DNSNames) != fmt.Sprint(names) && !(len(names) == 0 && len(chain[0].DNSNames) == 0) {
			t.Fatalf("DNS SANs %q, want %q", chain[0].DNSNames, names)
		}
		compareWithCreateCertificate(t, c, p, uint64(len(path))<<32|uint64(len(dns)))
	})
}
