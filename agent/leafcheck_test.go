package agent

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// leafCA is a CA for the leaf-check tests: like a Sigil server's CA
// (name constraints: URIs only in the trust domain, no IP addresses),
// optionally under an intermediate (chain: what follows the leaf).
type leafCA struct {
	cert  *x509.Certificate
	key   crypto.Signer
	chain []*x509.Certificate
}

func newLeafCA(t *testing.T, now time.Time, parent *leafCA, edit func(*x509.Certificate)) *leafCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:                big.NewInt(testSerial.Add(1)),
		Subject:                     pkix.Name{CommonName: "leaf check CA"},
		NotBefore:                   now.Add(-time.Hour),
		NotAfter:                    now.Add(24 * time.Hour),
		IsCA:                        true,
		BasicConstraintsValid:       true,
		KeyUsage:                    x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		PermittedDNSDomainsCritical: true,
		PermittedURIDomains:         []string{testTD.Name()},
		ExcludedIPRanges:            []*net.IPNet{{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}},
		URIs:                        []*url.URL{testTD.ID().URL()},
	}
	if edit != nil {
		edit(tmpl)
	}
	issuer, signer := tmpl, crypto.Signer(key)
	if parent != nil {
		issuer, signer = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, key.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ca := &leafCA{cert: cert, key: key}
	if parent != nil {
		ca.chain = append([]*x509.Certificate{cert}, parent.chain...)
	}
	return ca
}

// leaf issues an SVID for id over pub, edited by edit (nil: none).
func (ca *leafCA) leaf(t *testing.T, id spiffeid.ID, pub crypto.PublicKey, now time.Time, edit func(*x509.Certificate)) []*x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(testSerial.Add(1)),
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{id.URL()},
	}
	if edit != nil {
		edit(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return append([]*x509.Certificate{cert}, ca.chain...)
}

// tampered is chain with one byte of the leaf's signature changed.
func tampered(t *testing.T, chain []*x509.Certificate) []*x509.Certificate {
	t.Helper()
	der := append([]byte(nil), chain[0].Raw...)
	der[len(der)-5] ^= 0x01 // inside the signature's s
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return append([]*x509.Certificate{cert}, chain[1:]...)
}

// leafJob is a mint job for id with a fresh key.
func leafJob(t *testing.T, n int) (*mintJob, spiffeid.ID) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromPath(testTD, fmt.Sprintf("/w/%d", n))
	return &mintJob{id: fmt.Sprint(n), gen: 1, fp: entryFingerprint{spiffeID: id.String()}, key: key}, id
}

// check runs checkMints on one job per chain (the chains are issued for
// the jobs' keys by issue) and returns which verified.
func checkChains(t *testing.T, v *leafVerifier, bundle *x509bundle.Bundle, now time.Time, issue []func(*mintJob, spiffeid.ID) []*x509.Certificate) (ok []bool, sampleFailed bool) {
	t.Helper()
	jobs := make([]*mintJob, len(issue))
	outs := make([]mintOutcome, len(issue))
	for i, f := range issue {
		job, id := leafJob(t, i)
		jobs[i] = job
		outs[i].chain = f(job, id)
	}
	results, failed := checkMints(jobs, outs, v, bundle, now)
	ok = make([]bool, len(results))
	for i, r := range results {
		if r.err != nil {
			t.Fatalf("job %d: %v", i, r.err)
		}
		ok[i] = r.verErr == nil
	}
	return ok, failed
}

func good(t *testing.T, ca *leafCA, now time.Time) func(*mintJob, spiffeid.ID) []*x509.Certificate {
	return func(j *mintJob, id spiffeid.ID) []*x509.Certificate { return ca.leaf(t, id, j.key.Public(), now, nil) }
}

func bad(t *testing.T, ca *leafCA, now time.Time) func(*mintJob, spiffeid.ID) []*x509.Certificate {
	return func(j *mintJob, id spiffeid.ID) []*x509.Certificate {
		return tampered(t, ca.leaf(t, id, j.key.Public(), now, nil))
	}
}

