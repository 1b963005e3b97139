package main

import (
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/sigil-id/sigil/cmd/sigil/internal/config"
)

// admin_address and admin_ids reach the server's configuration; an ID
// that is not a SPIFFE ID, or of another trust domain, is refused with a
// clear error.
func TestServerConfigRemoteAdmin(t *testing.T) {
	f, err := config.Parse("server.hcl", []byte(`server {
  trust_domain  = "example.org"
  admin_address = "127.0.0.1:8443"
  admin_ids     = ["spiffe://example.org/ops/alice", "spiffe://example.org/sigil/agent/join_token/n1"]
}
`))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := serverConfig(f.Server, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.AdminAddress != "127.0.0.1:8443" || len(cfg.AdminIDs) != 2 || cfg.AdminIDs[0].String() != "spiffe://example.org/ops/alice" ||
		cfg.AdminIDs[1].String() != "spiffe://example.org/sigil/agent/join_token/n1" {
		t.Fatalf("admin address %q ids %v", cfg.AdminAddress, cfg.AdminIDs)
	}
	for ids, want := range map[string]string{
		"alice":                  `admin_ids: "alice" is not a SPIFFE ID`,
		"spiffe://other.org/ops": `admin_ids: spiffe://other.org/ops is not of trust domain "example.org"`,
	} {
		_, err := serverConfig(&config.Server{TrustDomain: "example.org", AdminIDs: ids}, zap.NewNop())
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("admin_ids %q: %v, want %q", ids, err, want)
		}
	}
	if _, err := serverConfig(&config.Server{TrustDomain: "example.org", AdminAddress: "8443"}, zap.NewNop()); err == nil || !strings.Contains(err.Error(), `admin_address "8443": want host:port`) {
		t.Errorf("admin_address without a port: %v", err)
	}
}
