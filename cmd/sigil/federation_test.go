package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/cmd/sigil/internal/cli"
	"github.com/sigil-id/sigil/cmd/sigil/internal/config"
	"github.com/sigil-id/sigil/federation"
)

// bundleDoc is a SPIFFE bundle document of trust domain td with one
// self-signed CA.
func bundleDoc(t *testing.T, td string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		URIs: []*url.URL{{Scheme: "spiffe", Host: td}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := federation.Encode(&sigilv1.Bundle{TrustDomain: td, X509Authorities: []*sigilv1.X509Authority{{Certificate: der}}})
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

// The federation block of the file reaches server.Config.Federation, its
// relationships marked from_config with their bootstrap bundles.
func TestServerFederationConfig(t *testing.T) {
	dir := t.TempDir()
	doc := bundleDoc(t, "gcp.example")
	os.WriteFile(filepath.Join(dir, "gcp.bundle.json"), doc, 0o600)
	path := filepath.Join(dir, "server.hcl")
	os.WriteFile(path, []byte(`server {
  trust_domain = "aws.example"
  federation {
    bundle_endpoint {
      address      = "127.0.0.1:8443"
      refresh_hint = "1m"
    }
    min_refresh           = "2s"
    max_refresh           = "30m"
    fetch_timeout         = "3s"
    partner_refresh_bound = "90s"
    federates_with "gcp.example" {
      bundle_endpoint_url = "https://127.0.0.1:8444"
      bundle_file         = "gcp.bundle.json"
    }
  }
}
`), 0o600)
	f, err := config.LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := serverConfig(f.Server, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	fed := cfg.Federation
	if ep := fed.BundleEndpoint; ep.Address != "127.0.0.1:8443" || ep.Profile != "https_spiffe" || ep.RefreshHint != time.Minute || ep.CertFile != "" {
		t.Errorf("bundle endpoint = %+v", ep)
	}
	if fed.MinRefresh != 2*time.Second || fed.MaxRefresh != 30*time.Minute || fed.FetchTimeout != 3*time.Second || fed.PartnerRefreshBound != 90*time.Second {
		t.Errorf("bounds = %+v", fed)
	}
	want := &sigilv1.FederationRelationship{TrustDomain: "gcp.example", BundleEndpointUrl: "https://127.0.0.1:8444", Profile: "https_spiffe",
		EndpointSpiffeId: "spiffe://gcp.example/sigil/server", FromConfig: true}
	if len(fed.Relationships) != 1 || !proto.Equal(fed.Relationships[0].Relationship, want) || !bytes.Equal(fed.Relationships[0].BootstrapBundle, doc) {
		t.Errorf("relationships = %+v, want %v", fed.Relationships, want)
	}

	// Without a block, nothing is configured.
	cfg, err = serverConfig(&config.Server{TrustDomain: "example.org"}, zap.NewNop())
	if err != nil || cfg.Federation.BundleEndpoint.Address != "" || len(cfg.Federation.Relationships) != 0 {
		t.Errorf("no federation block: %v %+v", err, cfg.Federation)
	}
}

// `sigil server` refuses a bad federation block with the file and line.
func TestServerFederationConfigErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, src string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(src), 0o600)
		return p
	}
	missing := write("missing.hcl", "server {\n  trust_domain = \"aws.example\"\n  federation {\n    federates_with \"gcp.example\" {\n      bundle_endpoint_url = \"https://gcp.example\"\n      bundle_file = \"gone.json\"\n    }\n  }\n}\n")
	own := write("own.hcl", "server {\n  trust_domain = \"aws.example\"\n  federation {\n    federates_with \"aws.example\" {\n      bundle_endpoint_url = \"https://aws.example\"\n    }\n  }\n}\n")
	web := write("web.hcl", "server {\n  trust_domain = \"aws.example\"\n  federation {\n    bundle_endpoint {\n      address = \":8443\"\n      profile = \"https_web\"\n    }\n  }\n}\n")
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"server", "-config", missing}, missing + `:6: server.federation.federates_with "gcp.example".bundle_file: open ` + filepath.Join(dir, "gone.json") + ": no such file or directory"},
		{[]string{"server", "-config", own}, own + `:4: server.federation.federates_with "aws.example": that is this server's own trust domain`},
		{[]string{"server", "-config", web}, web + `:6: server.federation.bundle_endpoint: profile https_web needs cert_file and key_file`},
	} {
		var out, errb bytes.Buffer
		code := cli.Execute(newRootCommand(), tt.args, &out, &errb)
		if code != 1 || !strings.HasPrefix(errb.String(), "sigil: "+tt.want) || strings.Count(errb.String(), "\n") != 1 {
			t.Errorf("%q: code %d, stderr %q, want %q", tt.args, code, errb.String(), tt.want)
		}
	}
}
