package k8spsat_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/attestor/node/k8spsat"
	"github.com/sigil-id/sigil/attestor/node/k8spsat/k8spsattest"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/registration"
)

const (
	aud     = "sigil-server"
	ns      = "sigil"
	sa      = "sigil-agent"
	podName = "sigil-agent-7x2kq"
	podUID  = "0b4e5d2c-1111-4a5b-9c0d-2e3f4a5b6c7d"
	node1   = "node-1"
	nodeUID = "6f1d2c3b-2222-4e5f-8a9b-0c1d2e3f4a5b"
)

// state is a node.State at a fixed time; these verifiers use no records.
type state struct{ now time.Time }

func (s state) Now() time.Time { return s.now }
func (state) CredentialExpiry(context.Context, node.Credential) (time.Time, error) {
	return time.Time{}, errors.New("unexpected CredentialExpiry")
}
func (state) Used(context.Context, node.Credential) (bool, error) {
	return false, errors.New("unexpected Used")
}
func (state) Agent(context.Context, string) (node.AgentRecord, error) {
	return node.AgentRecord{}, errors.New("unexpected Agent")
}

type exchange struct{ payload []byte }

func (e exchange) Payload() []byte { return e.payload }
func (exchange) Challenge(context.Context, []byte) ([]byte, error) {
	return nil, errors.New("unexpected challenge")
}

// fixture is a fake cluster with the agent's pod and node, and a verifier
// configured for it.
type fixture struct {
	p   *k8spsattest.Platform
	clk *clock.Fake
	now time.Time
}

func newFixture(t testing.TB) *fixture {
	p := k8spsattest.New(t)
	p.SetPod(ns, podName, k8spsattest.Pod{UID: podUID, NodeName: node1})
	p.SetNode(node1, k8spsattest.Node{UID: nodeUID, Labels: map[string]string{"topology.kubernetes.io/zone": "eu-1a", "secret-ish": "x"}})
	now := time.Now().Truncate(time.Second)
	return &fixture{p: p, clk: clock.NewFake(now), now: now}
}

func (f *fixture) oidcCluster(name string) k8spsat.ClusterConfig {
	return k8spsat.ClusterConfig{Name: name, Audience: aud, ServiceAccountAllowList: []string{ns + ":" + sa},
		Issuer: f.p.Issuer, CAPath: f.p.CAPath}
}

func (f *fixture) reviewCluster(name string) k8spsat.ClusterConfig {
	return k8spsat.ClusterConfig{Name: name, Audience: aud, ServiceAccountAllowList: []string{ns + ":" + sa},
		KubeAPI: &k8spsat.KubeAPIConfig{URL: f.p.URL, CAPath: f.p.CAPath, TokenPath: f.p.ReviewerTokenPath}}
}