func wantOK(t *testing.T, what string, got []bool, want ...bool) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("%s: verified %v, want %v", what, got, want)
	}
}

// TestLeafCheckIssuerNotInBundleNeverInstalled: whatever the sampling,
// an SVID whose issuer is not in the bundle does not verify, also when
// an issuer of the same name was verified before, and when it comes with
// an intermediate the bundle does not lead to.
func TestLeafCheckIssuerNotInBundleNeverInstalled(t *testing.T) {
	now := time.Now()
	inBundle := newLeafCA(t, now, nil, nil)
	other := newLeafCA(t, now, nil, nil) // same subject name, another key
	outsideRoot := newLeafCA(t, now, nil, nil)
	outsideInter := newLeafCA(t, now, outsideRoot, nil)
	bundle := x509bundle.FromX509Authorities(testTD, []*x509.Certificate{inBundle.cert})
	for _, interval := range []uint64{1, 4, 1 << 40} {
		v := newLeafVerifier(interval)
		got, _ := checkChains(t, v, bundle, now, []func(*mintJob, spiffeid.ID) []*x509.Certificate{
			good(t, other, now), good(t, inBundle, now), good(t, inBundle, now), good(t, other, now),
			good(t, outsideInter, now), good(t, inBundle, now), good(t, other, now), good(t, outsideInter, now),
		})
		wantOK(t, fmt.Sprintf("interval %d", interval), got, false, true, true, false, false, true, false, false)

		// Without an authority key identifier, the issuer's name alone
		// does not make a leaf match: the other CA's leaf is refused.
		got, _ = checkChains(t, v, bundle, now, []func(*mintJob, spiffeid.ID) []*x509.Certificate{
			noAKI(t, inBundle, now), noAKI(t, inBundle, now), noAKI(t, other, now), noAKI(t, inBundle, now), noAKI(t, other, now),
		})
		wantOK(t, fmt.Sprintf("interval %d, no AKI", interval), got, true, true, false, true, false)
	}
}

// noAKI issues leaves without an authority key identifier.
func noAKI(t *testing.T, ca *leafCA, now time.Time) func(*mintJob, spiffeid.ID) []*x509.Certificate {
	anon := *ca
	c := *ca.cert
	c.SubjectKeyId = nil
	anon.cert = &c
	return func(j *mintJob, id spiffeid.ID) []*x509.Certificate {
		chain := anon.leaf(t, id, j.key.Public(), now, nil)
		if len(chain[0].AuthorityKeyId) != 0 {
			t.Fatal("leaf has an AKI")
		}
		return chain
	}
}

// TestLeafCheckTamperedSignature: a leaf with a bad signature is refused
// when it is the first of its issuer, in every position with interval 1,
// and when it is sampled; a sampled failure refuses every bad leaf of its
// batch, the unsampled ones before it included, and every later one.
func TestLeafCheckTamperedSignature(t *testing.T) {
	now := time.Now()
	ca := newLeafCA(t, now, nil, nil)
	bundle := x509bundle.FromX509Authorities(testTD, []*x509.Certificate{ca.cert})
	g, b := good(t, ca, now), bad(t, ca, now)

	v := newLeafVerifier(1)
	got, _ := checkChains(t, v, bundle, now, []func(*mintJob, spiffeid.ID) []*x509.Certificate{b, g, b, g, b, b})
	wantOK(t, "interval 1", got, false, true, false, true, false, false)

	// Interval 4: the first good leaf is verified fully (its issuer is
	// new); the next matching leaves are numbered 1, 2, 3, 4: the 4th is
	// in the sample.
	v = newLeafVerifier(4)
	got, failed := checkChains(t, v, bundle, now, []func(*mintJob, spiffeid.ID) []*x509.Certificate{g, b, b, g, b, g})
	if !failed || !v.full.Load() {
		t.Fatalf("sampled bad signature: sampleFailed %v, full %v", failed, v.full.Load())
	}
	wantOK(t, "batch with a sampled bad leaf", got, true, false, false, true, false, true)
	got, failed = checkChains(t, v, bundle, now, []func(*mintJob, spiffeid.ID) []*x509.Certificate{b, g, b, g, b})
	wantOK(t, "after a sampled failure", got, false, true, false, true, false)
	if failed {
		t.Fatal("a second failure reported as a new sample failure")
	}

	// A bad first leaf of an issuer is verified fully.
	v = newLeafVerifier(1 << 40)
	got, _ = checkChains(t, v, bundle, now, []func(*mintJob, spiffeid.ID) []*x509.Certificate{b, g})
	wantOK(t, "bad first leaf", got, false, true)
}

