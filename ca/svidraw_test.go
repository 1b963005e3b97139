package ca

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	mrand "math/rand/v2"
	"strings"
	"testing"
	"testing/cryptotest"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// TestSignX509SVIDRawMatchesCreateCertificate: for random entries, every
// CA key type and every leaf key type, SignX509SVIDRaw, which encodes the
// SVID's fields without a template, returns the bytes
// x509.CreateCertificate writes for x509SVIDTemplate's template with the
// same randomness (the serial is drawn first in both), the same bytes as
// SignX509SVID, and the serial and expiry of the parsed leaf.
func TestSignX509SVIDRawMatchesCreateCertificate(t *testing.T) {
	keys := fastKeys()
	r := mrand.New(mrand.NewPCG(16, uint64(time.Now().UnixNano())))
	// A time with a fraction of a second: the certificate's NotAfter is
	// truncated to the second.
	now := time.Date(2026, 12, 1, 5, 0, 0, 987_654_321, time.UTC)
	ctx := context.Background()
	for _, caKind := range fastCAKinds {
		c := fastCA(t, keys[caKind], now, 24*time.Hour)
		for _, leafKind := range fastLeafKinds {
			t.Run(caKind+"/"+leafKind, func(t *testing.T) {
				for i := range 10 {
					p := randomParams(r, keys[leafKind].Public())
					seed := uint64(i)
					cryptotest.SetGlobalRandom(t, seed)
					tmpl, err := c.x509SVIDTemplate(p)
					if err != nil {
						t.Fatal(err)
					}
					want, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, p.PublicKey, c.signer)
					if err != nil {
						t.Fatal(err)
					}
					cryptotest.SetGlobalRandom(t, seed)
					svid, err := c.SignX509SVIDRaw(ctx, p)
					if err != nil {
						t.Fatal(err)
					}
					if len(svid.Chain) != 1 || !bytes.Equal(svid.Chain[0], want) {
						t.Fatalf("SignX509SVIDRaw differs from x509.CreateCertificate for %+v:\n got %x\nwant %x", p, svid.Chain[0], want)
					}
					cryptotest.SetGlobalRandom(t, seed)
					chain, err := c.SignX509SVID(ctx, p)
					if err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(chain[0].Raw, want) {
						t.Fatal("SignX509SVID differs from SignX509SVIDRaw")
					}
					if chain[0].SerialNumber.Cmp(svid.Serial) != 0 || !chain[0].NotAfter.Equal(svid.NotAfter) || svid.NotAfter.Location() != time.UTC {
						t.Fatalf("serial %x, not after %v; the leaf has %x, %v", svid.Serial, svid.NotAfter, chain[0].SerialNumber, chain[0].NotAfter)
					}
				}
			})
		}
	}
}

