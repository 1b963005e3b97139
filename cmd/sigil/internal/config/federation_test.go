package config

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/federation"
)

const fedFile = `server {
  trust_domain = "aws.example"
  federation {
    bundle_endpoint {
      address      = "127.0.0.1:8443"
      profile      = "https_spiffe"
      refresh_hint = "5m"
    }
    min_refresh           = "1s"
    max_refresh           = "1h"
    fetch_timeout         = "10s"
    partner_refresh_bound = "5m"
    federates_with "gcp.example" {
      bundle_endpoint_url = "https://127.0.0.1:8444"
      profile             = "https_spiffe"
      endpoint_spiffe_id  = "spiffe://gcp.example/sigil/server"
      bundle_file         = "gcp.bundle.json"
    }
    federates_with "web.example" {
      bundle_endpoint_url = "https://web.example/bundle"
      profile             = "https_web"
    }
    federates_with "spire.example" {
      bundle_endpoint_url = "https://spire.example:8443"
    }
  }
}
`

// writeConfig writes src as server.hcl in a new directory, with the
// given extra files beside it, and returns the config path.
func writeConfig(t *testing.T, src string, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, "server.hcl")
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// testBundleDoc is a SPIFFE bundle document of trust domain td with one
// self-signed CA.
func testBundleDoc(t testing.TB, td string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: td},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		URIs: []*url.URL{{Scheme: "spiffe", Host: td}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := federation.Encode(&sigilv1.Bundle{TrustDomain: td, X509Authorities: []*sigilv1.X509Authority{{Certificate: der}}, SequenceNumber: 1})
	if err != nil {
		t.Fatal(err)
	}
	return string(doc)
}

func TestFederationBlock(t *testing.T) {
	bundleDoc := testBundleDoc(t, "gcp.example")
	path := writeConfig(t, fedFile, map[string]string{"gcp.bundle.json": bundleDoc})
	f, err := LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	got := f.Server.Federation
	dir := filepath.Dir(path)
	want := &Federation{
		BundleEndpoint: &BundleEndpoint{Address: "127.0.0.1:8443", Profile: "https_spiffe", RefreshHint: 5 * time.Minute, At: path + ":4"},
		MinRefresh:     time.Second, MaxRefresh: time.Hour, FetchTimeout: 10 * time.Second, PartnerRefreshBound: 5 * time.Minute,
		Relationships: []Relationship{
			{
				TrustDomain: "gcp.example", BundleEndpointURL: "https://127.0.0.1:8444", Profile: "https_spiffe",
				EndpointSPIFFEID: "spiffe://gcp.example/sigil/server",
				BundleFile:       filepath.Join(dir, "gcp.bundle.json"), BootstrapBundle: []byte(bundleDoc),
				At: path + ":13",
			},
			{TrustDomain: "web.example", BundleEndpointURL: "https://web.example/bundle", Profile: "https_web", At: path + ":19"},
			// The profile defaults to https_spiffe and the endpoint ID to
			// what a Sigil server presents.
			{TrustDomain: "spire.example", BundleEndpointURL: "https://spire.example:8443", Profile: "https_spiffe", EndpointSPIFFEID: "spiffe://spire.example/sigil/server", At: path + ":23"},
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("federation =\n%+v\nwant\n%+v", got, want)
		if got != nil {
			for i := range got.Relationships {
				t.Logf("relationship %d: %+v", i, got.Relationships[i])
			}
		}
	}
	if err := f.Server.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}

	// A file without a federation block has none.
	f, err = Parse("test.hcl", []byte(`server { trust_domain = "example.org" }`))
	if err != nil || f.Server.Federation != nil {
		t.Errorf("no block: %v %+v", err, f.Server.Federation)
	}

	// https_web endpoint: cert and key resolved against the file's
	// directory (absolute paths stay).
	path = writeConfig(t, `server {
  federation {
    bundle_endpoint {
      address   = ":8443"
      profile   = "https_web"
      cert_file = "tls/chain.pem"
      key_file  = "/etc/sigil/key.pem"
    }
  }
}`, nil)
	f, err = LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ep := f.Server.Federation.BundleEndpoint
	if ep.Profile != federation.ProfileHTTPSWeb || ep.CertFile != filepath.Join(filepath.Dir(path), "tls/chain.pem") || ep.KeyFile != "/etc/sigil/key.pem" || ep.RefreshHint != 0 {
		t.Errorf("https_web endpoint = %+v", ep)
	}
}

