package server

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/attestor/node/jointoken"
	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/ca/keymanager/disk"
	"github.com/sigil-id/sigil/ca/keymanager/memory"

	// The tests register entries with unix selectors.
	_ "github.com/sigil-id/sigil/attestor/workload/unix"
)

// withPlugins gives cfg the plugins cmd/sigil configures by default: the
// join_token verifier and, for keyManager "disk", the disk key manager
// under cfg.DataDir (set DataDir first); "memory" is the memory key
// manager.
func withPlugins(t testing.TB, cfg *Config, keyManager string) {
	t.Helper()
	cfg.NodeVerifiers = []node.Verifier{jointoken.NewServerVerifier()}
	switch keyManager {
	case "memory":
		cfg.KeyStore = memory.NewStore()
	case "disk":
		st, err := disk.NewStore(disk.DefaultDirs(cfg.DataDir))
		if err != nil {
			t.Fatal(err)
		}
		cfg.KeyStore = st
	default:
		t.Fatalf("withPlugins: unknown key manager %q", keyManager)
	}
}

// namedVerifier is a verifier with only a name, for Validate's checks.
type namedVerifier string

func (v namedVerifier) Name() string { return string(v) }
func (namedVerifier) Verify(context.Context, node.State, node.Exchange) (*node.Result, error) {
	return nil, nil
}

func TestConfigRefusesMissingOrDuplicatePlugins(t *testing.T) {
	base := func() Config {
		cfg := DefaultConfig()
		cfg.TrustDomain = testTD
		cfg.DataDir = t.TempDir()
		withPlugins(t, &cfg, "memory")
		return cfg
	}
	if cfg := base(); cfg.Validate() != nil {
		t.Fatalf("base config: %v", cfg.Validate())
	}
	for _, c := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"no key manager", func(c *Config) { c.KeyStore = nil }, "server: no key manager"},
		{"no verifier", func(c *Config) { c.NodeVerifiers = nil }, "server: no node verifier"},
		{"nil verifier", func(c *Config) { c.NodeVerifiers = append(c.NodeVerifiers, nil) }, "node verifier 1 is nil"},
		{"unnamed verifier", func(c *Config) { c.NodeVerifiers = append(c.NodeVerifiers, namedVerifier("")) }, "has no name"},
		{"duplicate verifier", func(c *Config) { c.NodeVerifiers = append(c.NodeVerifiers, namedVerifier("join_token")) }, `two node verifiers are named "join_token"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := base()
			c.edit(&cfg)
			err := cfg.Validate()
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Validate = %v, want %q", err, c.want)
			}
			if _, err := New(cfg); err == nil {
				t.Fatal("New accepted the config")
			}
		})
	}
}

// The disk key manager keeps keys where servers always have: DataDir/keys
// and DataDir/cluster/keys, with the identity CA's certificate in
// DataDir/cluster/ca.pem; the memory one keeps no certificate.
func TestKeyManagerScopes(t *testing.T) {
	ctx := context.Background()
	cfg := DefaultConfig()
	cfg.TrustDomain = testTD
	cfg.DataDir = t.TempDir()
	withPlugins(t, &cfg, "disk")
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	km, persist, err := s.authorityKeyManager(ctx)
	if err != nil || !persist {
		t.Fatalf("authorityKeyManager: persist %v, %v", persist, err)
	}
	if _, err := km.GenerateKey(ctx, "k", ca.KeyTypeECP256); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, "keys", "k.key.pem")); err != nil {
		t.Fatalf("the authority key is not in DataDir/keys: %v", err)
	}
	ikm, certPath, err := s.identityKeyManager(ctx)
	if err != nil || certPath != filepath.Join(cfg.DataDir, "cluster", "ca.pem") {
		t.Fatalf("identityKeyManager: cert %q, %v", certPath, err)
	}
	if _, err := ikm.GenerateKey(ctx, "i", ca.KeyTypeECP256); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, "cluster", "keys", "i.key.pem")); err != nil {
		t.Fatalf("the identity key is not in DataDir/cluster/keys: %v", err)
	}

	withPlugins(t, &cfg, "memory")
	s, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, persist, err := s.authorityKeyManager(ctx); err != nil || persist {
		t.Fatalf("memory authorityKeyManager: persist %v, %v", persist, err)
	}
	if _, certPath, err := s.identityKeyManager(ctx); err != nil || certPath != "" {
		t.Fatalf("memory identityKeyManager: cert %q, %v", certPath, err)
	}
}

// Without the join_token verifier the admin API creates no join tokens.
func TestCreateJoinTokenNeedsJoinTokenVerifier(t *testing.T) {
	cfg := DefaultConfig()
	cfg.TrustDomain = testTD
	cfg.DataDir = t.TempDir()
	withPlugins(t, &cfg, "memory")
	cfg.NodeVerifiers = []node.Verifier{namedVerifier("x509pop")}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = (&adminAPI{s: s}).CreateJoinToken(context.Background(), &sigilv1.CreateJoinTokenRequest{})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), `no node_attestor "join_token"`) {
		t.Fatalf("CreateJoinToken = %v, want FailedPrecondition", err)
	}
	if _, ok := s.verifiers["x509pop"]; !ok || len(s.verifiers) != 1 {
		t.Fatalf("verifiers = %v", s.verifiers)
	}
}
