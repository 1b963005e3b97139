package cli

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	josejwt "github.com/go-jose/go-jose/v4/jwt"
	"github.com/spf13/cobra"
	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// fakeAuthority answers ShowAuthorities.
type fakeAuthority struct {
	sigilv1.UnimplementedAuthorityAdminServer
}

func (fakeAuthority) ShowAuthorities(context.Context, *sigilv1.ShowAuthoritiesRequest) (*sigilv1.ShowAuthoritiesResponse, error) {
	return &sigilv1.ShowAuthoritiesResponse{
		ServerId:         "spiffe://example.org/sigil/server/s1",
		PropagationDelay: 60,
		Slots:            []*sigilv1.AuthoritySlot{{Kind: "x509", Seq: 1, Id: "a1", State: "active", NotAfter: 1700003600}},
		Bundle:           []*sigilv1.BundleAuthority{{Kind: "x509", Id: "a1", ServerId: "s1", NotAfter: 1700003600}},
	}, nil
}

// fakeCluster answers Members.
type fakeCluster struct {
	sigilv1.UnimplementedClusterAdminServer
}

func (fakeCluster) Members(context.Context, *sigilv1.MembersRequest) (*sigilv1.MembersResponse, error) {
	return &sigilv1.MembersResponse{LeaderId: "s1", Term: 3, Members: []*sigilv1.Member{
		{NodeName: "s1", Address: "127.0.0.1:8082", Suffrage: "voter", Leader: true, Healthy: true, AppliedIndex: 42},
		{NodeName: "s2", Address: "127.0.0.1:8083", Suffrage: "voter", AppliedIndex: 40},
	}}, nil
}

// fakeAgentAdmin answers Explain.
type fakeAgentAdmin struct {
	sigilv1.UnimplementedAgentAdminServer
}

func (fakeAgentAdmin) Explain(_ context.Context, req *sigilv1.ExplainRequest) (*sigilv1.ExplainResponse, error) {
	return &sigilv1.ExplainResponse{Pid: req.Pid, Uid: 1000, Attested: true, Synced: true, EntriesHeld: 1,
		Matched: []*sigilv1.ExplainedEntry{{EntryId: "e1", SpiffeId: "spiffe://example.org/web"}}}, nil
}

// fakeJWTWorkloadAPI adds JWT-SVIDs to fakeWorkloadAPI: it mints one
// token for each call and accepts only its own tokens.
type fakeJWTWorkloadAPI struct {
	*fakeWorkloadAPI
	key *ecdsa.PrivateKey
}

func (f *fakeJWTWorkloadAPI) token(t testing.TB, sub string, aud []string) string {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: f.key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "k1"))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := josejwt.Signed(signer).Claims(josejwt.Claims{Subject: sub, Audience: aud, Expiry: josejwt.NewNumericDate(time.Unix(1900000000, 0))}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (f *fakeJWTWorkloadAPI) FetchJWTSVID(_ context.Context, req *workloadpb.JWTSVIDRequest) (*workloadpb.JWTSVIDResponse, error) {
	signer, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: f.key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "k1"))
	tok, err := josejwt.Signed(signer).Claims(josejwt.Claims{Subject: "spiffe://example.org/web", Audience: req.Audience, Expiry: josejwt.NewNumericDate(time.Unix(1900000000, 0))}).Serialize()
	if err != nil {
		return nil, err
	}
	return &workloadpb.JWTSVIDResponse{Svids: []*workloadpb.JWTSVID{{SpiffeId: "spiffe://example.org/web", Svid: tok, Hint: "web"}}}, nil
}

func (f *fakeJWTWorkloadAPI) ValidateJWTSVID(_ context.Context, req *workloadpb.ValidateJWTSVIDRequest) (*workloadpb.ValidateJWTSVIDResponse, error) {
	tok, err := josejwt.ParseSigned(req.Svid, []jose.SignatureAlgorithm{jose.ES256})
	var claims josejwt.Claims
	if err != nil || tok.Claims(&f.key.PublicKey, &claims) != nil || !claims.Audience.Contains(req.Audience) {
		return nil, status.Error(codes.InvalidArgument, "token is not valid")
	}
	return &workloadpb.ValidateJWTSVIDResponse{SpiffeId: claims.Subject}, nil
}

