package agent

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/crypto/cryptobyte"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/ca/keymanager/memory"
	"github.com/sigil-id/sigil/clock"
)

// leafSource mints X.509-SVIDs over requests the agent makes
// (newMintRequest), as a server does.
type leafSource struct {
	name string
	// mint returns the chain (leaf first) for id over the request.
	mint func(t testing.TB, csr []byte, key *ecdsa.PrivateKey, id spiffeid.ID, dns []string) []*x509.Certificate
}

// leafSources are the real server CA (ca.CA, its fast encoder) and the
// agent tests' CA (x509.CreateCertificate).
func leafSources(t testing.TB) []leafSource {
	cfg := ca.DefaultConfig()
	cfg.TrustDomain = testTD
	cfg.ServerID = "server-1"
	cfg.KeyManager = memory.New()
	cfg.Clock = clock.New()
	server, err := ca.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	testCA := newTestCA(t, time.Now())
	return []leafSource{
		{"server CA", func(t testing.TB, csr []byte, _ *ecdsa.PrivateKey, id spiffeid.ID, dns []string) []*x509.Certificate {
			chain, err := server.SignX509SVIDFromCSR(context.Background(), csr, id, dns, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			return chain
		}},
		{"test CA", func(t testing.TB, _ []byte, key *ecdsa.PrivateKey, id spiffeid.ID, _ []string) []*x509.Certificate {
			return testCA.sign(t, id, key.Public(), time.Now().Add(-time.Minute), time.Hour)
		}},
	}
}

// mintedLeaf is a returned leaf and the request's key.
type mintedLeaf struct {
	key  *ecdsa.PrivateKey
	spki []byte
	der  []byte
}

func mintLeaf(t testing.TB, src leafSource, path string, dns ...string) mintedLeaf {
	t.Helper()
	key, spki, csr, err := newMintRequest()
	if err != nil {
		t.Fatal(err)
	}
	chain := src.mint(t, csr, key, spiffeid.RequireFromPath(testTD, path), dns)
	return mintedLeaf{key: key, spki: spki, der: chain[0].Raw}
}

// checkLikeParseCertificate fails t if parseLeafLike accepts der although
// x509.ParseCertificate refuses it, or returns anything but what
// x509.ParseCertificate returns. It reports whether der was accepted.
func checkLikeParseCertificate(t testing.TB, tmpl *leafTemplate, der, spki []byte, pub *ecdsa.PublicKey) bool {
	t.Helper()
	got, ok := tmpl.parseLeafLike(der, spki, pub)
	if !ok {
		return false
	}
	want, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("parseLeafLike accepted a leaf x509.ParseCertificate refuses (%v):\n%x", err, der)
	}
	if !reflect.DeepEqual(got, want) {
		gv, wv := reflect.ValueOf(*got), reflect.ValueOf(*want)
		for i := range gv.NumField() {
			if !reflect.DeepEqual(gv.Field(i).Interface(), wv.Field(i).Interface()) {
				t.Errorf("field %s: got %v, want %v", gv.Type().Field(i).Name, gv.Field(i).Interface(), wv.Field(i).Interface())
			}
		}
		t.Fatalf("parseLeafLike differs from x509.ParseCertificate for\n%x", der)
	}
	return true
}

// TestParseLeafLikeMatchesParseCertificate: SVIDs of the real server CA
// and of x509.CreateCertificate, each parsed against the first one of
// their CA, are exactly what x509.ParseCertificate returns for them; an
// SVID with DNS names (another subject and other names) or another
// key is left to x509.ParseCertificate.
func TestParseLeafLikeMatchesParseCertificate(t *testing.T) {
	for _, src := range leafSources(t) {
		t.Run(src.name, func(t *testing.T) {
			first := mintLeaf(t, src, "/ref")
			ref, err := x509.ParseCertificate(first.der)
			if err != nil {
				t.Fatal(err)
			}
			tmpl := newLeafTemplate(ref)
			if tmpl == nil {
				t.Fatal("no template for an SVID of the CA")
			}
			for i := range 50 {
				l := mintLeaf(t, src, fmt.Sprintf("/workload/%d/with-a-longer-path-%d", i, i*i*i))
				if !checkLikeParseCertificate(t, tmpl, l.der, l.spki, &l.key.PublicKey) {
					t.Fatalf("SVID %d of the same CA not parsed against the template", i)
				}
			}
			other := mintLeaf(t, src, "/other")
			if _, ok := tmpl.parseLeafLike(other.der, first.spki, &first.key.PublicKey); ok {
				t.Fatal("a leaf with another key than the request's was parsed")
			}
			if src.name == "server CA" {
				dns := mintLeaf(t, src, "/dns", "web.example.org")
				if _, ok := tmpl.parseLeafLike(dns.der, dns.spki, &dns.key.PublicKey); ok {
					t.Fatal("a leaf with DNS names was parsed against a template without")
				}
				parsed, err := x509.ParseCertificate(dns.der)
				if err != nil {
					t.Fatal(err)
				}
				if newLeafTemplate(parsed) != nil {
					t.Fatal("a leaf with DNS names (a subject, two names) became a template")
				}
			}
		})
	}
}

