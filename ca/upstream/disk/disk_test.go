package disk

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.step.sm/crypto/pemutil"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/clock"
)

func newAuthority(t testing.TB, cfg Config) *Authority {
	t.Helper()
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

func sameChain(t testing.TB, what string, got, want []*x509.Certificate) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s has %d certificates, want %d", what, len(got), len(want))
	}
	for i := range got {
		if !got[i].Equal(want[i]) {
			t.Fatalf("%s[%d] = %s, want %s", what, i, got[i].Subject, want[i].Subject)
		}
	}
}

// The operator's root signs the servers' CA certificates directly: the
// chain is the new certificate alone, the root is the bundle.
func TestMintByRoot(t *testing.T) {
	now := time.Now()
	root := newCert(t, caOpts("Root", now), nil)
	f := writeUpstream(t, root.key, []*x509.Certificate{root.cert}, nil)
	a := newAuthority(t, f.config(clock.NewFake(now)))

	resp, r := mint(t, a, 24*time.Hour)
	sameChain(t, "roots", resp.Roots, []*x509.Certificate{root.cert})
	if len(resp.Chain) != 1 {
		t.Fatalf("chain has %d certificates, want the new CA only", len(resp.Chain))
	}
	c := resp.Chain[0]
	if !c.IsCA || c.MaxPathLen != 0 || !c.MaxPathLenZero || len(c.URIs) != 1 || c.URIs[0].String() != "spiffe://example.org" {
		t.Fatalf("CA certificate: CA %v pathlen %d URIs %v", c.IsCA, c.MaxPathLen, c.URIs)
	}
	if !c.NotAfter.Equal(now.Add(24*time.Hour).Truncate(time.Second)) || !c.NotBefore.Equal(now.Add(-ca.DefaultBackdate).Truncate(time.Second)) {
		t.Fatalf("validity %s to %s, want %s to %s", c.NotBefore, c.NotAfter, now.Add(-ca.DefaultBackdate), now.Add(24*time.Hour))
	}
	if c.Subject.CommonName != "Sigil CA s1" {
		t.Fatalf("subject %s, want the CSR's", c.Subject)
	}
	verifyBoth(t, resp, r, now)

	roots, err := a.Roots(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	sameChain(t, "Roots", roots, []*x509.Certificate{root.cert})
}

// Two levels: root → operator intermediate (cert_file: intermediate then
// root) → Sigil CA; the chain carries the intermediate, not the root.
func TestMintTwoLevels(t *testing.T) {
	now := time.Now()
	root := newCert(t, caOpts("Root", now), nil)
	inter := newCert(t, caOpts("Operator Intermediate", now), root)
	f := writeUpstream(t, inter.key, []*x509.Certificate{inter.cert, root.cert}, nil)
	a := newAuthority(t, f.config(clock.NewFake(now)))

	resp, r := mint(t, a, time.Hour)
	sameChain(t, "roots", resp.Roots, []*x509.Certificate{root.cert})
	sameChain(t, "chain[1:]", resp.Chain[1:], []*x509.Certificate{inter.cert})
	if err := resp.Chain[0].CheckSignatureFrom(inter.cert); err != nil {
		t.Fatalf("the CA certificate is not signed by the intermediate: %v", err)
	}
	verifyBoth(t, resp, r, now)
}

// Three levels with bundle_file: cert_file holds the signing certificate
// and the intermediate above it; the root is in bundle_file only. Path
// lengths that leave exactly enough room are accepted.
func TestMintBundleFileThreeLevels(t *testing.T) {
	now := time.Now()
	ro := caOpts("Root", now)
	ro.pathLen = 3
	root := newCert(t, ro, nil)
	io := caOpts("Policy CA", now)
	io.pathLen = 2
	inter := newCert(t, io, root)
	so := caOpts("Issuing CA", now)
	so.pathLen = 1 // one Sigil CA below, exactly
	signing := newCert(t, so, inter)
	f := writeUpstream(t, signing.key, []*x509.Certificate{signing.cert, inter.cert}, []*x509.Certificate{root.cert})
	a := newAuthority(t, f.config(clock.NewFake(now)))

	resp, r := mint(t, a, time.Hour)
	sameChain(t, "roots", resp.Roots, []*x509.Certificate{root.cert})
	sameChain(t, "chain[1:]", resp.Chain[1:], []*x509.Certificate{signing.cert, inter.cert})
	verifyBoth(t, resp, r, now)
}

// The CA certificate never outlives the signing certificate, nor a
// certificate above it.
func TestMintNotAfterCut(t *testing.T) {
	now := time.Now()
	ro := caOpts("Root", now)
	ro.notAfter = now.Add(48 * time.Hour)
	root := newCert(t, ro, nil)
	inter := newCert(t, caOpts("Intermediate", now), root) // outlives its root
	f := writeUpstream(t, inter.key, []*x509.Certificate{inter.cert, root.cert}, nil)
	a := newAuthority(t, f.config(clock.NewFake(now)))
	resp, _ := mint(t, a, 30*24*time.Hour)
	if got := resp.Chain[0].NotAfter; !got.Equal(root.cert.NotAfter) {
		t.Fatalf("NotAfter %s, want the root's %s", got, root.cert.NotAfter)
	}

	so := caOpts("Short", now)
	so.notAfter = now.Add(2 * time.Hour)
	short := newCert(t, so, nil)
	f = writeUpstream(t, short.key, []*x509.Certificate{short.cert}, nil)
	a = newAuthority(t, f.config(clock.NewFake(now)))
	resp, _ = mint(t, a, 30*24*time.Hour)
	if got := resp.Chain[0].NotAfter; !got.Equal(short.cert.NotAfter) {
		t.Fatalf("NotAfter %s, want the signing certificate's %s", got, short.cert.NotAfter)
	}
}

// Requests for another trust domain, or whose CSR names another, are
// refused; a canceled context is honoured.
func TestMintRefusals(t *testing.T) {
	now := time.Now()
	root := newCert(t, caOpts("Root", now), nil)
	f := writeUpstream(t, root.key, []*x509.Certificate{root.cert}, nil)
	a := newAuthority(t, f.config(clock.NewFake(now)))
	other := spiffeid.RequireTrustDomainFromString("other.org")

	_, err := a.MintX509CA(context.Background(), ca.X509CARequest{CSR: newCSR(t, other).der, TrustDomain: other, TTL: time.Hour})
	if err == nil || !strings.Contains(err.Error(), `ca/upstream/disk: CA requested for trust domain "other.org", this upstream signs for "example.org"`) {
		t.Fatalf("other trust domain: %v", err)
	}
	_, err = a.MintX509CA(context.Background(), ca.X509CARequest{CSR: newCSR(t, other).der, TrustDomain: td, TTL: time.Hour})
	if err == nil || !strings.Contains(err.Error(), "exactly one URI SAN, spiffe://example.org") {
		t.Fatalf("CSR of another trust domain: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := a.MintX509CA(ctx, ca.X509CARequest{CSR: newCSR(t, td).der, TrustDomain: td, TTL: time.Hour}); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled: %v", err)
	}
	if _, err := a.Roots(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Roots canceled: %v", err)
	}
}

// Concurrent mints (under -race) each get a CA certificate.
func TestMintConcurrent(t *testing.T) {
	now := time.Now()
	root := newCert(t, caOpts("Root", now), nil)
	f := writeUpstream(t, root.key, []*x509.Certificate{root.cert}, nil)
	a := newAuthority(t, f.config(clock.NewFake(now)))
	reqs := make([]csr, 8)
	for i := range reqs {
		reqs[i] = newCSR(t, td)
	}
	var wg sync.WaitGroup
	errs := make([]error, len(reqs))
	for i := range reqs {
		wg.Go(func() {
			_, errs[i] = a.MintX509CA(context.Background(), ca.X509CARequest{CSR: reqs[i].der, TrustDomain: td, TTL: time.Hour})
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

// The signing certificate expired after the start: minting fails clearly.
func TestMintAfterExpiry(t *testing.T) {
	now := time.Now()
	o := caOpts("Root", now)
	o.notAfter = now.Add(time.Hour)
	root := newCert(t, o, nil)
	f := writeUpstream(t, root.key, []*x509.Certificate{root.cert}, nil)
	clk := clock.NewFake(now)
	a := newAuthority(t, f.config(clk))
	clk.Add(2 * time.Hour)
	_, err := a.MintX509CA(context.Background(), ca.X509CARequest{CSR: newCSR(t, td).der, TrustDomain: td, TTL: time.Hour})
	if err == nil || !strings.Contains(err.Error(), `ca/upstream/disk: cert_file `+f.cert+`: the signing certificate "CN=Root,O=Operator" expired at `) {
		t.Fatalf("mint with an expired signing certificate: %v", err)
	}
}

// URI name constraints that permit the trust domain are accepted, and the
// minted chain verifies with them (openssl checks name constraints).
func TestNameConstraintsPermitting(t *testing.T) {
	now := time.Now()
	ro := caOpts("Root", now)
	ro.permitURIs = []string{"example.org", "other.net"}
	ro.excludeURIs = []string{"bad.example.org"}
	root := newCert(t, ro, nil)
	io := caOpts("Intermediate", now)
	io.permitURIs = []string{"example.org"}
	inter := newCert(t, io, root)
	f := writeUpstream(t, inter.key, []*x509.Certificate{inter.cert, root.cert}, nil)
	a := newAuthority(t, f.config(clock.NewFake(now)))
	resp, r := mint(t, a, time.Hour)
	verifyBoth(t, resp, r, now)
}

func TestURIDomainMatch(t *testing.T) {
	for _, c := range []struct {
		constraint, host string
		want             bool
	}{
		{"", "example.org", true},
		{"example.org", "example.org", true},
		{"EXAMPLE.org", "example.ORG", true},
		{"example.org", "a.example.org", true},
		{"example.org", "badexample.org", false},
		{".example.org", "example.org", false},
		{".example.org", "a.example.org", true},
		{"a.example.org", "example.org", false},
		{"org", "example.org", true},
	} {
		if got := uriDomainMatch(c.constraint, c.host); got != c.want {
			t.Errorf("uriDomainMatch(%q, %q) = %v, want %v", c.constraint, c.host, got, c.want)
		}
	}
}

// Each failure at start is an error naming the file or field and what is
// wrong.
func TestStartErrors(t *testing.T) {
	now := time.Now()
	root := newCert(t, caOpts("Root", now), nil)
	inter := newCert(t, caOpts("Intermediate", now), root)
	stranger := newCert(t, caOpts("Stranger", now), nil)

	type tc struct {
		name string
		cfg  func(t *testing.T) Config
		want string
	}
	// upstream is a valid two-level upstream whose files mod may change.
	upstream := func(mod func(t *testing.T, f *files)) func(t *testing.T) Config {
		return func(t *testing.T) Config {
			f := writeUpstream(t, inter.key, []*x509.Certificate{inter.cert, root.cert}, nil)
			if mod != nil {
				mod(t, &f)
			}
			return f.config(clock.NewFake(now))
		}
	}
	// signedBy returns files where the signing certificate is made with
	// o under root (or self-signed if selfSigned).
	signedBy := func(o certOpts, selfSigned bool) func(t *testing.T) Config {
		return func(t *testing.T) Config {
			if selfSigned {
				c := newCert(t, o, nil)
				return writeUpstream(t, c.key, []*x509.Certificate{c.cert}, nil).config(clock.NewFake(now))
			}
			c := newCert(t, o, root)
			return writeUpstream(t, c.key, []*x509.Certificate{c.cert, root.cert}, nil).config(clock.NewFake(now))
		}
	}
	with := func(f func(o *certOpts)) certOpts {
		o := caOpts("Signing", now)
		f(&o)
		return o
	}
	cases := []tc{
		{"missing cert_file", upstream(func(t *testing.T, f *files) { os.Remove(f.cert) }), "ca/upstream/disk: cert_file %CERT%: no such file or directory"},
		{"missing key_file", upstream(func(t *testing.T, f *files) { os.Remove(f.keyPEM) }), "ca/upstream/disk: key_file %KEY%: no such file or directory"},
		{"missing bundle_file", upstream(func(t *testing.T, f *files) { f.bundle = filepath.Join(f.dir, "nope.pem") }), "ca/upstream/disk: bundle_file %DIR%/nope.pem: no such file or directory"},
		{"cert_file not PEM", upstream(func(t *testing.T, f *files) { writeFile(t, f.cert, []byte("hello")) }), "ca/upstream/disk: cert_file %CERT% holds no PEM certificate"},
		{"cert_file cut short", upstream(func(t *testing.T, f *files) {
			b, _ := os.ReadFile(f.cert)
			writeFile(t, f.cert, b[:len(b)-40])
		}), "ca/upstream/disk: cert_file %CERT%: a PEM block is damaged or cut short"},
		{"cert_file holds a key", upstream(func(t *testing.T, f *files) { writeFile(t, f.cert, pemKey(t, inter.key)) }), `ca/upstream/disk: cert_file %CERT%: PEM block 1 is a "PRIVATE KEY", not a CERTIFICATE`},
		{"key_file not a key", upstream(func(t *testing.T, f *files) { writeFile(t, f.keyPEM, pemCerts(inter.cert)) }), `ca/upstream/disk: key_file %KEY% holds a PEM "CERTIFICATE" block: it must hold the private key only`},
		{"key_file readable by others", upstream(func(t *testing.T, f *files) { os.Chmod(f.keyPEM, 0o644) }), "ca/upstream/disk: key_file %KEY% is accessible by others (mode 0644)"},
		{"no root and no bundle_file", upstream(func(t *testing.T, f *files) { writeFile(t, f.cert, pemCerts(inter.cert)) }), "ca/upstream/disk: cert_file %CERT% does not end with a self-signed root certificate and bundle_file is not set"},
		{"key mismatch", upstream(func(t *testing.T, f *files) { writeFile(t, f.keyPEM, pemKey(t, stranger.key)) }), `ca/upstream/disk: the key does not match the signing certificate "CN=Intermediate,O=Operator" (the first certificate of cert_file %CERT%)`},
		{"chain does not verify to bundle_file", upstream(func(t *testing.T, f *files) {
			writeFile(t, f.cert, pemCerts(inter.cert))
			f.bundle = writeFile(t, filepath.Join(f.dir, "root.pem"), pemCerts(stranger.cert))
		}), `ca/upstream/disk: cert_file %CERT%: the signing certificate "CN=Intermediate,O=Operator" does not verify to the roots of bundle_file %DIR%/root.pem now: x509: certificate signed by unknown authority`},
		{"bundle root not a CA", upstream(func(t *testing.T, f *files) {
			o := caOpts("Leaf", now)
			o.notCA = true
			f.bundle = writeFile(t, filepath.Join(f.dir, "root.pem"), pemCerts(newCert(t, o, nil).cert))
		}), `ca/upstream/disk: the roots of bundle_file %DIR%/root.pem: root 1 ("CN=Leaf,O=Operator") is not a CA certificate`},
		{"not a CA", signedBy(with(func(o *certOpts) { o.notCA = true }), false), `ca/upstream/disk: cert_file %CERT%: the signing certificate "CN=Signing,O=Operator" is not a CA certificate`},
		{"no certSign", signedBy(with(func(o *certOpts) { o.keyUsage = x509.KeyUsageDigitalSignature }), false), `the signing certificate "CN=Signing,O=Operator" lacks the certSign key usage`},
		{"path length 0", signedBy(with(func(o *certOpts) { o.pathLen = 0 }), false), `ca/upstream/disk: cert_file %CERT%: the signing certificate "CN=Signing,O=Operator" has path length 0: it may sign leaf certificates only`},
		{"self-signed path length 0", signedBy(with(func(o *certOpts) { o.pathLen = 0 }), true), `the signing certificate "CN=Signing,O=Operator" has path length 0`},
		{"root path length leaves no room", func(t *testing.T) Config {
			ro := caOpts("Tight Root", now)
			ro.pathLen = 0
			r := newCert(t, ro, nil)
			s := newCert(t, caOpts("Signing", now), r)
			return writeUpstream(t, s.key, []*x509.Certificate{s.cert, r.cert}, nil).config(clock.NewFake(now))
		}, `ca/upstream/disk: cert_file %CERT%: certificate "CN=Tight Root,O=Operator", 1 above the signing certificate, has path length 0: it allows no Sigil CA certificate under the signing certificate (that needs at least 2)`},
		{"expired", signedBy(with(func(o *certOpts) { o.notBefore, o.notAfter = now.Add(-48*time.Hour), now.Add(-time.Hour) }), false), `the signing certificate "CN=Signing,O=Operator" expired at `},
		{"not yet valid", signedBy(with(func(o *certOpts) { o.notBefore = now.Add(time.Hour) }), false), `the signing certificate "CN=Signing,O=Operator" is not valid before `},
		{"name constraints permit another domain", signedBy(with(func(o *certOpts) { o.permitURIs = []string{"other.org"} }), false), `ca/upstream/disk: cert_file %CERT%: certificate "CN=Signing,O=Operator" has URI name constraints that permit only URIs of ["other.org"], not of the trust domain example.org`},
		{"name constraints exclude the trust domain", signedBy(with(func(o *certOpts) { o.excludeURIs = []string{"example.org"} }), false), `certificate "CN=Signing,O=Operator" has URI name constraints that exclude URIs of "example.org", which covers the trust domain example.org`},
		{"root name constraints exclude the trust domain", func(t *testing.T) Config {
			ro := caOpts("Constrained Root", now)
			ro.permitURIs = []string{".example.org"}
			r := newCert(t, ro, nil)
			s := newCert(t, caOpts("Signing", now), r)
			return writeUpstream(t, s.key, []*x509.Certificate{s.cert, r.cert}, nil).config(clock.NewFake(now))
		}, `certificate "CN=Constrained Root,O=Operator" has URI name constraints that permit only URIs of [".example.org"], not of the trust domain example.org`},
		{"encrypted key without passphrase", upstream(func(t *testing.T, f *files) { writeFile(t, f.keyPEM, encryptedKey(t, inter, "correct horse battery")) }), "ca/upstream/disk: key_file %KEY% is encrypted and no passphrase is configured: set passphrase_file or passphrase_env"},
		{"encrypted key with a wrong passphrase", func(t *testing.T) Config {
			cfg := upstream(func(t *testing.T, f *files) { writeFile(t, f.keyPEM, encryptedKey(t, inter, "correct horse battery")) })(t)
			cfg.Passphrase = []byte("wrong horse battery")
			return cfg
		}, "ca/upstream/disk: cannot decrypt key_file %KEY%: wrong passphrase or damaged file"},
		{"clear key with a passphrase", func(t *testing.T) Config {
			cfg := upstream(nil)(t)
			cfg.Passphrase = []byte("correct horse battery")
			return cfg
		}, "ca/upstream/disk: key_file %KEY% is not encrypted but a passphrase is configured"},
		{"no key", func(t *testing.T) Config {
			cfg := upstream(nil)(t)
			cfg.KeyFile = ""
			return cfg
		}, "ca/upstream/disk: no key: set key_file or key_pkcs11"},
		{"no trust domain", func(t *testing.T) Config {
			cfg := upstream(nil)(t)
			cfg.TrustDomain = spiffeid.TrustDomain{}
			return cfg
		}, "ca/upstream/disk: the trust domain is not set"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := c.cfg(t)
			a, err := New(cfg)
			if err == nil {
				a.Close()
				t.Fatal("New succeeded")
			}
			want := strings.NewReplacer("%CERT%", cfg.CertFile, "%KEY%", cfg.KeyFile, "%DIR%", filepath.Dir(cfg.CertFile)).Replace(c.want)
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("error\n  %v\nwant it to contain\n  %s", err, want)
			}
			if strings.Count(err.Error(), "ca/upstream/disk:") != 1 {
				t.Fatalf("prefix not exactly once: %v", err)
			}
		})
	}
}

// encryptedKey is the key of c as an "ENCRYPTED PRIVATE KEY" (PKCS#8,
// PBES2, AES-256-CBC) under pass.
func encryptedKey(t testing.TB, c *issued, pass string) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(c.key)
	if err != nil {
		t.Fatal(err)
	}
	b, err := pemutil.EncryptPKCS8PrivateKey(rand.Reader, der, []byte(pass), x509.PEMCipherAES256)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(b)
}

// An encrypted key_file with the right passphrase works, whether
// pemutil or the real openssl (PKCS#8 with PBES2, and a legacy SEC 1
// key with a DEK-Info header) encrypted it.
func TestEncryptedKey(t *testing.T) {
	now := time.Now()
	root := newCert(t, caOpts("Root", now), nil)
	const pass = "correct horse battery"
	f := writeUpstream(t, root.key, []*x509.Certificate{root.cert}, nil)
	writeFile(t, f.keyPEM, encryptedKey(t, root, pass))
	cfg := f.config(clock.NewFake(now))
	cfg.Passphrase = []byte(pass)
	a := newAuthority(t, cfg)
	resp, r := mint(t, a, time.Hour)
	verifyBoth(t, resp, r, now)

	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatal("openssl is not in PATH: apt-get install -y openssl")
	}
	clearKey := writeFile(t, filepath.Join(f.dir, "clear.key"), pemKey(t, root.key))
	for name, args := range map[string][]string{
		"pkcs8": {"pkcs8", "-topk8", "-v2", "aes-256-cbc", "-in", clearKey, "-passout", "pass:" + pass},
		"sec1":  {"ec", "-aes256", "-in", clearKey, "-passout", "pass:" + pass},
	} {
		t.Run(name, func(t *testing.T) {
			out, err := exec.Command(openssl, append(args, "-out", f.keyPEM)...).CombinedOutput()
			if err != nil {
				t.Fatalf("openssl %v: %v\n%s", args, err, out)
			}
			os.Chmod(f.keyPEM, 0o600)
			a := newAuthority(t, cfg)
			resp, r := mint(t, a, time.Hour)
			verifyBoth(t, resp, r, now)
			bad := cfg
			bad.Passphrase = []byte("not the passphrase")
			if _, err := New(bad); err == nil || !strings.Contains(err.Error(), "wrong passphrase") {
				t.Fatalf("wrong passphrase: %v", err)
			}
		})
	}
}

// After Close, MintX509CA and Roots fail.
func TestClose(t *testing.T) {
	now := time.Now()
	root := newCert(t, caOpts("Root", now), nil)
	f := writeUpstream(t, root.key, []*x509.Certificate{root.cert}, nil)
	a := newAuthority(t, f.config(clock.NewFake(now)))
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.MintX509CA(context.Background(), ca.X509CARequest{CSR: newCSR(t, td).der, TrustDomain: td, TTL: time.Hour}); !errors.Is(err, errClosed) {
		t.Fatalf("mint after Close: %v", err)
	}
	if _, err := a.Roots(context.Background()); !errors.Is(err, errClosed) {
		t.Fatalf("Roots after Close: %v", err)
	}
}

// Keys as openssl writes them, in clear: SEC 1 after EC PARAMETERS
// (openssl ecparam -genkey), PKCS#1 RSA (genrsa -traditional), PKCS#8
// Ed25519 (genpkey): each signs CA certificates whose chains verify.
func TestKeyFormats(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatal("openssl is not in PATH: apt-get install -y openssl")
	}
	now := time.Now()
	for name, c := range map[string]struct {
		args  []string
		block string
	}{
		"sec1":    {[]string{"ecparam", "-name", "prime256v1", "-genkey", "-out", "OUT"}, "EC PRIVATE KEY"},
		"pkcs1":   {[]string{"genrsa", "-traditional", "-out", "OUT", "2048"}, "RSA PRIVATE KEY"},
		"ed25519": {[]string{"genpkey", "-algorithm", "ed25519", "-out", "OUT"}, "PRIVATE KEY"},
	} {
		t.Run(name, func(t *testing.T) {
			keyFile := filepath.Join(t.TempDir(), "ca.key")
			args := slices.Clone(c.args)
			args[slices.Index(args, "OUT")] = keyFile
			out, err := exec.Command(openssl, args...).CombinedOutput()
			if err != nil {
				t.Fatalf("openssl %v: %v\n%s", c.args, err, out)
			}
			if err := os.Chmod(keyFile, 0o600); err != nil {
				t.Fatal(err)
			}
			b, _ := os.ReadFile(keyFile)
			if !strings.Contains(string(b), "-----BEGIN "+c.block+"-----") {
				t.Fatalf("openssl wrote no %s block:\n%s", c.block, b)
			}
			key, err := readKeyFile(keyFile, nil)
			if err != nil {
				t.Fatal(err)
			}
			o := caOpts("Root "+name, now)
			o.key = key
			root := newCert(t, o, nil)
			f := writeUpstream(t, key, []*x509.Certificate{root.cert}, nil)
			f.keyPEM = keyFile
			a := newAuthority(t, f.config(clock.NewFake(now)))
			resp, r := mint(t, a, time.Hour)
			verifyBoth(t, resp, r, now)
		})
	}
}
