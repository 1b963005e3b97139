package ca

import (
	"crypto/x509"
	"net/url"
	"reflect"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// TestRendersOnce: a template is rendered once only when it uses no data
// and calls only functions whose result depends on their arguments; a
// template rendered once renders the same for any SVID.
func TestRendersOnce(t *testing.T) {
	for _, tt := range []struct {
		text string
		once bool
	}{
		{`{"subject": "web"}`, true},
		{`{"subject": {{ "web" | upper | toJson }}, "extensions": [{"id": "1.2.3", "value": {{ asn1Enc "int:5" | toJson }} }]}`, true},
		{`{{ $o := "Example" }}{"subject": {"organization": {{ toJson $o }} }}`, true},
		{`{{ define "o" }}"Example"{{ end }}{"subject": {"organization": {{ template "o" }} }}`, true},
		{`{"subject": {{ toJson .Subject }} }`, false},
		{`{"subject": {{ toJson $.Path }} }`, false},
		{`{{ with .DNSNames }}{"dnsNames": {{ toJson . }} }{{ else }}{}{{ end }}`, false},
		{`{{ range $i, $s := .PathSegments }}{{ end }}{}`, false},
		{`{{ define "o" }}{{ toJson .EntryID }}{{ end }}{"subject": {{ template "o" . }} }`, false},
		{`{"subject": {{ now | date "2006" | toJson }} }`, false},
		{`{"subject": {{ uuidv4 | toJson }} }`, false},
	} {
		x, err := ParseX509SVIDTemplate(tt.text)
		if err != nil {
			t.Errorf("%s: %v", tt.text, err)
			continue
		}
		if x.RendersOnce() != tt.once {
			t.Errorf("%s: RendersOnce = %v, want %v", tt.text, x.RendersOnce(), tt.once)
		}
		if !x.RendersOnce() {
			continue
		}
		other, err := x.render(spiffeid.RequireFromString("spiffe://other.org/a"), []string{"a.other.org"}, "e2")
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(other, x.static) {
			t.Errorf("%s: renders differently for other data: %+v, %+v", tt.text, other, x.static)
		}
	}
}

// BenchmarkX509SVIDTemplateApply is what a template adds to an issuance,
// without the signature: rendering (per-certificate) or not
// (rendered-once), merging and checking the result.
func BenchmarkX509SVIDTemplateApply(b *testing.B) {
	for _, bc := range []struct{ name, text string }{
		{"per-certificate", `{
	"subject": {"organization": {{ index .PathSegments 1 | toJson }}, "organizationalUnit": {{ last .PathSegments | toJson }}, "commonName": {{ toJson .Subject.CommonName }} },
	"dnsNames": [{{ printf "%s.svc.example.org" (last .PathSegments) | toJson }}],
	"policyIdentifiers": ["1.3.6.1.4.1.55555.7.1"],
	"extensions": [{"id": "1.3.6.1.4.1.55555.7.2", "value": {{ asn1Enc (printf "utf8:%s" .EntryID) | toJson }} }]
}`},
		{"rendered-once", `{"subject": {"organization": "Example Corp", "organizationalUnit": "web"}, "policyIdentifiers": "1.3.6.1.4.1.55555.7.1"}`},
	} {
		b.Run(bc.name, func(b *testing.B) {
			x, err := ParseX509SVIDTemplate(bc.text)
			if err != nil {
				b.Fatal(err)
			}
			id := spiffeid.RequireFromString("spiffe://example.org/ns/prod/sa/web")
			base := &x509.Certificate{
				KeyUsage: x509.KeyUsageDigitalSignature, BasicConstraintsValid: true,
				ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
				URIs:        []*url.URL{id.URL()}, DNSNames: []string{"web.example.org"},
			}
			p := X509SVIDParams{SPIFFEID: id, DNSNames: base.DNSNames, EntryID: "entry-1"}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := x.apply(base, p); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