// TestParseLeafLikeMutations: every change of one byte of a returned leaf
// (each byte replaced by a few values) is either parsed exactly as
// x509.ParseCertificate parses it or left to it; in particular no leaf
// x509.ParseCertificate refuses is parsed. So are truncations and
// appended bytes.
func TestParseLeafLikeMutations(t *testing.T) {
	for _, src := range leafSources(t) {
		t.Run(src.name, func(t *testing.T) {
			ref, err := x509.ParseCertificate(mintLeaf(t, src, "/ref").der)
			if err != nil {
				t.Fatal(err)
			}
			tmpl := newLeafTemplate(ref)
			l := mintLeaf(t, src, "/workload/mutated")
			pub := &l.key.PublicKey
			if !checkLikeParseCertificate(t, tmpl, l.der, l.spki, pub) {
				t.Fatal("the unchanged leaf is not parsed")
			}
			accepted, refusedByX509 := 0, 0
			for i := range l.der {
				for _, v := range []byte{0x00, 0x01, 0x2f, 0x30, 0x39, 0x5a, 0x7f, 0x80, 0xff, l.der[i] ^ 0x01, l.der[i] + 1, l.der[i] - 1} {
					if v == l.der[i] {
						continue
					}
					m := bytes.Clone(l.der)
					m[i] = v
					if checkLikeParseCertificate(t, tmpl, m, l.spki, pub) {
						accepted++
					} else if _, err := x509.ParseCertificate(m); err != nil {
						refusedByX509++
					}
				}
			}
			for n := range len(l.der) {
				if checkLikeParseCertificate(t, tmpl, l.der[:n], l.spki, pub) {
					t.Fatalf("a leaf truncated to %d bytes was parsed", n)
				}
			}
			if checkLikeParseCertificate(t, tmpl, append(bytes.Clone(l.der), 0), l.spki, pub) {
				t.Fatal("a leaf with a byte after it was parsed")
			}
			// Changes in the serial number, the times, the URI path and
			// the signature are parsed; many others are refused.
			if accepted == 0 || refusedByX509 == 0 {
				t.Fatalf("%d mutations parsed, %d refused by x509", accepted, refusedByX509)
			}
			t.Logf("%d single-byte mutations parsed like x509.ParseCertificate, %d refused by it", accepted, refusedByX509)
		})
	}
}

// TestReadUTCTime: the UTCTime reader accepts what x509.ParseCertificate
// accepts in the form YYMMDDHHMMSSZ, with the same time, and nothing
// out of range.
func TestReadUTCTime(t *testing.T) {
	for _, c := range []struct {
		in   string
		want time.Time
		ok   bool
	}{
		{"491231235959Z", time.Date(2049, 12, 31, 23, 59, 59, 0, time.UTC), true},
		{"500101000000Z", time.Date(1950, 1, 1, 0, 0, 0, 0, time.UTC), true},
		{"240229120000Z", time.Date(2024, 2, 29, 12, 0, 0, 0, time.UTC), true},
		{"250229120000Z", time.Time{}, false}, // no 29 February in 2025
		{"261301000000Z", time.Time{}, false},
		{"261200000000Z", time.Time{}, false},
		{"261201240000Z", time.Time{}, false},
		{"261201006000Z", time.Time{}, false},
		{"261201000060Z", time.Time{}, false},
		{"2612010000Z", time.Time{}, false},       // minutes only: x509 takes it, DER does not
		{"261201000000+0000", time.Time{}, false}, // not DER
		{"26120100000aZ", time.Time{}, false},
		{"261201000000z", time.Time{}, false},
	} {
		der := append([]byte{0x17, byte(len(c.in))}, c.in...)
		s := cryptobyte.String(der)
		var got time.Time
		ok := readUTCTime(&s, &got)
		if ok != c.ok || !got.Equal(c.want) || (ok && got != c.want) {
			t.Errorf("%s: got %v %v, want %v %v", c.in, got, ok, c.want, c.ok)
		}
	}
}

