package ca_test

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/clock"
)

// policyOID and the extension OID used by the accepted templates below.
var (
	policyOID = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 55555, 7, 1}
	extOID    = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 55555, 7, 2}
)

// TestParseX509SVIDTemplateRefuses: a template that would break an
// X.509-SVID rule, or that sets a field Sigil controls, is refused when
// parsed, with an error naming what it does wrong.
func TestParseX509SVIDTemplateRefuses(t *testing.T) {
	for _, tt := range []struct {
		name, text, want string
	}{
		{"empty", "  ", "is empty"},
		{"does not parse", `{"subject": {{ .Path `, "parsing"},
		{"unknown function", `{"subject": {{ nosuchfunc }} }`, "parsing"},
		{"fails to render", `{"subject": {{ fail "no subject for you" }} }`, "no subject for you"},
		{"missing key", `{"subject": {{ toJson .NoSuchKey }} }`, "rendering"},
		{"not JSON", `subject: web`, "not a certificate template"},
		{"unknown field", `{"subjet": "web"}`, `unknown field "subjet"`},
		{"data after the object", `{} {}`, "data after the JSON object"},
		{"URI SAN", `{"uris": "spiffe://example.org/other"}`, "URI SAN"},
		{"URI SAN in sans", `{"sans": [{"type": "uri", "value": "spiffe://example.org/other"}]}`, "URI SAN"},
		{"URI SAN by auto type", `{"sans": [{"value": "https://example.org/x"}]}`, "URI SAN"},
		{"IP SAN", `{"ipAddresses": "10.0.0.1"}`, "IP address SAN"},
		{"email SAN", `{"emailAddresses": "a@example.org"}`, "email SAN"},
		{"other SAN type", `{"sans": [{"type": "permanentIdentifier", "value": "x"}]}`, `SAN of type "permanentIdentifier"`},
		{"bad DNS SAN", `{"dnsNames": "has space.example.org"}`, "invalid character"},
		{"CA bit", `{"basicConstraints": {"isCA": true}}`, "must not be a CA"},
		{"key usage certSign", `{"keyUsage": ["digitalSignature", "certSign"]}`, "key usage keyCertSign"},
		{"key usage contentCommitment", `{"keyUsage": "contentCommitment"}`, "key usage contentCommitment"},
		{"EKU codeSigning", `{"extKeyUsage": ["serverAuth", "codeSigning"]}`, "extended key usage codeSigning"},
		{"unknown EKU", `{"unknownExtKeyUsage": "1.2.3.4"}`, "extended key usage"},
		{"name constraints", `{"nameConstraints": {"permittedDNSDomains": "example.org"}}`, "nameConstraints"},
		{"serial", `{"serialNumber": 7}`, "serialNumber"},
		{"validity", `{"notAfter": "2030-01-01T00:00:00Z"}`, "validity"},
		{"issuer", `{"issuer": {"commonName": "me"}}`, "issuer"},
		{"SKI", `{"subjectKeyId": "AQID"}`, "key identifiers"},
		{"AKI", `{"authorityKeyId": "AQID"}`, "key identifiers"},
		{"signature algorithm", `{"signatureAlgorithm": "SHA256-RSA"}`, "signatureAlgorithm"},
		{"raw subject", `{"rawSubject": "MAA="}`, "rawSubject"},
		{"SAN extension", `{"extensions": [{"id": "2.5.29.17", "value": "MAA="}]}`, "2.5.29.17 (subjectAltName)"},
		{"basic constraints extension", `{"extensions": [{"id": "2.5.29.19", "value": "MAA="}]}`, "(basicConstraints): Sigil controls it"},
		{"key usage extension", `{"extensions": [{"id": "2.5.29.15", "value": "AwIHgA=="}]}`, "(keyUsage)"},
		{"EKU extension", `{"extensions": [{"id": "2.5.29.37", "value": "MAA="}]}`, "(extKeyUsage)"},
		{"SKI extension", `{"extensions": [{"id": "2.5.29.14", "value": "BAA="}]}`, "(subjectKeyIdentifier)"},
		{"AKI extension", `{"extensions": [{"id": "2.5.29.35", "value": "MAA="}]}`, "(authorityKeyIdentifier)"},
		{"name constraints extension", `{"extensions": [{"id": "2.5.29.30", "value": "MAA="}]}`, "(nameConstraints)"},
		{"critical extension", `{"extensions": [{"id": "1.3.6.1.4.1.55555.7.2", "critical": true, "value": "BQA="}]}`, "as critical"},
		{"duplicate extension", `{"extensions": [{"id": "1.3.6.1.4.1.55555.7.2", "value": "BQA="}, {"id": "1.3.6.1.4.1.55555.7.2", "value": "BQA="}]}`, "twice"},
		{"too large", `{"subject": "` + strings.Repeat("a", ca.MaxTemplateSize) + `"}`, "too large"},
		{"fails for a server's SVID", `{"subject": {{ index .PathSegments 3 | toJson }} }`, "rendering for an SVID like spiffe://example.org/sigil/server/server-1"},
		{"renders too much", `{"subject": {{ repeat 70000 "a" | quote }} }`, "renders more than"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			x, err := ca.ParseX509SVIDTemplate(tt.text)
			if err == nil {
				t.Fatalf("template accepted (static=%v), want an error containing %q", x.RendersOnce(), tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not contain %q", err, tt.want)
			}
			if !strings.HasPrefix(err.Error(), "ca: X.509-SVID template") {
				t.Errorf("error %q does not say which template", err)
			}
		})
	}
}