func TestFederationBlockErrors(t *testing.T) {
	fed := func(body string) string {
		return "server {\n  trust_domain = \"aws.example\"\n  federation {\n" + body + "\n  }\n}\n"
	}
	rel := func(fields string) string {
		return fed("    federates_with \"gcp.example\" {\n" + fields + "\n    }")
	}
	const url = `      bundle_endpoint_url = "https://gcp.example:8443"` + "\n"
	tests := []struct {
		name string
		src  string
		want string // the error after "<path>:"
	}{
		{"unknown attribute", fed(`    min_refrsh = "1s"`), `4,5: Unsupported argument; An argument named "min_refrsh" is not expected here. Did you mean "min_refresh"?`},
		{"unknown relationship attribute", rel(url + `      bundle_url = "x"`), `6,7: Unsupported argument; An argument named "bundle_url" is not expected here.`},
		{"unknown endpoint attribute", fed("    bundle_endpoint {\n      address = \":1\"\n      port = 1\n    }"), `6,7: Unsupported argument; An argument named "port" is not expected here.`},
		{"unknown block", fed(`    peer "x" {}`), `4,5: Unsupported block type; Blocks of type "peer" are not expected here.`},
		{"two endpoints", fed("    bundle_endpoint {\n      address = \":1\"\n    }\n    bundle_endpoint {\n      address = \":2\"\n    }"), `7,5: Duplicate bundle_endpoint block`},
		{"relationship without label", fed(`    federates_with {}`), `4,20: Missing trust_domain for federates_with; All federates_with blocks must have 1 labels (trust_domain).`},
		{"bad duration", fed(`    min_refresh = "soon"`), `4: server.federation.min_refresh: invalid duration "soon"`},
		{"negative duration", fed(`    partner_refresh_bound = "-5m"`), `4: server.federation.partner_refresh_bound: invalid duration "-5m": must not be negative`},
		{"bad fetch timeout", fed(`    fetch_timeout = "10"`), `4: server.federation.fetch_timeout: invalid duration "10"`},
		{"max below min", fed("    min_refresh = \"2h\"\n    max_refresh = \"1h\""), `4: server.federation.min_refresh 2h0m0s is above max_refresh 1h0m0s`},
		{"endpoint without address", fed("    bundle_endpoint {\n      profile = \"https_spiffe\"\n    }"), `4: server.federation.bundle_endpoint: address is required`},
		{"endpoint bad address", fed("    bundle_endpoint {\n      address = \"8443\"\n    }"), `5: server.federation.bundle_endpoint.address "8443": want host:port`},
		{"endpoint bad profile", fed("    bundle_endpoint {\n      address = \":8443\"\n      profile = \"https\"\n    }"), `6: server.federation.bundle_endpoint.profile "https": want "https_spiffe" or "https_web"`},
		{"https_web without key", fed("    bundle_endpoint {\n      address = \":8443\"\n      profile = \"https_web\"\n      cert_file = \"c.pem\"\n    }"), `6: server.federation.bundle_endpoint: profile https_web needs cert_file and key_file`},
		{"https_spiffe with cert", fed("    bundle_endpoint {\n      address = \":8443\"\n      cert_file = \"c.pem\"\n    }"), `6: server.federation.bundle_endpoint.cert_file: profile https_spiffe serves the server's own X.509-SVID`},
		{"bad refresh hint", fed("    bundle_endpoint {\n      address = \":8443\"\n      refresh_hint = \"5 minutes\"\n    }"), `6: server.federation.bundle_endpoint.refresh_hint: invalid duration "5 minutes"`},
		{"tiny refresh hint", fed("    bundle_endpoint {\n      address = \":8443\"\n      refresh_hint = \"10ms\"\n    }"), `6: server.federation.bundle_endpoint.refresh_hint 10ms: want at least 1s`},
		{"bad trust domain", fed("    federates_with \"GCP example\" {\n" + url + "    }"), `4: server.federation.federates_with "GCP example": want a trust domain name`},
		{"spiffe id as trust domain", fed("    federates_with \"spiffe://gcp.example\" {\n" + url + "    }"), `4: server.federation.federates_with "spiffe://gcp.example": want a trust domain name`},
		{"no url", rel(`      profile = "https_web"`), `4: server.federation.federates_with "gcp.example": bundle_endpoint_url is required`},
		{"http url", rel(`      bundle_endpoint_url = "http://gcp.example"`), `5: server.federation.federates_with "gcp.example".bundle_endpoint_url "http://gcp.example": want an https URL`},
		{"url with user", rel(`      bundle_endpoint_url = "https://me@gcp.example"`), `5: server.federation.federates_with "gcp.example".bundle_endpoint_url "https://me@gcp.example": want an https URL with a host and no user info`},
		{"bad profile", rel(url + `      profile = "spiffe"`), `6: server.federation.federates_with "gcp.example".profile "spiffe": want "https_spiffe" or "https_web"`},
		{"bad endpoint id", rel(url + `      endpoint_spiffe_id = "gcp.example/server"`), `6: server.federation.federates_with "gcp.example".endpoint_spiffe_id "gcp.example/server": `},
		{"endpoint id of another trust domain", rel(url + `      endpoint_spiffe_id = "spiffe://aws.example/sigil/server"`), `6: server.federation.federates_with "gcp.example".endpoint_spiffe_id "spiffe://aws.example/sigil/server" is not in trust domain gcp.example`},
		{"https_web with endpoint id", rel(url + "      profile = \"https_web\"\n      endpoint_spiffe_id = \"spiffe://gcp.example/sigil/server\""), `7: server.federation.federates_with "gcp.example".endpoint_spiffe_id: profile https_web authenticates the endpoint with web PKI`},
		{"missing bundle file", rel(url + `      bundle_file = "nope.json"`), `6: server.federation.federates_with "gcp.example".bundle_file: open `},
		{"empty bundle file", rel(url + `      bundle_file = "empty.json"`), `6: server.federation.federates_with "gcp.example".bundle_file: `},
		{"huge bundle file", rel(url + `      bundle_file = "huge.json"`), `6: server.federation.federates_with "gcp.example".bundle_file: `},
		{"bundle file is a directory", rel(url + `      bundle_file = "sub"`), `6: server.federation.federates_with "gcp.example".bundle_file: `},
		{"garbage bundle file", rel(url + `      bundle_file = "garbage.json"`), `6: server.federation.federates_with "gcp.example".bundle_file `},
		{"bundle file without keys", rel(url + `      bundle_file = "nokeys.json"`), `6: server.federation.federates_with "gcp.example".bundle_file `},
		{"bundle file is a device", rel(url + `      bundle_file = "/dev/zero"`), `6: server.federation.federates_with "gcp.example".bundle_file: /dev/zero is not a regular file`},
		{"duplicate trust domain", fed("    federates_with \"gcp.example\" {\n" + url + "    }\n    federates_with \"gcp.example\" {\n" + url + "    }"), `7: server.federation: a second federates_with "gcp.example" block (the first is at `},
	}
	// tails: what the error holds after the temporary directory.
	tails := map[string]string{
		"garbage bundle file":        `/garbage.json: federation: bundle document of "gcp.example": not a JWKS document`,
		"bundle file without keys":   `/nokeys.json: federation: bundle document of "gcp.example": `,
		"missing bundle file":        "nope.json: no such file or directory",
		"empty bundle file":          "/empty.json is empty",
		"huge bundle file":           "/huge.json is larger than 1048576 bytes, the limit of a bundle document",
		"bundle file is a directory": "/sub is not a regular file",
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			files := map[string]string{"empty.json": " \n", "garbage.json": "<html>", "nokeys.json": `{"keys": []}`}
			if strings.Contains(tt.src, "huge.json") {
				files["huge.json"] = strings.Repeat(" ", federation.MaxDocumentSize) + "{}"
			}
			path := writeConfig(t, tt.src, files)
			if err := os.Mkdir(filepath.Join(filepath.Dir(path), "sub"), 0o700); err != nil {
				t.Fatal(err)
			}
			_, err := LoadFile(path)
			if err == nil {
				t.Fatalf("no error for\n%s", tt.src)
			}
			if !strings.HasPrefix(err.Error(), path+":"+tt.want) || !strings.Contains(err.Error(), tails[tt.name]) {
				t.Errorf("error = %q\nwant prefix %q, containing %q", err, path+":"+tt.want, tails[tt.name])
			}
		})
	}
}