// TestParseChainAgainstVerifiedIssuer: once an SVID of an issuer has
// verified fully, the agent parses the next SVIDs of that issuer against
// it (the parsed leaf shares the verified leaf's fields, and costs a
// fraction of x509.ParseCertificate's allocations); a chain that
// x509.ParseCertificate refuses is still refused with its error, and a
// bundle change forgets the templates.
func TestParseChainAgainstVerifiedIssuer(t *testing.T) {
	now := time.Now()
	src := leafSources(t)[1]
	testCA := newTestCA(t, now)
	src.mint = func(t testing.TB, _ []byte, key *ecdsa.PrivateKey, id spiffeid.ID, _ []string) []*x509.Certificate {
		return testCA.sign(t, id, key.Public(), now.Add(-time.Minute), time.Hour)
	}
	bundle := x509bundle.FromX509Authorities(testTD, []*x509.Certificate{testCA.cert})
	v := newLeafVerifier(leafVerifyInterval)
	job := func(l mintedLeaf, path string) *mintJob {
		return &mintJob{id: path, fp: entryFingerprint{spiffeID: spiffeid.RequireFromPath(testTD, path).String()}, key: l.key, spki: l.spki}
	}
	first := mintLeaf(t, src, "/w/0")
	results, _ := checkMints([]*mintJob{job(first, "/w/0")}, []mintOutcome{{der: [][]byte{first.der}}}, v, bundle, now)
	if r := results[0]; r.out.err != nil || r.err != nil || r.verErr != nil {
		t.Fatal(r.out.err, r.err, r.verErr)
	}
	ref := results[0].s.verifyChain[0]

	next := mintLeaf(t, src, "/w/1")
	chain, err := v.parseChain([][]byte{next.der}, job(next, "/w/1"), bundle)
	if err != nil {
		t.Fatal(err)
	}
	if len(chain[0].AuthorityKeyId) == 0 || &chain[0].AuthorityKeyId[0] != &ref.AuthorityKeyId[0] {
		t.Fatal("the leaf was not parsed against the verified issuer's leaf")
	}
	want, _ := x509.ParseCertificate(next.der)
	if !reflect.DeepEqual(chain[0], want) {
		t.Fatal("the leaf differs from x509.ParseCertificate's")
	}
	allocs := testing.AllocsPerRun(20, func() {
		if _, err := v.parseChain([][]byte{next.der}, job(next, "/w/1"), bundle); err != nil {
			t.Fatal(err)
		}
	})
	full := testing.AllocsPerRun(20, func() { _, _ = parseDERChain([][]byte{next.der}) })
	if allocs*3 > full {
		t.Fatalf("%v allocations per parse against the issuer, %v with x509.ParseCertificate", allocs, full)
	}

	bad := bytes.Clone(next.der)
	bad[len(bad)-1] ^= 0xff // still parses: a wrong signature is the verifier's
	bad = append(bad[:4:4], bad[5:]...)
	results, _ = checkMints([]*mintJob{job(next, "/w/1")}, []mintOutcome{{der: [][]byte{bad}}}, v, bundle, now)
	_, wantErr := parseDERChain([][]byte{bad})
	if r := results[0]; wantErr == nil || r.out.err == nil || r.out.err.Error() != wantErr.Error() || !r.out.badResponse {
		t.Fatalf("a chain x509 refuses: err %v (bad response %v), want %v", r.out.err, r.out.badResponse, wantErr)
	}

	// A bundle change forgets the issuers and the templates: the next
	// leaf is parsed by x509.ParseCertificate (and verified fully).
	bundle2 := x509bundle.FromX509Authorities(testTD, []*x509.Certificate{testCA.cert})
	third := mintLeaf(t, src, "/w/2")
	results, _ = checkMints([]*mintJob{job(third, "/w/2")}, []mintOutcome{{der: [][]byte{third.der}}}, v, bundle2, now)
	if r := results[0]; r.out.err != nil || r.err != nil || r.verErr != nil {
		t.Fatal(r.out.err, r.err, r.verErr)
	}
	if got := results[0].s.verifyChain[0]; &got.AuthorityKeyId[0] == &ref.AuthorityKeyId[0] {
		t.Fatal("a template of the previous bundle was used")
	}
}