// fullRoot is every client command, as main wires them.
func fullRoot() *cobra.Command {
	root := testRoot()
	root.AddCommand(NewWorkloadCommand(), NewJWTCommand(), NewAuthorityCommand(), NewClusterCommand(),
		NewPolicyCommand(), NewAlertCommand(), NewCompletionCommand())
	return root
}

func runFull(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Execute(fullRoot(), args, &out, &errb)
	return code, out.String(), errb.String()
}

// startFakeEverything serves every admin service of a server on one
// socket, as a server's admin socket does.
func startFakeEverything(t *testing.T, a *fakeAdmin, f *fakeFederation, al *fakeAlertAdmin) string {
	t.Helper()
	path := filepath.Join(shortTempDir(t), "admin.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	sigilv1.RegisterAdminServer(s, a)
	sigilv1.RegisterFederationAdminServer(s, f)
	sigilv1.RegisterAlertAdminServer(s, al)
	sigilv1.RegisterAuthorityAdminServer(s, fakeAuthority{})
	sigilv1.RegisterClusterAdminServer(s, fakeCluster{})
	go s.Serve(ln) //nolint:errcheck
	t.Cleanup(s.Stop)
	return path
}

// jsonPath digs into decoded JSON: "entries.0.spiffe_id".
func jsonPath(v any, path string) any {
	for _, p := range strings.Split(path, ".") {
		switch x := v.(type) {
		case map[string]any:
			v = x[p]
		case []any:
			i, err := strconv.Atoi(p)
			if err != nil || i >= len(x) {
				return nil
			}
			v = x[i]
		default:
			return nil
		}
	}
	return v
}

// TestReadCommandsJSON runs every read command with -output json against
// fakes and checks fields of the parsed output, so that the documented
// schema (docs/cli.md) is what the commands print.
func TestReadCommandsJSON(t *testing.T) {
	a := newFakeAdmin()
	a.entries["e1"] = &sigilv1.Entry{Id: "e1", SpiffeId: "spiffe://example.org/web", ParentId: agentID,
		Selectors: []*sigilv1.Selector{{Type: "unix", Value: "uid:1000"}}, CreatedAt: 1700000000}
	a.entries["e2"] = &sigilv1.Entry{Id: "e2", SpiffeId: "spiffe://example.org/db", ParentId: agentID,
		Selectors: []*sigilv1.Selector{{Type: "unix", Value: "uid:1001"}}, Downstream: true}
	a.agents = []*sigilv1.AttestedNode{{SpiffeId: agentID, AttestationType: "join_token", Selectors: []*sigilv1.Selector{{Type: "join_token", Value: "abc"}}}}
	ca := newTestCA(t, "example.org")
	a.bundle = &sigilv1.Bundle{TrustDomain: "example.org", SequenceNumber: 7, X509Authorities: []*sigilv1.X509Authority{{Certificate: ca.cert.Raw}}}
	f := newFakeFederation()
	f.rels["gcp.example"] = &sigilv1.FederationRelationship{TrustDomain: "gcp.example", BundleEndpointUrl: "https://gcp.example:8443", Profile: "https_web"}
	f.bundles = []*sigilv1.BundleStatus{{TrustDomain: "gcp.example", Present: true, SequenceNumber: 3, X509Authorities: 2}}
	al := &fakeAlertAdmin{alerts: []*sigilv1.ActiveAlert{{Name: "SigilSVIDNotRenewed", Key: "svid_not_renewed/a1", Severity: "warning"}}}
	sock := startFakeEverything(t, a, f, al)

	cert, key := ca.issue(t, "spiffe://example.org/web")
	jwtKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	wl := &fakeJWTWorkloadAPI{fakeWorkloadAPI: &fakeWorkloadAPI{resp: &workloadpb.X509SVIDResponse{Svids: []*workloadpb.X509SVID{{
		SpiffeId: "spiffe://example.org/web", X509Svid: cert, X509SvidKey: key, Bundle: ca.cert.Raw, Hint: "web",
	}}}}, key: jwtKey}
	wlPath := filepath.Join(shortTempDir(t), "api.sock")
	ln, err := net.Listen("unix", wlPath)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	workloadpb.RegisterSpiffeWorkloadAPIServer(gs, wl)
	go gs.Serve(ln) //nolint:errcheck
	t.Cleanup(gs.Stop)

	agentAdmin := filepath.Join(shortTempDir(t), "agent-admin.sock")
	aln, err := net.Listen("unix", agentAdmin)
	if err != nil {
		t.Fatal(err)
	}
	ags := grpc.NewServer()
	sigilv1.RegisterAgentAdminServer(ags, fakeAgentAdmin{})
	go ags.Serve(aln) //nolint:errcheck
	t.Cleanup(ags.Stop)

	health := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "ready") }))
	t.Cleanup(health.Close)
	policyFile := writeTemp(t, "policy.hcl", cliPolicy)
	goodJWT := wl.token(t, "spiffe://example.org/web", []string{"spiffe://example.org/db"})

	tests := []struct {
		args []string
		code int
		want map[string]any // JSON path → value (fmt %v of the decoded value)
	}{
		{[]string{"entry", "show", "-socket", sock, "-id", "e1"}, 0, map[string]any{
			"id": "e1", "spiffe_id": "spiffe://example.org/web", "parent_id": agentID, "selectors.0.type": "unix",
			"selectors.0.value": "uid:1000", "created_at": "1700000000", "downstream": false, "dns_names": "[]", "x509_svid_ttl": "0"}},
		{[]string{"entry", "list", "-socket", sock}, 0, map[string]any{"entries.0.id": "e1", "entries.1.id": "e2", "entries.1.downstream": true}},
		{[]string{"agent", "list", "-socket", sock}, 0, map[string]any{"agents.0.spiffe_id": agentID, "agents.0.banned": false, "agents.0.attestation_type": "join_token"}},
		{[]string{"agent", "show", "-socket", sock, "-spiffe-id", agentID}, 0, map[string]any{"spiffe_id": agentID, "selectors.0.value": "abc"}},
		{[]string{"token", "generate", "-socket", sock}, 0, map[string]any{"token": "secret-token", "agent_id": agentID, "expires_at": "1700000600"}},
		{[]string{"bundle", "show", "-socket", sock}, 0, map[string]any{"trust_domain": "example.org", "sequence_number": "7"}},
		{[]string{"bundle", "list", "-socket", sock}, 0, map[string]any{"bundles.0.trust_domain": "gcp.example", "bundles.0.x509_authorities": 2.0}},
		{[]string{"federation", "list", "-socket", sock}, 0, map[string]any{"relationships.0.trust_domain": "gcp.example", "relationships.0.profile": "https_web"}},
		{[]string{"federation", "show", "-socket", sock, "-trust-domain", "gcp.example"}, 0, map[string]any{
			"trust_domain": "gcp.example", "bundle_endpoint_url": "https://gcp.example:8443", "bundle.sequence_number": "3", "bundle.present": true}},
		{[]string{"authority", "show", "-socket", sock}, 0, map[string]any{"server_id": "spiffe://example.org/sigil/server/s1", "slots.0.state": "active", "bundle.0.tainted": false, "propagation_delay": "60"}},
		{[]string{"cluster", "members", "-socket", sock}, 0, map[string]any{"leader_id": "s1", "members.0.leader": true, "members.1.healthy": false, "members.1.applied_index": "40"}},
		{[]string{"alert", "list", "-socket", sock}, 0, map[string]any{"alerts.0.name": "SigilSVIDNotRenewed", "alerts.0.severity": "warning"}},
		{[]string{"svid", "fetch", "-socket", wlPath}, 0, map[string]any{
			"svids.0.spiffe_id": "spiffe://example.org/web", "svids.0.hint": "web", "svids.0.serial": "abcdef", "svids.0.chain.0.issuer": "CN=Test CA",
			"bundles.0.trust_domain": "example.org", "bundles.0.x509_authorities": 1.0, "written": nil}},
		{[]string{"svid", "fetch", "-socket", wlPath, "-jwt", "-audience", "spiffe://example.org/db"}, 0, map[string]any{
			"svids.0.spiffe_id": "spiffe://example.org/web", "svids.0.audience.0": "spiffe://example.org/db", "svids.0.expires_at": "2030-03-17T17:46:40Z"}},
		{[]string{"jwt", "validate", "-socket", wlPath, "-audience", "spiffe://example.org/db", "-token", goodJWT}, 0, map[string]any{
			"valid": true, "svid.spiffe_id": "spiffe://example.org/web", "svid.audience.0": "spiffe://example.org/db"}},
		{[]string{"jwt", "validate", "-socket", wlPath, "-audience", "spiffe://example.org/other", "-token", goodJWT}, 1, map[string]any{
			"valid": false, "svid": nil}},
		{[]string{"workload", "explain", "-admin-socket", agentAdmin, "-pid", "42"}, 0, map[string]any{"pid": 42.0, "attested": true, "matched.0.entry_id": "e1"}},
		{[]string{"healthcheck", "-url", health.URL}, 0, map[string]any{"ready": true, "status_code": 200.0, "message": "ready"}},
		{[]string{"healthcheck", "-url", "http://127.0.0.1:1/ready"}, 1, map[string]any{"ready": false, "status_code": 0.0}},
		{[]string{"policy", "test", "-policy", policyFile, "-from", "spiffe://example.org/ns/prod/sa/web", "-to", "http:GET /v1/users/42", "-service", "users"}, 0, map[string]any{
			"decision": "allowed", "allowed": true, "rule": "web-reads-users"}},
		{[]string{"policy", "lint", policyFile}, 0, map[string]any{"files.0.rules": 3.0, "files.0.mode": "enforce", "errors": 0.0}},
	}
	for _, tt := range tests {
		code, out, errOut := runFull(t, append(tt.args, "-output", "json")...)
		if code != tt.code {
			t.Errorf("%q: code %d, want %d; stderr %q", tt.args, code, tt.code, errOut)
			continue
		}
		var v any
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Errorf("%q: output is not JSON: %v\n%s", tt.args, err, out)
			continue
		}
		for path, want := range tt.want {
			got := jsonPath(v, path)
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("%q: %s = %#v, want %#v\n%s", tt.args, path, got, want, out)
			}
		}
	}
}