// TestParseCATemplateRefuses: the same for CA templates.
func TestParseCATemplateRefuses(t *testing.T) {
	for _, tt := range []struct {
		name, text, want string
	}{
		{"URI SAN", `{"uris": "spiffe://other.org"}`, "URI SAN"},
		{"DNS SAN", `{"dnsNames": "ca.example.org"}`, "SAN: a CA certificate's only SAN"},
		{"not CA", `{"basicConstraints": {"isCA": false}}`, "must be a CA"},
		{"path length", `{"basicConstraints": {"isCA": true, "maxPathLen": 3}}`, "maxPathLen"},
		{"key usage", `{"keyUsage": ["certSign", "keyEncipherment"]}`, "key usage keyEncipherment"},
		{"EKU", `{"extKeyUsage": "serverAuth"}`, "extended key usage on the CA"},
		{"name constraints", `{"nameConstraints": {"permittedURIDomains": "other.org"}}`, "nameConstraints"},
		{"name constraints extension", `{"extensions": [{"id": "2.5.29.30", "value": "MAA="}]}`, "(nameConstraints)"},
		{"SKI extension", `{"extensions": [{"id": "2.5.29.14", "value": "BAA="}]}`, "(subjectKeyIdentifier)"},
		{"critical extension", `{"extensions": [{"id": "1.2.3.4", "critical": true, "value": "BQA="}]}`, "as critical"},
		{"validity", `{"notBefore": "2020-01-01T00:00:00Z"}`, "validity"},
		{"serialNumber in extraNames", `{"subject": {"commonName": "CA", "extraNames": [{"type": "2.5.4.5", "value": "other"}]}}`, "node name"},
		{"does not parse", `{{ if }}`, "parsing"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ca.ParseCATemplate(tt.text); err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "ca: CA template") {
				t.Fatalf("ParseCATemplate: %v, want an error from the CA template containing %q", err, tt.want)
			}
		})
	}
}

// svidTemplate sets the subject from the SPIFFE ID's path
// (/ns/<ns>/sa/<sa>: O=<ns>, OU=<sa>, CN kept), an extra DNS SAN, a
// policy and a non-critical extension.
const svidTemplate = `{
	"subject": {
		"organization": {{ index .PathSegments 1 | toJson }},
		"organizationalUnit": [{{ last .PathSegments | toJson }}, "sigil"],
		"commonName": {{ toJson .Subject.CommonName }}
	},
	"dnsNames": [{{ printf "%s.svc.example.org" (last .PathSegments) | toJson }}],
	"keyUsage": ["digitalSignature", "keyAgreement"],
	"policyIdentifiers": ["1.3.6.1.4.1.55555.7.1"],
	"extensions": [{"id": "1.3.6.1.4.1.55555.7.2", "value": {{ asn1Enc (printf "utf8:%s" .EntryID) | toJson }} }]
}`

