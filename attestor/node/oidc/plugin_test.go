package oidc

import (
	"context"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/attestor/node/internal/nodetest"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/jwkstest"
	"github.com/sigil-id/sigil/plugin"
	"github.com/sigil-id/sigil/registration"
)

func TestPluginServerBlock(t *testing.T) {
	if !strings.Contains(","+strings.Join(registration.SelectorTypes(), ",")+",", ","+Name+",") {
		t.Fatal("the oidc selector type is not registered")
	}
	f := newFakeIssuer(t)
	st := newState()
	body := nodetest.ParseBody(t, `
clock_skew = "10s"
issuer "github" {
  issuer_url = "`+f.srv.URL+`"
  audiences = ["sigil"]
  claim_selectors = { repository = "repo", "repository_owner" = "owner" }
  agent_id = "{{claims.repository}}/{{claims.run_id}}"
  required_claims = { repository_owner = "acme" }
  max_token_lifetime = "10m"
}
`)
	v, err := pluginNew(body, plugin.Env{Role: plugin.RoleServer, Clock: st.clk})
	if err != nil {
		t.Fatal(err)
	}
	ver := v.(*Verifier)
	if ver.skew != 10*time.Second || ver.byURL[f.srv.URL].cfg.MaxTokenLifetime != 10*time.Minute {
		t.Fatalf("decoded skew %s, issuers %+v", ver.skew, ver.byURL)
	}
	res, err := ver.Verify(context.Background(), st, exchange(jwkstest.Sign(t, jose.RS256, rsaKey, "rsa-1", githubClaims(f.srv.URL))))
	if err != nil || res.ID != "github/acme_2Fapp/9876543210123456789" {
		t.Fatalf("Verify = %+v, %v", res, err)
	}
	for src, want := range map[string]string{
		``:                                 "no issuer block",
		`bogus = 1`:                        "Unsupported argument",
		`issuer "a" { audiences = ["x"] }`: "issuer_url",
		`issuer "a" {
  issuer_url = "https://a.example"
  audiences = ["x"]
  signing_algs = ["HS256"]
}`: "not allowed",
		`issuer "a" {
  issuer_url = "https://a.example"
  audiences = ["x"]
  max_token_lifetime = "soon"
}`: "max_token_lifetime",
		`fetch_timeout = "fast"`: "fetch_timeout",
	} {
		if _, err := pluginNew(nodetest.ParseBody(t, src), plugin.Env{Role: plugin.RoleServer, Clock: clock.New()}); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error about %s", src, err, want)
		}
	}
}

func TestPluginAgentBlock(t *testing.T) {
	v, err := pluginNew(nodetest.ParseBody(t, `token_env = "MY_TOKEN"`), plugin.Env{Role: plugin.RoleAgent})
	if err != nil {
		t.Fatal(err)
	}
	a := v.(*Attestor)
	if a.cfg.TokenEnv != "MY_TOKEN" || a.Name() != Name {
		t.Fatalf("decoded %+v", a.cfg)
	}
	if _, ok := v.(node.ChallengeFree); !ok {
		t.Error("the agent half is not ChallengeFree")
	}
	if _, ok := v.(node.SingleUse); ok {
		t.Error("the agent half is SingleUse: a fresh token attests again")
	}
	for _, src := range []string{``, `token_env = "A"
token_path = "/b"`, `issuer "x" {}`} {
		if _, err := pluginNew(nodetest.ParseBody(t, src), plugin.Env{Role: plugin.RoleAgent}); err == nil {
			t.Errorf("%q accepted", src)
		}
	}
}