// An API message's JSON holds every field, zero values included, and the
// extra fields of printJSONWith come after the message's own.
func TestPrintJSONLayout(t *testing.T) {
	var a, b bytes.Buffer
	e := &sigilv1.Entry{Id: "e1", SpiffeId: "spiffe://example.org/x"}
	if err := printJSON(&a, e); err != nil {
		t.Fatal(err)
	}
	if err := printJSONWith(&b, e, protoField{name: "extra", value: (*sigilv1.Entry)(nil)}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(a.String(), `"hint": ""`) || !strings.Contains(a.String(), `"revision": "0"`) || !strings.HasSuffix(a.String(), "}\n") {
		t.Errorf("printJSON left out zero fields:\n%s", a.String())
	}
	want := strings.TrimSuffix(a.String(), "\n}\n") + ",\n  \"extra\": null\n}\n"
	if b.String() != want {
		t.Errorf("printJSONWith =\n%s\nwant\n%s", b.String(), want)
	}
	var back sigilv1.Entry
	if err := protojson.Unmarshal(a.Bytes(), &back); err != nil || back.Id != "e1" {
		t.Errorf("printJSON output does not parse back: %v", err)
	}
}

// TestTokenGenerateNodeAlias: -spiffe-id registers the node alias of the
// token's agent (parent the servers ID, selector join_token:<agent id>),
// prints it, and prints no token when the alias is refused.
func TestTokenGenerateNodeAlias(t *testing.T) {
	a := newFakeAdmin()
	// The fake's agent ID has the shape a real join token agent's has.
	const seg = "0123456789abcdef0123456789abcdef"
	ta := &tokenAdmin{fakeAdmin: a, agentID: "spiffe://example.org/sigil/agent/join_token/" + seg}
	sock := startFakeAdmin(t, ta)

	code, out, errOut := run(t, "token", "generate", "-socket", sock, "-spiffe-id", "spiffe://example.org/nodes/db-1")
	if code != 0 {
		t.Fatalf("token generate -spiffe-id: %d %q", code, errOut)
	}
	if len(a.entries) != 1 {
		t.Fatalf("entries = %d, want the alias", len(a.entries))
	}
	var alias *sigilv1.Entry
	for _, e := range a.entries {
		alias = e
	}
	if alias.SpiffeId != "spiffe://example.org/nodes/db-1" || alias.ParentId != "spiffe://example.org/sigil/server" ||
		len(alias.Selectors) != 1 || alias.Selectors[0].Type != "join_token" || alias.Selectors[0].Value != seg {
		t.Errorf("alias entry = %v", alias)
	}
	if !strings.Contains(out, "Token           : secret-token") || !strings.Contains(out, "Node alias      : spiffe://example.org/nodes/db-1 (entry "+alias.Id+")") {
		t.Errorf("output:\n%s", out)
	}

	code, out, _ = run(t, "token", "generate", "-socket", sock, "-spiffe-id", "spiffe://example.org/nodes/db-2", "-output", "json")
	var j struct {
		Token     string `json:"token"`
		NodeAlias struct {
			SpiffeID  string `json:"spiffe_id"`
			ParentID  string `json:"parent_id"`
			Selectors []struct {
				Type, Value string
			} `json:"selectors"`
		} `json:"node_alias"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &j) != nil || j.Token != "secret-token" || j.NodeAlias.SpiffeID != "spiffe://example.org/nodes/db-2" ||
		j.NodeAlias.ParentID != "spiffe://example.org/sigil/server" || len(j.NodeAlias.Selectors) != 1 || j.NodeAlias.Selectors[0].Value != seg {
		t.Errorf("json: %d %s", code, out)
	}

	// Refused by the server (another trust domain is checked first, by
	// the command): no token printed.
	for _, tc := range []struct {
		id   string
		code int
		want string
	}{
		{"spiffe://other.org/nodes/x", ExitUsage, "-spiffe-id spiffe://other.org/nodes/x is not in the server's trust domain example.org"},
		{"spiffe://example.org/sigil/agent/x", ExitUsage, "is reserved"},
		{"not-an-id", ExitUsage, `invalid -spiffe-id "not-an-id"`},
	} {
		code, out, errOut := run(t, "token", "generate", "-socket", sock, "-spiffe-id", tc.id)
		if code != tc.code || out != "" || !strings.Contains(errOut, tc.want) || strings.Contains(errOut, "secret-token") {
			t.Errorf("-spiffe-id %s: %d %q %q", tc.id, code, out, errOut)
		}
	}
	ta.refuse.Store(true)
	code, out, errOut = run(t, "token", "generate", "-socket", sock, "-spiffe-id", "spiffe://example.org/nodes/db-3")
	if code != ExitFailure || out != "" || !strings.Contains(errOut, "register node alias spiffe://example.org/nodes/db-3: AlreadyExists") ||
		!strings.Contains(errOut, "the token was not printed and expires unused") {
		t.Errorf("refused alias: %d %q %q", code, out, errOut)
	}
}

// tokenAdmin is fakeAdmin with a join-token-shaped agent ID and an
// optional refusal of every entry.
type tokenAdmin struct {
	*fakeAdmin
	agentID string
	refuse  atomic.Bool
}

func (f *tokenAdmin) CreateJoinToken(ctx context.Context, req *sigilv1.CreateJoinTokenRequest) (*sigilv1.CreateJoinTokenResponse, error) {
	resp, err := f.fakeAdmin.CreateJoinToken(ctx, req)
	if err == nil {
		resp.AgentId = f.agentID
	}
	return resp, err
}

func (f *tokenAdmin) BatchCreateEntry(ctx context.Context, req *sigilv1.BatchCreateEntryRequest) (*sigilv1.BatchCreateEntryResponse, error) {
	if f.refuse.Load() {
		resp := &sigilv1.BatchCreateEntryResponse{}
		for range req.Entries {
			resp.Results = append(resp.Results, &sigilv1.EntryResult{Status: &sigilv1.Status{Code: int32(codes.AlreadyExists), Message: "similar entry exists"}})
		}
		return resp, nil
	}
	return f.fakeAdmin.BatchCreateEntry(ctx, req)
}