func TestFederationBundleFileErrors(t *testing.T) {
	src := "server {\n  federation {\n    federates_with \"gcp.example\" {\n      bundle_endpoint_url = \"https://gcp.example\"\n      bundle_file = \"%s\"\n    }\n  }\n}\n"
	path := writeConfig(t, strings.Replace(src, "%s", "huge.json", 1), map[string]string{"huge.json": strings.Repeat("x", federation.MaxDocumentSize+1)})
	if _, err := LoadFile(path); err == nil || !strings.Contains(err.Error(), "is larger than 1048576 bytes, the limit of a bundle document") {
		t.Errorf("huge bundle file: %v", err)
	}
	// Exactly the limit is accepted.
	doc := testBundleDoc(t, "gcp.example")
	path = writeConfig(t, strings.Replace(src, "%s", "max.json", 1), map[string]string{"max.json": doc + strings.Repeat(" ", federation.MaxDocumentSize-len(doc))})
	f, err := LoadFile(path)
	if err != nil || len(f.Server.Federation.Relationships[0].BootstrapBundle) != federation.MaxDocumentSize {
		t.Errorf("bundle file of the maximum size: %v", err)
	}
	path = writeConfig(t, strings.Replace(src, "%s", "missing.json", 1), nil)
	if _, err := LoadFile(path); err == nil || !strings.Contains(err.Error(), path+":5: ") || !strings.Contains(err.Error(), filepath.Join(filepath.Dir(path), "missing.json")+": no such file or directory") {
		t.Errorf("missing bundle file: %v", err)
	}
}