// TestLeafCheckAgreesWithVerify: with every signature checked (interval
// 1), the check against a verified issuer accepts exactly what
// x509svid.Verify accepts, for leaves that differ from the verified one in
// every way the check looks at, under a root and under an intermediate.
func TestLeafCheckAgreesWithVerify(t *testing.T) {
	now := time.Now()
	root := newLeafCA(t, now, nil, nil)
	inter := newLeafCA(t, now, root, func(c *x509.Certificate) { c.Subject.CommonName = "intermediate" })
	shortInter := newLeafCA(t, now, root, func(c *x509.Certificate) {
		c.Subject.CommonName = "short intermediate"
		c.NotAfter = now.Add(30 * time.Minute)
	})
	dnsConstrained := newLeafCA(t, now, root, func(c *x509.Certificate) {
		c.Subject.CommonName = "DNS constrained"
		c.PermittedDNSDomains = []string{"example.com"}
	})
	bundle := x509bundle.FromX509Authorities(testTD, []*x509.Certificate{root.cert})
	other := spiffeid.RequireFromString("spiffe://other.org/w")
	edits := map[string]func(*x509.Certificate){
		"as issued":     nil,
		"expired":       func(c *x509.Certificate) { c.NotBefore, c.NotAfter = now.Add(-2*time.Hour), now.Add(-time.Hour) },
		"not yet valid": func(c *x509.Certificate) { c.NotBefore = now.Add(time.Hour); c.NotAfter = now.Add(2 * time.Hour) },
		"CA":            func(c *x509.Certificate) { c.IsCA, c.BasicConstraintsValid = true, true },
		"cert sign":     func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageCertSign },
		"CRL sign":      func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageCRLSign },
		"IP address":    func(c *x509.Certificate) { c.IPAddresses = []net.IP{net.IPv4(10, 0, 0, 1)} },
		"email":         func(c *x509.Certificate) { c.EmailAddresses = []string{"a@example.org"} },
		"DNS in domain": func(c *x509.Certificate) { c.DNSNames = []string{"db.example.com"} },
		"DNS outside":   func(c *x509.Certificate) { c.DNSNames = []string{"db.example.net"} },
		"other TD":      func(c *x509.Certificate) { c.URIs = []*url.URL{other.URL()} },
		"SHA-384":       func(c *x509.Certificate) { c.SignatureAlgorithm = x509.ECDSAWithSHA384 },
		"critical unknown": func(c *x509.Certificate) {
			c.ExtraExtensions = []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 2, 3, 4}, Critical: true, Value: []byte{5, 0}}}
		},
		"long lived": func(c *x509.Certificate) { c.NotAfter = now.Add(48 * time.Hour) },
	}
	for _, ca := range []*leafCA{root, inter, shortInter, dnsConstrained} {
		for _, at := range []time.Time{now, now.Add(45 * time.Minute)} {
			v := newLeafVerifier(1)
			// The first leaf makes the issuer verified.
			job, id := leafJob(t, 0)
			if failed, err := v.verify(ca.leaf(t, id, job.key.Public(), now, nil), bundle, now); err != nil || failed {
				t.Fatalf("%s: first leaf: %v", ca.cert.Subject.CommonName, err)
			}
			for name, edit := range edits {
				job, id := leafJob(t, 1)
				chain := ca.leaf(t, id, job.key.Public(), now, edit)
				_, _, want := x509svid.Verify(chain, bundle, x509svid.WithTime(at))
				_, got := v.verify(chain, bundle, at)
				if (got == nil) != (want == nil) {
					t.Errorf("%s, %s, at +%v: check %v, x509svid.Verify %v", ca.cert.Subject.CommonName, name, at.Sub(now), got, want)
				}
			}
		}
	}
}

