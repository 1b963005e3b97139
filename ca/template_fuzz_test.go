package ca_test

import (
	"context"
	"crypto/x509"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/clock"
)

// costlyFuncs are sprig functions whose cost the input controls (key
// generation, password hashing, DNS look-ups, huge strings and lists):
// an operator's template may call them, but a fuzz input doing so only
// measures the function.
var costlyFuncs = []string{"gen", "repeat", "until", "seq", "rand", "getHost", "bcrypt", "htpasswd", "derive", "Cert", "shuffle", "pad"}

// FuzzParseTemplate: parsing a certificate template never panics; an
// accepted X.509-SVID template mints SVIDs that verify as X.509-SVIDs
// (go-spiffe x509svid.Verify) with exactly one URI SAN, the SPIFFE ID,
// and no CA bit; an accepted CA template makes a CA certificate with the
// trust domain ID as its only URI SAN under which SVIDs verify.
func FuzzParseTemplate(f *testing.F) {
	f.Add(svidTemplate)
	f.Add(`{"subject": {{ toJson .Subject }}, "dnsNames": "x.example.org"}`)
	f.Add(`{"subject": {"organization": "O"}, "extKeyUsage": "clientAuth", "keyUsage": "keyAgreement"}`)
	f.Add(`{"sans": [{"type": "dns", "value": "a.example.org"}, {"value": "b.example.org"}]}`)
	f.Add(`{"uris": "spiffe://example.org/x"}`)
	f.Add(`{"basicConstraints": {"isCA": true}, "keyUsage": ["certSign", "crlSign"]}`)
	f.Add(`{"extensions": [{"id": "1.2.3.4", "value": {{ asn1Enc "int:1" | toJson }} }]}`)
	f.Add(`{"ocspServer": "http://ocsp.example.org", "crlDistributionPoints": "http://crl.example.org/ca.crl"}`)
	f.Add(`{ {{- if eq .Path "/x" }}"uris": "spiffe://example.org/y",{{ end }} "subject": "cn"}`)
	f.Add(`{"subject": {{ printf "CA %s" .NodeName | toJson }} }`)
	f.Add(`{{ define "s" }}"x"{{ end }}{"subject": {{ template "s" }} }`)
	f.Fuzz(func(t *testing.T, text string) {
		for _, fn := range costlyFuncs {
			if strings.Contains(text, fn) {
				return
			}
		}
		clk := clock.NewFake(start)
		if x, err := ca.ParseX509SVIDTemplate(text); err == nil {
			cfg := testConfig(t, clk)
			cfg.X509SVIDTemplate = x
			c := newCA(t, cfg)
			bundle := x509bundle.FromX509Authorities(td, []*x509.Certificate{c.Certificate()})
			for _, path := range []string{"/ns/default/sa/workload", "/x", "/a/b/c/d/e"} {
				id := spiffeid.RequireFromPath(td, path)
				chain, err := c.SignX509SVID(context.Background(), ca.X509SVIDParams{
					PublicKey: genKey(t, "p256").Public(), SPIFFEID: id, DNSNames: []string{"w.example.org"}, EntryID: "e1",
				})
				if err != nil {
					if !strings.HasPrefix(err.Error(), "ca: X.509-SVID template") {
						t.Fatalf("%s: an error not from the template: %v", id, err)
					}
					continue
				}
				leaf := chain[0]
				if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() || leaf.IsCA {
					t.Fatalf("%s: URIs %v, IsCA %v", id, leaf.URIs, leaf.IsCA)
				}
				if got, _, err := x509svid.Verify(chain, bundle, x509svid.WithTime(clk.Now())); err != nil || got != id {
					t.Fatalf("%s: x509svid.Verify: %v, %v", id, got, err)
				}
			}
		}
		if tmpl, err := ca.ParseCATemplate(text); err == nil {
			cfg := testConfig(t, clk)
			cfg.CATemplate = tmpl
			c, err := ca.New(context.Background(), cfg)
			if err != nil {
				if !strings.HasPrefix(err.Error(), "ca: CA template") {
					t.Fatalf("ca.New: an error not from the template: %v", err)
				}
				return
			}
			cert := c.Certificate()
			if len(cert.URIs) != 1 || cert.URIs[0].String() != td.IDString() || !cert.IsCA || cert.Subject.SerialNumber != cfg.ServerID {
				t.Fatalf("CA certificate: URIs %v, IsCA %v, subject %s", cert.URIs, cert.IsCA, cert.Subject)
			}
			chain, err := c.SignX509SVID(context.Background(), ca.X509SVIDParams{PublicKey: genKey(t, "p256").Public(), SPIFFEID: spiffeid.RequireFromPath(td, "/w")})
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := x509svid.Verify(chain, x509bundle.FromX509Authorities(td, []*x509.Certificate{cert}), x509svid.WithTime(clk.Now())); err != nil {
				t.Fatalf("x509svid.Verify under the templated CA: %v", err)
			}
		}
	})
}