func (f *fixture) verifier(t testing.TB, clusters ...k8spsat.ClusterConfig) node.Verifier {
	t.Helper()
	cfg := k8spsat.DefaultConfig()
	cfg.Clock = f.clk
	cfg.Clusters = clusters
	v, err := k8spsat.NewVerifier(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func (f *fixture) claims() k8spsattest.Claims {
	return f.p.Claims(f.now, aud, ns, sa, podName, node1)
}

func payload(cluster, token string) []byte {
	b, _ := json.Marshal(k8spsat.Payload{Cluster: cluster, Token: token})
	return b
}

func (f *fixture) verify(v node.Verifier, cluster, token string) (*node.Result, error) {
	return v.Verify(context.Background(), state{now: f.now}, exchange{payload(cluster, token)})
}

func selectorSet(r *node.Result) map[string]bool {
	m := map[string]bool{}
	for _, s := range r.Selectors {
		m[registration.FormatSelector(s)] = true
	}
	return m
}

func wantRefused(t *testing.T, err error, reason string) {
	t.Helper()
	var r *node.RefusedError
	if !errors.As(err, &r) {
		t.Fatalf("got %v, want a refusal (%s)", err, reason)
	}
	if r.Public != k8spsat.RefusedMessage {
		t.Fatalf("public text %q", r.Public)
	}
	if !strings.Contains(r.Reason, reason) {
		t.Fatalf("reason %q does not say %q", r.Reason, reason)
	}
}

func checkAccepted(t *testing.T, res *node.Result, err error, wantID string, extra ...string) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	if res.ID != wantID {
		t.Fatalf("ID %q, want %q", res.ID, wantID)
	}
	if len(res.Consume) != 0 {
		t.Fatalf("consumes %v: a PSAT is not single-use", res.Consume)
	}
	got := selectorSet(res)
	want := append([]string{"k8s_psat:cluster:prod", "k8s_psat:agent_ns:sigil", "k8s_psat:agent_sa:sigil-agent",
		"k8s_psat:agent_pod_name:" + podName, "k8s_psat:agent_pod_uid:" + podUID, "k8s_psat:agent_node_name:node-1"}, extra...)
	if len(got) != len(want) {
		t.Fatalf("selectors %v, want %v", got, want)
	}
	for _, w := range want {
		if !got[w] {
			t.Fatalf("selectors %v lack %q", got, w)
		}
	}
	for _, s := range res.Selectors {
		if err := registration.ValidateSelectorInput(s); err != nil {
			t.Fatalf("selector %v: %v", s, err)
		}
	}
	if id, err := registration.AgentID(spiffeid.RequireTrustDomainFromString("example.org"), k8spsat.Name, res.ID); err != nil ||
		id.Path() != "/sigil/agent/k8s_psat/"+wantID {
		t.Fatalf("agent ID %v, %v", id, err)
	}
}

func TestOIDCAccepts(t *testing.T) {
	f := newFixture(t)
	v := f.verifier(t, f.oidcCluster("prod"))
	res, err := f.verify(v, "prod", f.p.Token(t, f.claims()))
	checkAccepted(t, res, err, "prod/"+nodeUID)
	if f.p.Count("discovery") != 1 || f.p.Count("jwks") != 1 {
		t.Fatalf("discovery %d, jwks %d fetches", f.p.Count("discovery"), f.p.Count("jwks"))
	}
	// Again: the keys are cached, the agent may re-attest.
	res, err = f.verify(v, "prod", f.p.Token(t, f.claims()))
	checkAccepted(t, res, err, "prod/"+nodeUID)
	if f.p.Count("discovery") != 1 || f.p.Count("jwks") != 1 {
		t.Fatalf("cached keys fetched again: discovery %d, jwks %d", f.p.Count("discovery"), f.p.Count("jwks"))
	}
	// After KeysMaxAge, they are fetched again.
	f.clk.Add(time.Hour)
	if _, err := f.verify(v, "prod", f.p.Token(t, f.claims())); err != nil || f.p.Count("jwks") != 2 {
		t.Fatalf("after max age: %v, jwks %d", err, f.p.Count("jwks"))
	}
}

func TestOIDCJWKSURLWithoutDiscovery(t *testing.T) {
	f := newFixture(t)
	c := f.oidcCluster("prod")
	c.Issuer = "https://kubernetes.default.svc.cluster.local"
	c.JWKSURL = f.p.URL + "/openid/v1/jwks"
	v := f.verifier(t, c)
	cl := f.claims()
	cl.Issuer = c.Issuer
	res, err := f.verify(v, "prod", f.p.Token(t, cl))
	checkAccepted(t, res, err, "prod/"+nodeUID)
	if f.p.Count("discovery") != 0 {
		t.Fatal("discovery fetched although jwks_url is set")
	}
}

func TestOIDCDiscoveryForAnotherIssuer(t *testing.T) {
	f := newFixture(t)
	c := f.oidcCluster("prod")
	c.Issuer = "https://kubernetes.default.svc.cluster.local"
	c.DiscoveryURL = f.p.URL + "/.well-known/openid-configuration" // says issuer f.p.Issuer
	v := f.verifier(t, c)
	cl := f.claims()
	cl.Issuer = c.Issuer
	_, err := f.verify(v, "prod", f.p.Token(t, cl))
	var r *node.RefusedError
	if err == nil || errors.As(err, &r) || !strings.Contains(err.Error(), "is for issuer") {
		t.Fatalf("discovery of another issuer: %v", err)
	}
}

func TestTokenReviewAccepts(t *testing.T) {
	f := newFixture(t)
	c := f.reviewCluster("prod")
	c.NodeLabelAllowList = []string{"topology.kubernetes.io/zone", "absent"}
	v := f.verifier(t, c)
	res, err := f.verify(v, "prod", f.p.Token(t, f.claims()))
	checkAccepted(t, res, err, "prod/"+nodeUID, "k8s_psat:agent_node_label:topology.kubernetes.io/zone:eu-1a")
	if f.p.Count("tokenreview") != 1 || f.p.Count("node") != 1 || f.p.Count("jwks") != 0 {
		t.Fatalf("calls: tokenreview %d, node %d, jwks %d", f.p.Count("tokenreview"), f.p.Count("node"), f.p.Count("jwks"))
	}
	// The node is cached for NodeCacheTTL; every attestation is reviewed.
	if _, err := f.verify(v, "prod", f.p.Token(t, f.claims())); err != nil || f.p.Count("tokenreview") != 2 || f.p.Count("node") != 1 {
		t.Fatalf("second: %v, tokenreview %d, node %d", err, f.p.Count("tokenreview"), f.p.Count("node"))
	}
	f.clk.Add(time.Minute)
	if _, err := f.verify(v, "prod", f.p.Token(t, f.claims())); err != nil || f.p.Count("node") != 2 {
		t.Fatalf("after the node TTL: %v, node %d", err, f.p.Count("node"))
	}
}

func TestOIDCWithNodeLabels(t *testing.T) {
	f := newFixture(t)
	c := f.oidcCluster("prod")
	c.Validation = k8spsat.ValidationOIDC
	c.KubeAPI = &k8spsat.KubeAPIConfig{URL: f.p.URL, CAPath: f.p.CAPath, TokenPath: f.p.ReviewerTokenPath}
	c.NodeLabelAllowList = []string{"topology.kubernetes.io/zone"}
	v := f.verifier(t, c)
	res, err := f.verify(v, "prod", f.p.Token(t, f.claims()))
	checkAccepted(t, res, err, "prod/"+nodeUID, "k8s_psat:agent_node_label:topology.kubernetes.io/zone:eu-1a")
	if f.p.Count("tokenreview") != 0 {
		t.Fatal("an OIDC cluster used TokenReview")
	}
	// A node of the same name but another UID (replaced) is refused.
	tok := f.p.Token(t, f.claims())
	f.p.SetNode(node1, k8spsattest.Node{UID: "other-uid"})
	f.clk.Add(time.Minute)
	_, err = f.verify(v, "prod", tok)
	wantRefused(t, err, "the node was replaced")
}

// A token without the node claim (Kubernetes before 1.30): the node comes
// from the pod when the server has API access, else the token is refused.
func TestTokenWithoutNode(t *testing.T) {
	f := newFixture(t)
	cl := f.claims()
	cl.NodeName, cl.NodeUID = "", ""
	tok := f.p.Token(t, cl)

	_, err := f.verify(f.verifier(t, f.oidcCluster("prod")), "prod", tok)
	wantRefused(t, err, "names no node")

	c := f.oidcCluster("prod")
	c.Validation = k8spsat.ValidationOIDC
	c.KubeAPI = &k8spsat.KubeAPIConfig{URL: f.p.URL, CAPath: f.p.CAPath, TokenPath: f.p.ReviewerTokenPath}
	v := f.verifier(t, c)
	res, err := f.verify(v, "prod", tok)
	checkAccepted(t, res, err, "prod/"+node1)
	// A pod of the same name with another UID is another pod.
	f.p.SetPod(ns, podName, k8spsattest.Pod{UID: "new-uid", NodeName: node1})
	_, err = f.verify(v, "prod", tok)
	wantRefused(t, err, "not the pod the token is bound to")
	f.p.DeletePod(ns, podName)
	_, err = f.verify(v, "prod", tok)
	wantRefused(t, err, "no longer exists")
}

func TestRefusals(t *testing.T) {
	f := newFixture(t)
	other := k8spsattest.New(t) // another cluster, with its own key and issuer
	other.SetPod(ns, podName, k8spsattest.Pod{UID: podUID, NodeName: node1})
	oidcV := f.verifier(t, f.oidcCluster("prod"), k8spsat.ClusterConfig{Name: "staging", Audience: aud,
		ServiceAccountAllowList: []string{ns + ":" + sa}, Issuer: other.Issuer, CAPath: other.CAPath})
	reviewV := f.verifier(t, f.reviewCluster("prod"))

	hs256 := func() string {
		return k8spsattest.Sign(t, jose.SigningKey{Algorithm: jose.HS256, Key: f.p.PublicKeyPEM()}, k8spsattest.KeyID, f.claims().JSON())
	}
	none := func() string {
		h := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`))
		b, _ := json.Marshal(f.claims().JSON())
		return h + "." + base64.RawURLEncoding.EncodeToString(b) + "."
	}
	mod := func(m func(*k8spsattest.Claims)) string {
		c := f.claims()
		m(&c)
		return f.p.Token(t, c)
	}
	cases := []struct {
		name, cluster, token, reason string
		review                       bool // also through TokenReview
	}{
		{"wrong audience", "prod", mod(func(c *k8spsattest.Claims) { c.Audience = []string{"vault"} }), "audience", true},
		{"wrong issuer", "prod", mod(func(c *k8spsattest.Claims) { c.Issuer = "https://evil.example" }), "different provider", true},
		{"expired", "prod", mod(func(c *k8spsattest.Claims) {
			c.IssuedAt = f.now.Add(-2 * time.Hour)
			c.Expiry = f.now.Add(-time.Minute)
		}), "expired", true},
		{"not yet valid", "prod", mod(func(c *k8spsattest.Claims) { c.IssuedAt = f.now.Add(10 * time.Minute) }), "before the nbf", true},
		{"sa not allowed", "prod", mod(func(c *k8spsattest.Claims) { c.SA = "default" }), "not in the allow list", true},
		{"namespace not allowed", "prod", mod(func(c *k8spsattest.Claims) { c.Namespace = "kube-system" }), "not in the allow list", false},
		{"unknown cluster", "dev", f.p.Token(t, f.claims()), "unknown cluster", true},
		{"alg none", "prod", none(), "accepted asymmetric algorithm", true},
		{"HS256 with the public key", "prod", hs256(), "accepted asymmetric algorithm", true},
		{"unknown kid", "prod", k8spsattest.Sign(t, jose.SigningKey{Algorithm: jose.RS256, Key: other.Key}, "rotated-away", f.claims().JSON()), "unknown key id", false},
		{"known kid, other key", "prod", k8spsattest.Sign(t, jose.SigningKey{Algorithm: jose.RS256, Key: other.Key}, k8spsattest.KeyID, f.claims().JSON()), "does not verify", true},
		{"token of another cluster", "prod", other.Token(t, other.Claims(f.now, aud, ns, sa, podName, node1)), "", true},
		{"token of this cluster as another", "staging", f.p.Token(t, f.claims()), "", false},
		{"not a pod token", "prod", mod(func(c *k8spsattest.Claims) { c.PodName = "" }), "not bound to a pod", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := f.verify(oidcV, c.cluster, c.token)
			wantRefused(t, err, c.reason)
			if strings.Contains(err.Error(), c.token) {
				t.Fatal("the error echoes the token")
			}
			if c.review {
				_, err := f.verify(reviewV, c.cluster, c.token)
				var r *node.RefusedError
				if !errors.As(err, &r) {
					t.Fatalf("token review: %v, want a refusal", err)
				}
				if strings.Contains(err.Error(), c.token) {
					t.Fatal("the error echoes the token")
				}
			}
		})
	}
}

// TestUnknownKidRefetchBounded: made-up key ids cost one JWKS fetch per
// KeysMinRefresh, not one per attestation.
func TestUnknownKidRefetchBounded(t *testing.T) {
	f := newFixture(t)
	other := k8spsattest.New(t)
	v := f.verifier(t, f.oidcCluster("prod"))
	if _, err := f.verify(v, "prod", f.p.Token(t, f.claims())); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		tok := k8spsattest.Sign(t, jose.SigningKey{Algorithm: jose.RS256, Key: other.Key}, "kid-"+string(rune('a'+i)), f.claims().JSON())
		_, err := f.verify(v, "prod", tok)
		wantRefused(t, err, "unknown key id")
	}
	if n := f.p.Count("jwks"); n != 1 {
		t.Fatalf("%d JWKS fetches for 20 unknown kids within the refresh interval, want 1", n)
	}
	f.clk.Add(30 * time.Second)
	tok := k8spsattest.Sign(t, jose.SigningKey{Algorithm: jose.RS256, Key: other.Key}, "kid-late", f.claims().JSON())
	_, err := f.verify(v, "prod", tok)
	wantRefused(t, err, "unknown key id")
	if n := f.p.Count("jwks"); n != 2 {
		t.Fatalf("%d JWKS fetches after the refresh interval, want 2", n)
	}
}

// TestDeletedPod: TokenReview refuses the token of a deleted pod (OIDC
// validation alone cannot know; see the docs).
func TestDeletedPod(t *testing.T) {
	f := newFixture(t)
	v := f.verifier(t, f.reviewCluster("prod"))
	tok := f.p.Token(t, f.claims())
	if _, err := f.verify(v, "prod", tok); err != nil {
		t.Fatal(err)
	}
	f.p.DeletePod(ns, podName)
	_, err := f.verify(v, "prod", tok)
	wantRefused(t, err, "did not authenticate")
}

// TestUnreachablePlatform: a platform that is down, refuses connections or
// never answers fails closed, within the configured time, with an error
// that is not a refusal of the agent.
func TestUnreachablePlatform(t *testing.T) {
	f := newFixture(t)
	f.p.SetUnavailable(true)
	for _, v := range []node.Verifier{f.verifier(t, f.oidcCluster("prod")), f.verifier(t, f.reviewCluster("prod"))} {
		_, err := f.verify(v, "prod", f.p.Token(t, f.claims()))
		var r *node.RefusedError
		if err == nil || errors.As(err, &r) || !strings.Contains(err.Error(), "503") {
			t.Fatalf("unavailable platform: %v", err)
		}
	}
	f.p.SetUnavailable(false)

	// A port nobody listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "https://" + ln.Addr().String()
	ln.Close()
	c := f.oidcCluster("prod")
	c.Issuer = closed
	cl := f.claims()
	cl.Issuer = closed
	if _, err := f.verify(f.verifier(t, c), "prod", f.p.Token(t, cl)); err == nil || !strings.Contains(err.Error(), "discovery") {
		t.Fatalf("closed port: %v", err)
	}

	// A server that accepts and never answers: bounded by HTTPTimeout.
	hang, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hang.Close()
	go func() {
		for {
			conn, err := hang.Accept()
			if err != nil {
				return
			}
			defer conn.Close()
		}
	}()
	c = f.reviewCluster("prod")
	c.KubeAPI.URL = "https://" + hang.Addr().String()
	cfg := k8spsat.DefaultConfig()
	cfg.HTTPTimeout = 200 * time.Millisecond
	cfg.Clusters = []k8spsat.ClusterConfig{c}
	v, err := k8spsat.NewVerifier(cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := f.verify(v, "prod", f.p.Token(t, f.claims())); done <- err }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "token review") {
			t.Fatalf("hanging API server: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Verify did not return although the API server never answers")
	}
}

func TestMalformedPayload(t *testing.T) {
	f := newFixture(t)
	v := f.verifier(t, f.oidcCluster("prod"))
	for _, p := range []string{"", "{", "null", `{"cluster":"prod"}`, `{"cluster":"","token":"a.b.c"}`, `{"cluster":"a/b","token":"a.b.c"}`,
		`{"cluster":"prod","token":"abc"}`, `{"cluster":"prod","token":"a.b.c","x":1}`, `{"cluster":"prod","token":"a.b.c"} {}`,
		`{"cluster":"prod","token":"` + strings.Repeat("a", k8spsat.MaxTokenBytes) + `.b.c"}`} {
		_, err := v.Verify(context.Background(), state{now: f.now}, exchange{[]byte(p)})
		var r *node.RefusedError
		if err == nil || errors.As(err, &r) {
			t.Errorf("payload %.40q: %v, want a malformed-evidence error", p, err)
		}
	}
	if f.p.Count("discovery")+f.p.Count("jwks") != 0 {
		t.Fatal("malformed payloads caused fetches")
	}
}

func TestConfigValidate(t *testing.T) {
	ok := k8spsat.ClusterConfig{Name: "prod", Audience: aud, ServiceAccountAllowList: []string{"a:b"}, Issuer: "https://issuer.example"}
	kube := &k8spsat.KubeAPIConfig{URL: "https://10.0.0.1:6443", TokenPath: "/t"}
	for _, c := range []struct {
		name string
		mod  func(*k8spsat.ClusterConfig)
		want string
	}{
		{"no audience", func(c *k8spsat.ClusterConfig) { c.Audience = "" }, "audience is required"},
		{"empty allow list", func(c *k8spsat.ClusterConfig) { c.ServiceAccountAllowList = nil }, "allow_list is empty"},
		{"bad sa", func(c *k8spsat.ClusterConfig) { c.ServiceAccountAllowList = []string{"nocolon"} }, "<namespace>:<name>"},
		{"neither", func(c *k8spsat.ClusterConfig) { c.Issuer = "" }, "set issuer"},
		{"both", func(c *k8spsat.ClusterConfig) { c.KubeAPI = kube }, "say validation"},
		{"http issuer", func(c *k8spsat.ClusterConfig) { c.Issuer = "http://issuer.example" }, "https"},
		{"labels without api", func(c *k8spsat.ClusterConfig) { c.NodeLabelAllowList = []string{"zone"} }, "needs kube_api"},
		{"bad name", func(c *k8spsat.ClusterConfig) { c.Name = "a b" }, "cluster name"},
		{"bad validation", func(c *k8spsat.ClusterConfig) { c.Validation = "magic" }, "want"},
		{"review with issuer", func(c *k8spsat.ClusterConfig) { c.Validation = k8spsat.ValidationTokenReview; c.KubeAPI = kube }, "are for validation"},
		{"api without token", func(c *k8spsat.ClusterConfig) {
			c.Issuer = ""
			c.KubeAPI = &k8spsat.KubeAPIConfig{URL: "https://x"}
		}, "token_path is required"},
	} {
		cc := ok
		c.mod(&cc)
		cfg := k8spsat.DefaultConfig()
		cfg.Clusters = []k8spsat.ClusterConfig{cc}
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	cfg := k8spsat.DefaultConfig()
	cfg.Clusters = []k8spsat.ClusterConfig{ok, ok}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("duplicate cluster: %v", err)
	}
	cfg.Clusters = []k8spsat.ClusterConfig{ok}
	if err := cfg.Validate(); err != nil || cfg.Clusters[0].Validation != k8spsat.ValidationOIDC {
		t.Errorf("valid config: %v, validation %q", err, cfg.Clusters[0].Validation)
	}
}

func TestAttestorRereadsToken(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	a, err := k8spsat.NewAttestor(k8spsat.AgentConfig{Cluster: "prod", TokenPath: path})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Payload(context.Background()); err == nil {
		t.Fatal("payload without a token file")
	}
	for _, tok := range []string{"h.p1.s", "h.p2.s"} {
		if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		b, err := a.Payload(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		p, err := k8spsat.ParsePayload(b)
		if err != nil || p.Token != tok || p.Cluster != "prod" {
			t.Fatalf("payload %+v, %v", p, err)
		}
	}
	if cf, ok := a.(node.ChallengeFree); !ok || !cf.ChallengeFree() {
		t.Fatal("the attestor is not challenge-free")
	}
	if _, ok := a.(node.SingleUse); ok {
		t.Fatal("the attestor is single-use: it must be able to re-attest")
	}
	if _, err := a.Answer(context.Background(), []byte("x")); err == nil {
		t.Fatal("Answer answered")
	}
	if err := os.WriteFile(path, []byte("not a jwt"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Payload(context.Background()); err == nil || strings.Contains(err.Error(), "not a jwt") {
		t.Fatalf("bad token file: %v", err)
	}
	if _, err := k8spsat.NewAttestor(k8spsat.AgentConfig{}); err == nil {
		t.Fatal("attestor without a cluster")
	}
	b, _ := k8spsat.NewAttestor(k8spsat.AgentConfig{Cluster: "prod"})
	if _, err := b.Payload(context.Background()); err == nil || !strings.Contains(err.Error(), k8spsat.DefaultTokenPath) {
		t.Fatalf("default token path: %v", err)
	}
}

func TestValidateSelector(t *testing.T) {
	for _, ok := range []string{"cluster:prod", "agent_ns:x", "agent_node_label:zone:a", "agent_node_label:k:"} {
		if err := k8spsat.ValidateSelector(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"cluster", "cluster:", "pod:x", "agent_node_label:zone", "agent_node_label::v"} {
		if err := k8spsat.ValidateSelector(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestKeysThroughOutage: fetched keys stay in use while the platform is
// down, for a day; after that the cluster fails closed.
func TestKeysThroughOutage(t *testing.T) {
	f := newFixture(t)
	v := f.verifier(t, f.oidcCluster("prod"))
	tok := f.p.Token(t, f.claims())
	if _, err := f.verify(v, "prod", tok); err != nil {
		t.Fatal(err)
	}
	f.p.SetUnavailable(true)
	f.clk.Add(2 * time.Hour) // past KeysMaxAge: a fetch is tried, and fails
	if _, err := f.verify(v, "prod", tok); err != nil {
		t.Fatalf("known keys not used through the outage: %v", err)
	}
	f.clk.Add(23 * time.Hour)
	_, err := f.verify(v, "prod", tok)
	var r *node.RefusedError
	if err == nil || errors.As(err, &r) || !strings.Contains(err.Error(), "fetching the keys") {
		t.Fatalf("after a day of outage: %v", err)
	}
}

// TestWrongCA: a platform whose certificate does not chain to ca_path is
// not trusted.
func TestWrongCA(t *testing.T) {
	f := newFixture(t)
	other := k8spsattest.New(t)
	c := f.oidcCluster("prod")
	c.CAPath = other.CAPath
	_, err := f.verify(f.verifier(t, c), "prod", f.p.Token(t, f.claims()))
	var r *node.RefusedError
	if err == nil || errors.As(err, &r) || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("untrusted platform certificate: %v", err)
	}
	r2 := f.reviewCluster("prod")
	r2.KubeAPI.CAPath = other.CAPath
	if _, err := f.verify(f.verifier(t, r2), "prod", f.p.Token(t, f.claims())); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("untrusted API server certificate: %v", err)
	}
	if f.p.Count("tokenreview") != 0 {
		t.Fatal("the token was sent to an untrusted API server")
	}
}