func TestFederationOwnTrustDomain(t *testing.T) {
	src := []byte("server {\n  trust_domain = \"aws.example\"\n  federation {\n    federates_with \"gcp.example\" {\n      bundle_endpoint_url = \"https://gcp.example\"\n    }\n  }\n}\n")
	f, err := Parse("test.hcl", src)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Server.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
	// -trust-domain gcp.example on the command line makes it the own one.
	f.Server.TrustDomain = "gcp.example"
	if err := f.Server.Validate(); err == nil || err.Error() != `test.hcl:4: server.federation.federates_with "gcp.example": that is this server's own trust domain` {
		t.Errorf("own trust domain: %v", err)
	}
}

// The federation block's bundle file is read relative to the file, not to
// the working directory.
func TestFederationBundleFileRelativeToConfig(t *testing.T) {
	bundleDoc := testBundleDoc(t, "gcp.example")
	path := writeConfig(t, "server {\n  federation {\n    federates_with \"gcp.example\" {\n      bundle_endpoint_url = \"https://gcp.example\"\n      bundle_file = \"b.json\"\n    }\n  }\n}\n", map[string]string{"b.json": bundleDoc})
	t.Chdir(t.TempDir())
	f, err := LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(f.Server.Federation.Relationships[0].BootstrapBundle, []byte(bundleDoc)) {
		t.Errorf("bootstrap bundle = %q", f.Server.Federation.Relationships[0].BootstrapBundle)
	}
}
