package awsiid

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"

	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/attestor/node/awsiid/awsiidtest"
	"github.com/sigil-id/sigil/plugin"
	"github.com/sigil-id/sigil/registration"
)

func newTestAttestor(t *testing.T, endpoint string, timeout time.Duration) *Attestor {
	t.Helper()
	c := DefaultAttestorConfig()
	c.Endpoint, c.Timeout = endpoint, timeout
	a, err := NewAttestor(c)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// The agent half reads the evidence from IMDSv2 and the server half
// accepts it.
func TestAttestorAgainstFakeIMDS(t *testing.T) {
	f := newFixture(t)
	doc := f.doc.JSON()
	sig := f.signer.Sign(t, doc)
	m := awsiidtest.NewIMDS(t, doc, sig)
	a := newTestAttestor(t, m.URL, 5*time.Second)
	p, err := a.Payload(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var got Payload
	if err := json.Unmarshal(p, &got); err != nil || got.Document != string(doc) || got.RSA2048 != sig {
		t.Fatalf("payload %s, %v", p, err)
	}
	if m.Requests.Load() != 3 {
		t.Fatalf("%d requests, want 3 (token, document, signature)", m.Requests.Load())
	}
	res, err := f.verify(t, nil, p)
	if err != nil || res.ID != account+"/"+region+"/"+instance {
		t.Fatalf("Verify = %+v, %v", res, err)
	}
	if !a.ChallengeFree() || a.Name() != Name {
		t.Fatal("attestor identity")
	}
	if _, err := a.Answer(context.Background(), []byte("x")); err == nil {
		t.Fatal("Answer accepted a challenge")
	}
}

func TestAttestorFailures(t *testing.T) {
	f := newFixture(t)
	doc := f.doc.JSON()

	// Nothing listens: fails at once.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	if _, err := newTestAttestor(t, "http://"+addr, 5*time.Second).Payload(context.Background()); err == nil || !strings.Contains(err.Error(), "awsiid: IMDSv2 session token") {
		t.Fatalf("unreachable endpoint: %v", err)
	}

	// A metadata service that never answers: bounded by the timeout.
	m := awsiidtest.NewIMDS(t, doc, "sig")
	m.Hang.Store(true)
	if _, err := newTestAttestor(t, m.URL, 100*time.Millisecond).Payload(context.Background()); err == nil || !strings.Contains(err.Error(), "timeout") && !strings.Contains(err.Error(), "deadline") {
		t.Fatalf("hanging endpoint: %v", err)
	}
	m.Hang.Store(false)

	// An oversized document is refused by the agent.
	m.Set([]byte(strings.Repeat("x", MaxDocumentSize+1)), "sig")
	if _, err := newTestAttestor(t, m.URL, 5*time.Second).Payload(context.Background()); err == nil || !strings.Contains(err.Error(), "response over") {
		t.Fatalf("oversized document: %v", err)
	}

	// Not a metadata service (404): the status, never the token.
	m2 := awsiidtest.NewIMDS(t, doc, "sig")
	a := newTestAttestor(t, m2.URL+"/", 5*time.Second)
	a.base += "/nothing-here"
	_, err = a.Payload(context.Background())
	if err == nil || !strings.Contains(err.Error(), "401 Unauthorized") {
		t.Fatalf("wrong endpoint: %v", err)
	}
	if strings.Contains(err.Error(), "-token") {
		t.Fatalf("error echoes the session token: %v", err)
	}
}

func TestAttestorConfigValidate(t *testing.T) {
	if err := DefaultAttestorConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	for _, mod := range []func(*AttestorConfig){
		func(c *AttestorConfig) { c.Endpoint = "169.254.169.254" },
		func(c *AttestorConfig) { c.Endpoint = "ftp://169.254.169.254" },
		func(c *AttestorConfig) { c.Endpoint = "http://169.254.169.254/latest" },
		func(c *AttestorConfig) { c.Timeout = 0 },
		func(c *AttestorConfig) { c.TokenTTL = 0 },
		func(c *AttestorConfig) { c.TokenTTL = 7 * time.Hour },
		func(c *AttestorConfig) { c.TokenTTL = 1500 * time.Millisecond },
	} {
		c := DefaultAttestorConfig()
		mod(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("Validate accepted %+v", c)
		}
	}
}

func parseBody(t *testing.T, src string) hcl.Body {
	t.Helper()
	f, diags := hclsyntax.ParseConfig([]byte(src), "test.hcl", hcl.InitialPos)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	return f.Body
}

func TestPlugin(t *testing.T) {
	if !strings.Contains(strings.Join(registration.SelectorTypes(), ","), Name) {
		t.Fatal("the aws_iid selector type is not registered")
	}
	f := newFixture(t)
	certPath := t.TempDir() + "/us-east-1.pem"
	if err := writeFile(certPath, f.signer.CertPEM); err != nil {
		t.Fatal(err)
	}
	v, err := pluginNew(parseBody(t, `
regions = { "us-east-1" = { certificate_path = "`+certPath+`" } }
account_allow_list  = ["123456789012"]
max_document_age    = "24h"
allow_reattestation = true
`), plugin.Env{Role: plugin.RoleServer})
	if err != nil {
		t.Fatal(err)
	}
	ver := v.(*Verifier)
	if strings.Join(ver.Regions(), ",") != region || ver.maxAge != 24*time.Hour || !ver.reattest || !ver.accounts[account] {
		t.Fatalf("verifier %+v", ver)
	}
	if _, err := ver.Verify(context.Background(), &state{}, exchange(f.payload(t))); err != nil {
		t.Fatal(err)
	}

	a, err := pluginNew(parseBody(t, `metadata_endpoint = "http://127.0.0.1:1"
timeout = "2s"
token_ttl = "30s"`), plugin.Env{Role: plugin.RoleAgent})
	if err != nil {
		t.Fatal(err)
	}
	if at := a.(*Attestor); at.c.Endpoint != "http://127.0.0.1:1" || at.c.Timeout != 2*time.Second || at.c.TokenTTL != 30*time.Second {
		t.Fatalf("attestor config %+v", at.c)
	}
	if _, ok := a.(node.Attestor); !ok {
		t.Fatal("agent half is not a node.Attestor")
	}
	if a, err := pluginNew(hcl.EmptyBody(), plugin.Env{Role: plugin.RoleAgent}); err != nil || a.(*Attestor).c != DefaultAttestorConfig() {
		t.Fatalf("empty agent block: %v", err)
	}

	for _, c := range []struct {
		role     plugin.Role
		src, msg string
	}{
		{plugin.RoleServer, `account_allow_list = ["123456789012"]`, "regions"},
		{plugin.RoleServer, `regions = { "us-east-1" = { certificate_path = "/nonexistent.pem" } }
account_allow_list = ["123456789012"]`, "no such file"},
		{plugin.RoleServer, `regions = { "us-east-1" = { certificate_path = "` + certPath + `" } }
account_allow_list = []`, "allow-list is empty"},
		{plugin.RoleServer, `regions = { "us-east-1" = { certificate_path = "` + certPath + `" } }
account_allow_list = ["123456789012"]
max_document_age = "soon"`, "max_document_age"},
		{plugin.RoleServer, `regions = { "us-east-1" = { certificate_path = "` + certPath + `", extra = 1 } }
account_allow_list = ["123456789012"]`, `unknown setting "extra"`},
		{plugin.RoleAgent, `metadata_endpoint = "nope"`, "not an http(s) base URL"},
		{plugin.RoleAgent, `timeout = "x"`, "timeout"},
		{plugin.RoleAgent, `unknown = 1`, "unknown"},
	} {
		if _, err := pluginNew(parseBody(t, c.src), plugin.Env{Role: c.role}); err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s block %q: %v, want %q", c.role, c.src, err, c.msg)
		}
	}
}

func writeFile(path string, b []byte) error { return os.WriteFile(path, b, 0o644) }