// TestLeafCheckAcrossRotation: issuers verified under one bundle are
// forgotten when the bundle changes: a CA dropped from the bundle signs
// nothing the agent installs, and a new CA's SVIDs verify once it is in.
func TestLeafCheckAcrossRotation(t *testing.T) {
	now := time.Now()
	oldCA := newLeafCA(t, now, nil, nil)
	newCA := newLeafCA(t, now, nil, nil)
	v := newLeafVerifier(1 << 40)
	b1 := x509bundle.FromX509Authorities(testTD, []*x509.Certificate{oldCA.cert})
	got, _ := checkChains(t, v, b1, now, []func(*mintJob, spiffeid.ID) []*x509.Certificate{good(t, oldCA, now), good(t, newCA, now), good(t, oldCA, now)})
	wantOK(t, "old bundle", got, true, false, true)
	b2 := x509bundle.FromX509Authorities(testTD, []*x509.Certificate{oldCA.cert, newCA.cert})
	got, _ = checkChains(t, v, b2, now, []func(*mintJob, spiffeid.ID) []*x509.Certificate{good(t, newCA, now), good(t, oldCA, now), good(t, newCA, now)})
	wantOK(t, "both CAs", got, true, true, true)
	b3 := x509bundle.FromX509Authorities(testTD, []*x509.Certificate{newCA.cert})
	got, _ = checkChains(t, v, b3, now, []func(*mintJob, spiffeid.ID) []*x509.Certificate{good(t, oldCA, now), good(t, newCA, now), good(t, oldCA, now)})
	wantOK(t, "old CA dropped", got, false, true, false)
}

// BenchmarkMintCheck is the agent's CPU per minted SVID outside the
// server: a key and its request (make), then the returned chain parsed,
// checked and verified (check). "full" is every SVID verified with
// x509svid.Verify and the request made by x509.CreateCertificateRequest
// (the agent before leafcheck.go and csr.go); "every" checks every
// signature against the verified issuer; "sampled" is the agent's
// default. The server's signing is done before the timer runs.
func BenchmarkMintCheck(b *testing.B) {
	now := time.Now()
	ca := newTestCA(b, now)
	bundle := x509bundle.FromX509Authorities(testTD, []*x509.Certificate{ca.cert})
	const batch = 100
	for _, mode := range []string{"full", "every", "sampled"} {
		b.Run("make/"+mode, func(b *testing.B) {
			for b.Loop() {
				var err error
				if mode == "full" {
					_, _, err = newKeyAndCSR()
				} else {
					_, _, err = newMintKeyAndCSR()
				}
				if err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("check/"+mode, func(b *testing.B) {
			var v *leafVerifier
			switch mode {
			case "every":
				v = newLeafVerifier(1)
			case "sampled":
				v = newLeafVerifier(leafVerifyInterval)
			}
			jobs := make([]*mintJob, batch)
			ders := make([][][]byte, batch)
			for i := range jobs {
				key, _, err := newMintKeyAndCSR()
				if err != nil {
					b.Fatal(err)
				}
				id := spiffeid.RequireFromPath(testTD, fmt.Sprintf("/w/%d", i))
				jobs[i] = &mintJob{id: fmt.Sprint(i), fp: entryFingerprint{spiffeID: id.String()}, key: key}
				ders[i] = derChain(ca.sign(b, id, key.Public(), now, time.Hour))
			}
			outs := make([]mintOutcome, batch)
			b.ResetTimer()
			for n := 0; n < b.N; n += batch {
				for i := range outs {
					chain, err := parseDERChain(ders[i])
					if err != nil {
						b.Fatal(err)
					}
					outs[i] = mintOutcome{chain: chain}
				}
				results, _ := checkMints(jobs, outs, v, bundle, now)
				for _, r := range results {
					if r.err != nil || r.verErr != nil {
						b.Fatal(r.err, r.verErr)
					}
				}
			}
		})
	}
}