// TestSignX509SVIDRawChainAndTemplate: with an upstream-signed CA the raw
// chain is the leaf and the CA's chain, as SignX509SVID's; with an
// operator template (x509.CreateCertificate, parsed back) the serial and
// expiry are the leaf's.
func TestSignX509SVIDRawChainAndTemplate(t *testing.T) {
	keys := fastKeys()
	now := time.Date(2026, 12, 1, 5, 0, 0, 0, time.UTC)
	ctx := context.Background()
	root := fastCA(t, keys["ca-p384"], now, 48*time.Hour, func(c *Config) { c.AllowIntermediates = true })
	up := intermediateCA(t, root, keys["ca-p256"], now)
	p := randomParams(mrand.New(mrand.NewPCG(1, 2)), keys["p256"].Public())
	svid, err := up.SignX509SVIDRaw(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := up.SignX509SVID(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if len(svid.Chain) != len(chain) || len(chain) < 2 {
		t.Fatalf("raw chain of %d, parsed chain of %d", len(svid.Chain), len(chain))
	}
	for i := 1; i < len(chain); i++ {
		if !bytes.Equal(svid.Chain[i], chain[i].Raw) {
			t.Fatalf("certificate %d of the chain differs", i)
		}
	}
	leaf, err := x509.ParseCertificate(svid.Chain[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := leaf.CheckSignatureFrom(up.cert); err != nil {
		t.Fatalf("raw leaf does not verify: %v", err)
	}

	tmpl, err := ParseX509SVIDTemplate(`{"subject": {"organization": "Example Corp"}}`)
	if err != nil {
		t.Fatal(err)
	}
	withTmpl := fastCA(t, keys["ca-p256"], now, 24*time.Hour, func(c *Config) { c.X509SVIDTemplate = tmpl })
	svid, err = withTmpl.SignX509SVIDRaw(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err = x509.ParseCertificate(svid.Chain[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(leaf.Subject.Organization) != 1 || leaf.Subject.Organization[0] != "Example Corp" {
		t.Fatalf("operator template not applied: %v", leaf.Subject)
	}
	if leaf.SerialNumber.Cmp(svid.Serial) != 0 || !leaf.NotAfter.Equal(svid.NotAfter) {
		t.Fatalf("serial %x, not after %v; the leaf has %x, %v", svid.Serial, svid.NotAfter, leaf.SerialNumber, leaf.NotAfter)
	}
}

// FuzzSignX509SVIDRaw: for any SPIFFE ID path, DNS names and TTL, with
// every CA and leaf key type, SignX509SVIDRaw either refuses the
// parameters as SignX509SVID does or returns the bytes
// x509.CreateCertificate writes for x509SVIDTemplate's template with the
// same randomness.
func FuzzSignX509SVIDRaw(f *testing.F) {
	keys := fastKeys()
	f.Add("/ns/prod/sa/web", "web.example.org", int64(3600), uint8(0), uint8(0), uint64(1))
	f.Add("/a", "", int64(0), uint8(1), uint8(3), uint64(2))
	f.Add("/db/x", "*.db,a&b,_srv.tcp", int64(86400*3), uint8(2), uint8(4), uint64(3))
	f.Add("/x/y.z", "ünïcode", int64(-5), uint8(0), uint8(1), uint64(4))
	now := time.Date(2049, 12, 31, 12, 0, 0, 500, time.UTC)
	var cas []*CA
	for _, kind := range fastCAKinds {
		cas = append(cas, fastCA(f, keys[kind], now, 48*time.Hour))
	}
	f.Fuzz(func(t *testing.T, path, dns string, ttlSeconds int64, caIdx, leafIdx uint8, seed uint64) {
		if len(path) > 512 || len(dns) > 4096 {
			return
		}
		c := cas[int(caIdx)%len(cas)]
		pub := keys[fastLeafKinds[int(leafIdx)%len(fastLeafKinds)]].Public()
		id, err := spiffeid.FromPath(fastTD, path)
		if err != nil {
			return
		}
		var names []string
		if dns != "" {
			names = strings.Split(dns, ",")
		}
		p := X509SVIDParams{PublicKey: pub, SPIFFEID: id, DNSNames: names, TTL: time.Duration(ttlSeconds%(1<<32)) * time.Second}
		ctx := context.Background()
		cryptotest.SetGlobalRandom(t, seed)
		svid, rawErr := c.SignX509SVIDRaw(ctx, p)
		cryptotest.SetGlobalRandom(t, seed)
		chain, err := c.SignX509SVID(ctx, p)
		if (rawErr == nil) != (err == nil) {
			t.Fatalf("SignX509SVIDRaw: %v; SignX509SVID: %v", rawErr, err)
		}
		if err != nil {
			return
		}
		if !bytes.Equal(svid.Chain[0], chain[0].Raw) {
			t.Fatal("SignX509SVIDRaw and SignX509SVID differ")
		}
		cryptotest.SetGlobalRandom(t, seed)
		tmpl, err := c.x509SVIDTemplate(p)
		if err != nil {
			t.Fatal(err)
		}
		want, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, p.PublicKey, c.signer)
		if err != nil {
			t.Fatalf("x509.CreateCertificate refuses what SignX509SVIDRaw signed: %v", err)
		}
		if !bytes.Equal(svid.Chain[0], want) {
			t.Fatalf("SignX509SVIDRaw differs from x509.CreateCertificate for %+v:\n got %x\nwant %x", p, svid.Chain[0], want)
		}
	})
}