// FuzzParseLeafLike: whatever bytes the server returns, parseLeafLike
// either leaves them to x509.ParseCertificate or returns exactly what it
// returns.
func FuzzParseLeafLike(f *testing.F) {
	src := leafSources(f)[0]
	ref, err := x509.ParseCertificate(mintLeaf(f, src, "/ref").der)
	if err != nil {
		f.Fatal(err)
	}
	tmpl := newLeafTemplate(ref)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	_, spki, _ := p256Request(key)
	csr, err := p256CSR(key)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(src.mint(f, csr, key, spiffeid.RequireFromPath(testTD, "/w/1"), nil)[0].Raw)
	f.Add(src.mint(f, csr, key, spiffeid.RequireFromPath(testTD, "/a-much/longer/path/than/the/others/to/change/lengths"), nil)[0].Raw)
	f.Add(src.mint(f, csr, key, spiffeid.RequireFromPath(testTD, "/dns"), []string{"a.example.org"})[0].Raw)
	f.Fuzz(func(t *testing.T, der []byte) {
		checkLikeParseCertificate(t, tmpl, der, spki, &key.PublicKey)
	})
}

// BenchmarkMintCheckDER is BenchmarkMintCheck's check/sampled with the
// chains as the server returns them (DER) and the jobs as mintBatch makes
// them (with the request's SubjectPublicKeyInfo): parsing against the
// verified issuer (parseChain), checking and the sampled verification.
func BenchmarkMintCheckDER(b *testing.B) {
	now := time.Now()
	testCA := newTestCA(b, now)
	bundle := x509bundle.FromX509Authorities(testTD, []*x509.Certificate{testCA.cert})
	const batch = 100
	v := newLeafVerifier(leafVerifyInterval)
	jobs := make([]*mintJob, batch)
	ders := make([][][]byte, batch)
	for i := range jobs {
		key, spki, _, err := newMintRequest()
		if err != nil {
			b.Fatal(err)
		}
		id := spiffeid.RequireFromPath(testTD, fmt.Sprintf("/w/%d", i))
		jobs[i] = &mintJob{id: fmt.Sprint(i), fp: entryFingerprint{spiffeID: id.String()}, key: key, spki: spki}
		ders[i] = derChain(testCA.sign(b, id, key.Public(), now, time.Hour))
	}
	outs := make([]mintOutcome, batch)
	b.ReportAllocs()
	b.ResetTimer()
	for n := 0; n < b.N; n += batch {
		for i := range outs {
			outs[i] = mintOutcome{der: ders[i]}
		}
		results, _ := checkMints(jobs, outs, v, bundle, now)
		for _, r := range results {
			if r.out.err != nil || r.err != nil || r.verErr != nil {
				b.Fatal(r.out.err, r.err, r.verErr)
			}
		}
	}
}

// TestParseChainWithIntermediates: with an intermediate CA (an upstream
// authority), a chain whose intermediates are byte for byte those of a
// verified chain reuses them and parses its leaf against that chain's;
// a chain through another intermediate is parsed by x509.ParseCertificate
// and verified fully.
func TestParseChainWithIntermediates(t *testing.T) {
	now := time.Now()
	root := newLeafCA(t, now, nil, nil)
	inter := newLeafCA(t, now, root, nil)
	other := newLeafCA(t, now, root, nil)
	bundle := x509bundle.FromX509Authorities(testTD, []*x509.Certificate{root.cert})
	v := newLeafVerifier(leafVerifyInterval)
	mint := func(ca *leafCA, path string) (*mintJob, [][]byte) {
		key, spki, _, err := newMintRequest()
		if err != nil {
			t.Fatal(err)
		}
		id := spiffeid.RequireFromPath(testTD, path)
		return &mintJob{id: path, fp: entryFingerprint{spiffeID: id.String()}, key: key, spki: spki},
			derChain(ca.leaf(t, id, key.Public(), now, nil))
	}
	check := func(job *mintJob, der [][]byte) []*x509.Certificate {
		t.Helper()
		results, _ := checkMints([]*mintJob{job}, []mintOutcome{{der: der}}, v, bundle, now)
		if r := results[0]; r.out.err != nil || r.err != nil || r.verErr != nil {
			t.Fatal(r.out.err, r.err, r.verErr)
		}
		return results[0].s.verifyChain
	}
	first := check(mint(inter, "/w/0"))
	if len(first) != 2 {
		t.Fatalf("chain of %d certificates", len(first))
	}
	second := check(mint(inter, "/w/1"))
	if second[1] != first[1] || &second[0].AuthorityKeyId[0] != &first[0].AuthorityKeyId[0] {
		t.Fatal("a chain through the verified intermediate was parsed again")
	}
	job, der := mint(other, "/w/2")
	third := check(job, der)
	if third[1] == first[1] || !bytes.Equal(third[1].Raw, other.cert.Raw) {
		t.Fatal("a chain through another intermediate was parsed against the first")
	}
	want, err := parseDERChain(der)
	if err != nil || !reflect.DeepEqual(third, want) {
		t.Fatalf("chain through another intermediate differs from x509's (%v)", err)
	}
}
