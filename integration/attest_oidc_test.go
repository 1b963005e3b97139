package integration

import (
	"crypto/ecdsa"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/sigil-id/sigil/internal/eventually"
	"github.com/sigil-id/sigil/internal/jwkstest"
)

// oidcIssuer is a fake OIDC issuer on loopback: discovery and a JWKS with
// one ES256 key, and tokens shaped like GitHub Actions' signed with it.
type oidcIssuer struct {
	srv *httptest.Server
	key *ecdsa.PrivateKey
}

func newOIDCIssuer(t *testing.T) *oidcIssuer {
	t.Helper()
	key := jwkstest.ECKey(t)
	iss := jwkstest.NewIssuer(t, jose.JSONWebKey{Key: key.Public(), KeyID: "it-1", Algorithm: "ES256", Use: "sig"})
	iss.ServeDiscovery("/.well-known/openid-configuration", func(*http.Request) map[string]any {
		return map[string]any{"issuer": iss.URL, "jwks_uri": iss.URL + "/jwks", "id_token_signing_alg_values_supported": []string{"ES256"}}
	})
	iss.ServeJWKS("/jwks")
	return &oidcIssuer{srv: iss.Server, key: key}
}

// token returns a token for repository repo and run id run, valid for ten
// minutes, with a jti of its own.
func (is *oidcIssuer) token(t *testing.T, repo, run string) string {
	t.Helper()
	now := time.Now()
	return jwkstest.Sign(t, jose.ES256, is.key, "it-1", map[string]any{
		"iss": is.srv.URL, "aud": "sigil", "jti": "it-" + run, "sub": "repo:" + repo + ":ref:refs/heads/main",
		"repository": repo, "repository_owner": strings.Split(repo, "/")[0], "run_id": run, "workflow": "deploy",
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(10 * time.Minute).Unix(),
	})
}

// withOIDCServerPlugins rewrites s's configuration with a plugins block:
// the join_token and oidc node attestors (issuer "it" trusting is) and
// the disk key manager.
func withOIDCServerPlugins(t *testing.T, s *server, is *oidcIssuer) {
	t.Helper()
	cfg, err := os.ReadFile(s.config)
	if err != nil {
		t.Fatal(err)
	}
	plugins := fmt.Sprintf(`  plugins {
    node_attestor "join_token" {}
    node_attestor "oidc" {
      issuer "it" {
        issuer_url      = %q
        audiences       = ["sigil"]
        claim_selectors = { repository = "repo", repository_owner = "owner" }
        agent_id        = "run-{{claims.run_id}}"
        required_claims = { repository_owner = "acme" }
        max_token_lifetime = "15m"
      }
    }
    key_manager "disk" {}
  }
}
`, is.srv.URL)
	out := strings.TrimSuffix(string(cfg), "}\n") + plugins
	if err := os.WriteFile(s.config, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
}

// newOIDCAgent returns an agent attesting with the oidc attestor from a
// token file holding token.
func newOIDCAgent(t *testing.T, s *server, dir, token, wantID string) *agent {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(dir, "bootstrap.pem")
	if err := os.WriteFile(bundle, []byte(s.cli("bundle", "show")), 0o644); err != nil {
		t.Fatal(err)
	}
	tokenPath := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenPath, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := &agent{
		t:      t,
		dir:    dir,
		config: filepath.Join(dir, "agent.hcl"),
		socket: filepath.Join(dir, "public", "api.sock"),
		health: freeAddr(t),
		id:     wantID,
	}
	cfg := fmt.Sprintf(`agent {
  trust_domain      = %q
  server_address    = %q
  data_dir          = %q
  socket_path       = %q
  trust_bundle_path = %q
  health_address    = %q
  log_level         = "debug"
  plugins {
    node_attestor "oidc" {
      token_path = %q
    }
    workload_attestor "unix" {}
  }
}
`, trustDomain, s.addr, filepath.Join(dir, "data"), a.socket, bundle, a.health, tokenPath)
	if err := os.WriteFile(a.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return a
}

// TestAttestOIDCNodeAlias: three real agents attest to a real server with
// OIDC tokens from a fake issuer on loopback. A node alias on the
// selector oidc:it:repo:acme/app, and a workload entry under it, give the
// workload (this test process, by uid) the aliased SVID through the two
// agents whose tokens name acme/app, and not through the third (acme/other).
func TestAttestOIDCNodeAlias(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	root := t.TempDir()
	is := newOIDCIssuer(t)
	s := newServer(t, filepath.Join(root, "server"))
	withOIDCServerPlugins(t, s, is)
	s.start()

	agentID := func(run string) string { return "spiffe://" + trustDomain + "/sigil/agent/oidc/it/run-" + run }
	var agents []*agent
	for i, repo := range []string{"acme/app", "acme/app", "acme/other"} {
		run := fmt.Sprint(1000 + i)
		a := newOIDCAgent(t, s, filepath.Join(root, fmt.Sprintf("agent%d", i)), is.token(t, repo, run), agentID(run))
		a.start()
		agents = append(agents, a)
	}
	// Each agent is attested with its id and node selectors.
	for i, a := range agents {
		out := s.cli("agent", "show", "-spiffe-id", a.id, "-output", "json")
		repo := []string{"acme/app", "acme/app", "acme/other"}[i]
		for _, sel := range []string{"oidc:issuer:it", "oidc:it:repo:" + repo, "oidc:it:owner:acme"} {
			typ, val, _ := strings.Cut(sel, ":")
			if !strings.Contains(out, `"`+typ+`"`) || !strings.Contains(out, `"`+val+`"`) {
				t.Fatalf("agent %s lacks node selector %s: %s", a.id, sel, out)
			}
		}
	}

	serversID := "spiffe://" + trustDomain + "/sigil/server"
	alias := "spiffe://" + trustDomain + "/it/ci/acme-app"
	workload := "spiffe://" + trustDomain + "/it/ci/acme-app/workload"
	createEntry(t, s, alias, serversID, "oidc:it:repo:acme/app")
	createEntry(t, s, workload, alias, uidSelector(t))
	fetchID(t, agents[0].socket, workload)
	fetchID(t, agents[1].socket, workload)

	// The third agent serves its own entry but not the aliased one.
	own := "spiffe://" + trustDomain + "/it/other/workload"
	createEntry(t, s, own, agents[2].id, uidSelector(t))
	xc := fetchID(t, agents[2].socket, own)
	for _, svid := range xc.SVIDs {
		if svid.ID.String() == workload {
			t.Fatalf("the agent of acme/other serves %s", workload)
		}
	}

	// A fourth agent replaying the first agent's token (same jti) is
	// refused: the use-once record is kept by the servers.
	replay := newOIDCAgent(t, s, filepath.Join(root, "replay"), readToken(t, agents[0]), agents[0].id)
	replay.p = startProc(t, "replay agent", filepath.Join(replay.dir, "agent.log"), nil, sigilBin, "agent", "-config", replay.config)
	eventually.NoError(t, 30*time.Second, func() error {
		b, _ := os.ReadFile(s.p.log)
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, `"node_attestation_refused"`) && strings.Contains(line, `"attestation_type":"oidc"`) &&
				strings.Contains(line, "already used") {
				return nil
			}
		}
		return fmt.Errorf("no refusal of the replayed token in the server log yet")
	})
	if out := s.cli("agent", "list", "-output", "json"); strings.Count(out, "/sigil/agent/oidc/") != 3 {
		t.Fatalf("want the three oidc agents only, got %s", out)
	}
}

func readToken(t *testing.T, a *agent) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(a.dir, "token"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}