// TestX509SVIDTemplateApplied: an accepted template's subject, DNS SAN,
// key usage, policy and extension show in the minted SVID, Sigil's own
// fields are intact, and the SVID still verifies as an X.509-SVID.
func TestX509SVIDTemplateApplied(t *testing.T) {
	x, err := ca.ParseX509SVIDTemplate(svidTemplate)
	if err != nil {
		t.Fatalf("ParseX509SVIDTemplate: %v", err)
	}
	if x.RendersOnce() {
		t.Error("a template using the SPIFFE ID renders once")
	}
	clk := clock.NewFake(start)
	cfg := testConfig(t, clk)
	cfg.X509SVIDTemplate = x
	c := newCA(t, cfg)
	id := spiffeid.RequireFromPath(td, "/ns/prod/sa/web")
	for _, key := range []string{"p256", "rsa2048"} {
		t.Run(key, func(t *testing.T) {
			chain, err := c.SignX509SVID(context.Background(), ca.X509SVIDParams{
				PublicKey: genKey(t, key).Public(), SPIFFEID: id, DNSNames: []string{"web.example.org"}, EntryID: "entry-42",
			})
			if err != nil {
				t.Fatalf("SignX509SVID: %v", err)
			}
			leaf := chain[0]
			if got := leaf.Subject; fmt.Sprint(got.Organization) != "[prod]" || fmt.Sprint(got.OrganizationalUnit) != "[web sigil]" || got.CommonName != "web.example.org" {
				t.Errorf("subject = %s, want O=prod, OU=web+sigil, CN=web.example.org", got)
			}
			if want := []string{"web.example.org", "web.svc.example.org"}; !slices.Equal(leaf.DNSNames, want) {
				t.Errorf("DNS SANs = %v, want %v", leaf.DNSNames, want)
			}
			if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() {
				t.Errorf("URIs = %v, want exactly [%s]", leaf.URIs, id)
			}
			wantKU := x509.KeyUsageDigitalSignature | x509.KeyUsageKeyAgreement
			if key == "rsa2048" {
				wantKU |= x509.KeyUsageKeyEncipherment
			}
			if leaf.KeyUsage != wantKU {
				t.Errorf("KeyUsage = %v, want %v", leaf.KeyUsage, wantKU)
			}
			if !slices.ContainsFunc(leaf.PolicyIdentifiers, func(o asn1.ObjectIdentifier) bool { return o.Equal(policyOID) }) {
				t.Errorf("policies = %v, want %v", leaf.PolicyIdentifiers, policyOID)
			}
			ext := findExtension(leaf.Extensions, extOID)
			if ext == nil {
				t.Fatalf("extension %v missing", extOID)
			}
			var entry string
			if _, err := asn1.UnmarshalWithParams(ext.Value, &entry, "utf8"); err != nil || entry != "entry-42" || ext.Critical {
				t.Errorf("extension = %q (critical %v, err %v), want the entry ID, non-critical", entry, ext.Critical, err)
			}
			if !leaf.BasicConstraintsValid || leaf.IsCA {
				t.Error("the SVID is a CA")
			}
			if !leaf.NotAfter.Equal(start.Add(ca.DefaultX509SVIDTTL)) {
				t.Errorf("NotAfter = %v: the template changed the validity", leaf.NotAfter)
			}
			bundle := x509bundle.FromX509Authorities(td, []*x509.Certificate{c.Certificate()})
			if got, _, err := x509svid.Verify(chain, bundle, x509svid.WithTime(clk.Now())); err != nil || got != id {
				t.Errorf("x509svid.Verify = %v, %v; want %s", got, err, id)
			}
		})
	}
}

// TestX509SVIDTemplateRendersOnce: a template without data renders once
// (when parsed) and its fields show in every SVID; its EKU restriction
// replaces Sigil's pair.
func TestX509SVIDTemplateRendersOnce(t *testing.T) {
	x, err := ca.ParseX509SVIDTemplate(`{
		"subject": {"organization": "Example Corp", "country": "FR"},
		"extKeyUsage": ["clientAuth"],
		"extensions": [{"id": "1.3.6.1.4.1.55555.7.2", "value": {{ asn1Enc "int:7" | toJson }} }]
	}`)
	if err != nil {
		t.Fatal(err)
	}
	if !x.RendersOnce() {
		t.Fatal("a template without data does not render once")
	}
	cfg := testConfig(t, clock.NewFake(start))
	cfg.X509SVIDTemplate = x
	c := newCA(t, cfg)
	for _, path := range []string{"/a", "/b/c"} {
		chain, err := c.SignX509SVID(context.Background(), ca.X509SVIDParams{PublicKey: genKey(t, "p256").Public(), SPIFFEID: spiffeid.RequireFromPath(td, path)})
		if err != nil {
			t.Fatal(err)
		}
		leaf := chain[0]
		if fmt.Sprint(leaf.Subject.Organization, leaf.Subject.Country) != "[Example Corp] [FR]" {
			t.Errorf("subject = %s", leaf.Subject)
		}
		if !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
			t.Errorf("EKU = %v, want clientAuth only", leaf.ExtKeyUsage)
		}
		if findExtension(leaf.Extensions, extOID) == nil {
			t.Error("extension missing")
		}
	}
	// A template calling a function whose result changes is rendered
	// for each certificate.
	if x, err := ca.ParseX509SVIDTemplate(`{"extensions": [{"id": "1.2.3.4", "value": {{ asn1Enc (printf "utf8:%s" uuidv4) | toJson }} }]}`); err != nil || x.RendersOnce() {
		t.Errorf("uuidv4 template: RendersOnce=%v, err %v; want per certificate", err == nil && x.RendersOnce(), err)
	}
}

