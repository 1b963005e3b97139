package policy_test

import (
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/mtls/policy"
)

func ExamplePolicy_Decide() {
	p, err := policy.Parse([]byte(`
rule "web-reads-users" {
  from    = ["spiffe://prod.example/ns/*/sa/web"]
  to      = ["http:GET,HEAD /v1/users/**"]
  service = "users"
}`), "policy.hcl")
	if err != nil {
		fmt.Println(err)
		return
	}
	now := time.Now()
	web := spiffeid.RequireFromString("spiffe://prod.example/ns/prod/sa/web")
	d := p.Decide(web, policy.HTTPTarget("users", "GET", "/v1/users/42"), now)
	fmt.Println(d.Effect, d.Rule)
	d = p.Decide(web, policy.HTTPTarget("users", "DELETE", "/v1/users/42"), now)
	fmt.Println(d.Effect, "-", d.Reason())
	// Output:
	// allowed web-reads-users
	// denied - spiffe://prod.example/ns/prod/sa/web may not call DELETE /v1/users/42 on service users: no rule in policy.hcl allows it (deny by default; add a rule with this SPIFFE ID in from and this target in to)
}

func ExampleLint() {
	p, _ := policy.Parse([]byte(`
rule "team" {
  from = ["spiffe://prod.example/team-a/**"]
  to   = ["service:api"]
}
rule "one-job" {
  from = ["spiffe://prod.example/team-a/jobs/nightly"]
  to   = ["service:api"]
}`), "policy.hcl")
	for _, f := range policy.Lint(p, time.Now()) {
		fmt.Println(f)
	}
	// Output:
	// line 6: error: rule "one-job" is shadowed by rule "team" (line 2): every call it allows is already allowed by "team"; remove it or narrow "team"
}

func ExampleParse_error() {
	_, err := policy.Parse([]byte(`
rule "web" {
  from = ["spiffe://prod.example/ns/**/web"]
  to   = ["service:api"]
}`), "policy.hcl")
	fmt.Println(err)
	// Output:
	// policy.hcl:2: rule "web": from[0]: "spiffe://prod.example/ns/**/web": in "/ns/**/web", ** is only allowed as the last segment
}