// TestX509SVIDTemplateCheckedPerCertificate: a template that breaks a
// rule only for some SPIFFE IDs passes the start-up check but cannot mint
// those SVIDs: the rules are checked again on every certificate.
func TestX509SVIDTemplateCheckedPerCertificate(t *testing.T) {
	x, err := ca.ParseX509SVIDTemplate(`{
		{{- if eq .Path "/evil" }}"uris": "spiffe://example.org/admin",{{ end }}
		{{- if eq .Path "/ca" }}"basicConstraints": {"isCA": true},{{ end }}
		{{- if eq .Path "/ip" }}"sans": [{"type": "ip", "value": "10.0.0.1"}],{{ end }}
		"subject": {{ toJson .Subject }}
	}`)
	if err != nil {
		t.Fatalf("ParseX509SVIDTemplate: %v", err)
	}
	cfg := testConfig(t, clock.NewFake(start))
	cfg.X509SVIDTemplate = x
	c := newCA(t, cfg)
	for path, want := range map[string]string{"/evil": "URI SAN", "/ca": "must not be a CA", "/ip": "IP address SAN"} {
		id := spiffeid.RequireFromPath(td, path)
		_, err := c.SignX509SVID(context.Background(), ca.X509SVIDParams{PublicKey: genKey(t, "p256").Public(), SPIFFEID: id})
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), id.String()) {
			t.Errorf("%s: SignX509SVID: %v, want an error about %q naming the ID", path, err, want)
		}
	}
	if _, err := c.SignX509SVID(context.Background(), ca.X509SVIDParams{PublicKey: genKey(t, "p256").Public(), SPIFFEID: spiffeid.RequireFromPath(td, "/fine")}); err != nil {
		t.Errorf("a good SPIFFE ID: %v", err)
	}
}

// TestCATemplateSubject: a CA template's subject shows in the CA
// certificate (serialNumber stays the node name), its policy and
// extension too; Sigil's CA fields are intact, SVIDs signed by it verify,
// and Subject returns the same subject for the upstream CSR.
func TestCATemplateSubject(t *testing.T) {
	tmpl, err := ca.ParseCATemplate(`{
		"subject": {"organization": "Example Corp", "organizationalUnit": {{ toJson .TrustDomain }}, "commonName": {{ printf "Example CA %s" .NodeName | toJson }}, "serialNumber": "ignored"},
		"keyUsage": ["certSign", "crlSign", "digitalSignature"],
		"policyIdentifiers": "1.3.6.1.4.1.55555.7.1",
		"extensions": [{"id": "1.3.6.1.4.1.55555.7.2", "value": "BQA="}]
	}`)
	if err != nil {
		t.Fatalf("ParseCATemplate: %v", err)
	}
	clk := clock.NewFake(start)
	cfg := testConfig(t, clk)
	cfg.CATemplate = tmpl
	c := newCA(t, cfg)
	cert := c.Certificate()
	want := pkix.Name{Organization: []string{"Example Corp"}, OrganizationalUnit: []string{"example.org"}, CommonName: "Example CA server-1", SerialNumber: "server-1"}
	if cert.Subject.String() != want.String() {
		t.Errorf("CA subject = %s, want %s", cert.Subject, want)
	}
	if got, err := tmpl.Subject(td, "server-1"); err != nil || got.String() != want.String() {
		t.Errorf("Subject = %s, %v; want %s", got, err, want)
	}
	if !cert.IsCA || !cert.MaxPathLenZero || len(cert.PermittedURIDomains) != 1 || len(cert.URIs) != 1 || cert.URIs[0].String() != td.IDString() {
		t.Errorf("CA fields changed: IsCA=%v pathlen0=%v URIdomains=%v URIs=%v", cert.IsCA, cert.MaxPathLenZero, cert.PermittedURIDomains, cert.URIs)
	}
	if cert.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign|x509.KeyUsageDigitalSignature {
		t.Errorf("KeyUsage = %v", cert.KeyUsage)
	}
	if findExtension(cert.Extensions, extOID) == nil || !slices.ContainsFunc(cert.PolicyIdentifiers, func(o asn1.ObjectIdentifier) bool { return o.Equal(policyOID) }) {
		t.Error("policy or extension missing from the CA certificate")
	}
	chain, err := c.SignX509SVID(context.Background(), ca.X509SVIDParams{PublicKey: genKey(t, "p256").Public(), SPIFFEID: spiffeid.RequireFromPath(td, "/w")})
	if err != nil {
		t.Fatal(err)
	}
	if chain[0].Issuer.String() != want.String() {
		t.Errorf("SVID issuer = %s, want %s", chain[0].Issuer, want)
	}
	if _, _, err := x509svid.Verify(chain, x509bundle.FromX509Authorities(td, []*x509.Certificate{cert}), x509svid.WithTime(clk.Now())); err != nil {
		t.Errorf("x509svid.Verify under the templated CA: %v", err)
	}

	// Without a template, or with one that sets no subject: Sigil's.
	def := "SERIALNUMBER=server-2,CN=Sigil CA server-2,O=Sigil"
	if got, err := (*ca.CATemplate)(nil).Subject(td, "server-2"); err != nil || got.String() != def {
		t.Errorf("nil Subject = %s, %v; want %s", got, err, def)
	}
	noSubject, err := ca.ParseCATemplate(`{"policyIdentifiers": "1.3.6.1.4.1.55555.7.1"}`)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := noSubject.Subject(td, "server-2"); err != nil || got.String() != def {
		t.Errorf("Subject without one in the template = %s, %v; want %s", got, err, def)
	}
}

// TestCATemplateCheckedAtMint: a CA template that breaks a rule only for
// some trust domain passes the start-up check but does not mint that CA.
func TestCATemplateCheckedAtMint(t *testing.T) {
	tmpl, err := ca.ParseCATemplate(`{ {{- if ne .TrustDomain "example.org" }}"uris": "spiffe://evil.org",{{ end }} "subject": "x"}`)
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, clock.NewFake(start))
	cfg.TrustDomain = otherTD
	cfg.CATemplate = tmpl
	if _, err := ca.New(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "URI SAN") {
		t.Fatalf("ca.New: %v, want the CA template's URI SAN refused", err)
	}
	if _, err := tmpl.Subject(otherTD, "server-1"); err == nil {
		t.Error("Subject accepted a template that breaks a rule")
	}
}

func findExtension(exts []pkix.Extension, oid asn1.ObjectIdentifier) *pkix.Extension {
	for i := range exts {
		if exts[i].Id.Equal(oid) {
			return &exts[i]
		}
	}
	return nil
}

// TestX509SVIDTemplateConcurrent: one parsed template renders for many
// SVIDs at once (run with -race).
func TestX509SVIDTemplateConcurrent(t *testing.T) {
	x, err := ca.ParseX509SVIDTemplate(svidTemplate)
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, clock.NewFake(start))
	cfg.X509SVIDTemplate = x
	c := newCA(t, cfg)
	pub := genKey(t, "p256").Public()
	errs := make(chan error, 16)
	for i := range 16 {
		go func() {
			id := spiffeid.RequireFromPath(td, fmt.Sprintf("/ns/n%d/sa/s%d", i, i))
			chain, err := c.SignX509SVID(context.Background(), ca.X509SVIDParams{PublicKey: pub, SPIFFEID: id, EntryID: fmt.Sprint(i)})
			if err == nil && fmt.Sprint(chain[0].Subject.Organization) != fmt.Sprintf("[n%d]", i) {
				err = fmt.Errorf("%s: subject %s", id, chain[0].Subject)
			}
			errs <- err
		}()
	}
	for range 16 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
