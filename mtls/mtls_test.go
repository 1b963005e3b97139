package mtls_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sigil-id/sigil/internal/eventually"
	"github.com/sigil-id/sigil/mtls"
	"github.com/sigil-id/sigil/mtls/mtlstest"
	"github.com/sigil-id/sigil/mtls/policy"
)

const (
	serverID  = "spiffe://example.org/users"
	clientID  = "spiffe://example.org/web"
	otherID   = "spiffe://example.org/batch"
	partnerID = "spiffe://partner.org/app"
	evilID    = "spiffe://evil.org/web"
)

// env is a trust domain (example.org) federated with partner.org, and an
// untrusted evil.org.
type env struct {
	ca, partner, evil *mtlstest.CA
	server            *mtlstest.Source
}

func newEnv(t testing.TB) *env {
	t.Helper()
	e := &env{ca: mtlstest.NewCA("example.org"), partner: mtlstest.NewCA("partner.org"), evil: mtlstest.NewCA("evil.org")}
	e.server = mtlstest.NewSource(e.ca.SVID(serverID, time.Hour), e.ca.Bundle(), e.partner.Bundle())
	return e
}

// source makes a workload source for id, trusting example.org and partner.org.
func (e *env) source(id string) *mtlstest.Source {
	ca := e.ca
	switch spiffeid.RequireFromString(id).TrustDomain().Name() {
	case "partner.org":
		ca = e.partner
	case "evil.org":
		ca = e.evil
	}
	return mtlstest.NewSource(ca.SVID(id, time.Hour), e.ca.Bundle(), e.partner.Bundle())
}

// httpClient is an HTTP/2 client presenting src's SVID and accepting only
// the server ID.
func httpClient(src mtls.X509Source) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig:   mtls.ClientConfig(src, mtls.WithServerID(spiffeid.RequireFromString(serverID))),
		ForceAttemptHTTP2: true,
	}}
}

// serveHTTP serves h over mutual TLS with ServerConfig(src) and returns
// the base URL and a buffer with the server's error log.
func serveHTTP(t testing.TB, src mtls.X509Source, h http.Handler) (string, *syncBuffer) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	errLog := &syncBuffer{}
	srv := &http.Server{Handler: h, TLSConfig: mtls.ServerConfig(src), ErrorLog: log.New(errLog, "", 0)}
	go srv.ServeTLS(l, "", "")
	t.Cleanup(func() { srv.Close() })
	return "https://" + l.Addr().String(), errLog
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func hello(w http.ResponseWriter, r *http.Request) {
	id, _ := mtls.PeerIDFromContext(r.Context())
	io.WriteString(w, "hello "+id.String())
}

func get(t testing.TB, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

const basePolicy = `
rule "web-reads-hello" {
  from = ["spiffe://example.org/web"]
  to   = ["http:GET /hello"]
}
`

func writePolicy(t testing.TB, path, src string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func counter(t testing.TB, reg *prometheus.Registry, decision, rule string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "sigil_mtls_policy_decisions_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var d, r string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "decision":
					d = l.GetValue()
				case "rule":
					r = l.GetValue()
				}
			}
			if d == decision && r == rule {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func TestHTTPPolicyEnforcement(t *testing.T) {
	e := newEnv(t)
	reg := prometheus.NewRegistry()
	core, logs := observer.New(zapcore.InfoLevel)
	p, err := policy.Parse([]byte(basePolicy), "policy.hcl")
	if err != nil {
		t.Fatal(err)
	}
	enf := mtls.NewEnforcer(p, mtls.WithServiceName("users"), mtls.WithMetrics(reg), mtls.WithLogger(zap.New(core)), mtls.WithLogSampling(1, 1))
	url, errLog := serveHTTP(t, e.server, mtls.HTTPMiddleware(enf.Authorize)(http.HandlerFunc(hello)))

	// The allowed peer succeeds, over HTTP/2, and the handler sees its ID.
	c := httpClient(e.source(clientID))
	resp, err := c.Get(url + "/hello")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "hello "+clientID || resp.ProtoMajor != 2 {
		t.Fatalf("allowed peer: %d %s %q", resp.StatusCode, resp.Proto, b)
	}
	if resp.TLS.Version != tls.VersionTLS13 {
		t.Fatalf("TLS version %x", resp.TLS.Version)
	}

	// Same peer, a route the rule does not name.
	code, body := get(t, c, url+"/admin")
	if code != 403 || !strings.Contains(body, "may not call GET /admin on service users") {
		t.Fatalf("unlisted route: %d %q", code, body)
	}
	// Another SPIFFE ID of the same trust domain.
	code, body = get(t, httpClient(e.source(otherID)), url+"/hello")
	want := "mtls: permission denied: spiffe://example.org/batch may not call GET /hello on service users: no rule in policy.hcl allows it"
	if code != 403 || !strings.HasPrefix(body, want) {
		t.Fatalf("other ID: %d %q", code, body)
	}
	// A federated trust domain: the TLS handshake succeeds, the policy refuses.
	code, body = get(t, httpClient(e.source(partnerID)), url+"/hello")
	if code != 403 || !strings.Contains(body, partnerID+" may not call") {
		t.Fatalf("federated ID: %d %q", code, body)
	}
	// An untrusted trust domain never completes the handshake.
	if _, err := httpClient(e.source(evilID)).Get(url + "/hello"); err == nil {
		t.Fatal("untrusted trust domain got through")
	}
	waitFor(t, func() bool {
		return strings.Contains(errLog.String(), `mtls: client certificate rejected`) && strings.Contains(errLog.String(), `"evil.org"`)
	})

	if got := counter(t, reg, "allowed", "web-reads-hello"); got != 1 {
		t.Errorf("allowed counter %v", got)
	}
	if got := counter(t, reg, "denied", "none"); got != 3 {
		t.Errorf("denied counter %v", got)
	}
	if n := testutil.CollectAndCount(reg, "sigil_mtls_policy_decision_duration_seconds"); n != 1 {
		t.Errorf("latency histogram: %d series", n)
	}
	if n := logs.FilterMessage("authorization decision: denied").FilterField(zap.String("peer", otherID)).Len(); n != 1 {
		t.Errorf("deny logs for %s: %d", otherID, n)
	}
	// Requests without a client certificate: plain TLS to an mTLS server fails.
	plain := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	if _, err := plain.Get(url + "/hello"); err == nil {
		t.Fatal("client without certificate got through")
	}
}

func TestShadowMode(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		name, policy, rule string
	}{
		{"policy", `mode = "shadow"` + basePolicy, "none"},
		{"rule", basePolicy + `
rule "rollout" {
  from   = ["spiffe://example.org/web"]
  to     = ["http:GET /report"]
  shadow = true
}`, "rollout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			p, err := policy.Parse([]byte(tc.policy), "policy.hcl")
			if err != nil {
				t.Fatal(err)
			}
			enf := mtls.NewEnforcer(p, mtls.WithMetrics(reg))
			url, _ := serveHTTP(t, e.server, mtls.HTTPMiddleware(enf.Authorize)(http.HandlerFunc(hello)))
			path := "/hello"
			if tc.name == "rule" {
				path = "/report"
			}
			code, body := get(t, httpClient(e.source(otherID)), url+path)
			if code != 200 || body != "hello "+otherID {
				t.Fatalf("shadow: %d %q", code, body)
			}
			if got := counter(t, reg, "shadow_denied", tc.rule); got != 1 {
				t.Fatalf("shadow_denied{rule=%q} = %v", tc.rule, got)
			}
			if got := counter(t, reg, "denied", "none"); got != 0 {
				t.Fatalf("denied = %v", got)
			}
			if tc.name == "rule" {
				// Targets outside the shadow rule are still enforced.
				if code, _ := get(t, httpClient(e.source(otherID)), url+"/hello"); code != 403 {
					t.Fatalf("non-shadow target: %d", code)
				}
			}
		})
	}
}

func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	eventually.True(t, 10*time.Second, cond, "condition not met")
}

func TestPolicyFileHotReload(t *testing.T) {
	e := newEnv(t)
	path := filepath.Join(t.TempDir(), "policy.hcl")
	writePolicy(t, path, basePolicy)
	var rejected sync.Map
	w, err := policy.Watch(path, policy.WithInterval(20*time.Millisecond),
		policy.WithOnReload(func(_ *policy.Policy, err error) {
			if err != nil {
				rejected.Store(err.Error(), true)
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	enf := mtls.NewEnforcer(w)
	url, _ := serveHTTP(t, e.server, mtls.HTTPMiddleware(enf.Authorize)(http.HandlerFunc(hello)))
	other := httpClient(e.source(otherID))
	if code, _ := get(t, other, url+"/hello"); code != 403 {
		t.Fatalf("before edit: %d", code)
	}

	// The file edited on disk takes effect without a restart, on the same
	// connection.
	writePolicy(t, path, basePolicy+`
rule "batch-reads-hello" {
  from = ["spiffe://example.org/batch"]
  to   = ["http:GET /hello"]
}`)
	waitFor(t, func() bool { code, _ := get(t, other, url+"/hello"); return code == 200 })

	// A broken edit is rejected with a clear error; the last good policy stays.
	writePolicy(t, path, `rule "batch-reads-hello" {
  from = ["spiffe://example.org/batch"]
  to   = ["htp:GET /hello"]
}`)
	waitFor(t, func() bool { return w.Err() != nil })
	if msg := w.Err().Error(); !strings.Contains(msg, `policy.hcl:1: rule "batch-reads-hello": to[0]: "htp:GET /hello": unknown target kind "htp"`) {
		t.Fatalf("reload error: %s", msg)
	}
	if code, _ := get(t, other, url+"/hello"); code != 200 {
		t.Fatalf("broken edit changed the policy: %d", code)
	}
	if code, _ := get(t, httpClient(e.source(clientID)), url+"/hello"); code != 200 {
		t.Fatalf("broken edit changed the policy for the first rule: %d", code)
	}
	n := 0
	rejected.Range(func(any, any) bool { n++; return true })
	if n != 1 {
		t.Fatalf("rejections reported %d times", n)
	}
}

// TestRotationLongLivedHTTP2: an HTTP/2 connection opened before both
// sides' SVIDs rotate keeps serving requests, and the next handshake
// presents the new SVIDs.
func TestRotationLongLivedHTTP2(t *testing.T) {
	e := newEnv(t)
	seen := make(chan string, 10)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.TLS.PeerCertificates[0].SerialNumber.String()
		hello(w, r)
	})
	p, _ := policy.Parse([]byte(basePolicy), "")
	url, _ := serveHTTP(t, e.server, mtls.HTTPMiddleware(mtls.NewEnforcer(p).Authorize)(h))
	clientSrc := e.source(clientID)
	c := httpClient(clientSrc)

	call := func(c *http.Client) (serverSerial, clientSerial string, reused bool) {
		t.Helper()
		req, _ := http.NewRequest("GET", url+"/hello", nil)
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
			GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused },
		}))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
			t.Fatalf("%d %s", resp.StatusCode, resp.Proto)
		}
		return resp.TLS.PeerCertificates[0].SerialNumber.String(), <-seen, reused
	}
	s1, c1, _ := call(c)

	oldServer, _ := e.server.GetX509SVID()
	e.server.SetSVID(e.ca.SVID(serverID, time.Hour))
	clientSrc.SetSVID(e.ca.SVID(clientID, time.Hour))

	// The open connection keeps working.
	s2, c2, reused := call(c)
	if !reused || s2 != s1 || c2 != c1 {
		t.Fatalf("long-lived connection: reused=%v server %s→%s client %s→%s", reused, s1, s2, c1, c2)
	}
	// A new connection handshakes with the new SVIDs on both sides.
	c.CloseIdleConnections()
	s3, c3, reused := call(c)
	if reused || s3 == s1 || c3 == c1 {
		t.Fatalf("new connection: reused=%v server %s→%s client %s→%s", reused, s1, s3, c1, c3)
	}
	newServer, _ := e.server.GetX509SVID()
	if s3 != newServer.Certificates[0].SerialNumber.String() || s1 != oldServer.Certificates[0].SerialNumber.String() {
		t.Fatal("serials do not match the rotated SVIDs")
	}
}

func TestDialListenConnectionPolicy(t *testing.T) {
	e := newEnv(t)
	p, err := policy.Parse([]byte(`
rule "web-to-echo" {
  from = ["spiffe://example.org/web"]
  to   = ["service:echo"]
}`), "policy.hcl")
	if err != nil {
		t.Fatal(err)
	}
	enf := mtls.NewEnforcer(p)
	l, err := mtls.Listen("tcp", "127.0.0.1:0", e.server, mtls.WithAuthorizer(enf.Authorize), mtls.WithService("echo"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				id, err := mtls.PeerIDFromConn(c)
				if err != nil {
					return
				}
				io.WriteString(c, "hi "+id.String()+"\n")
			}()
		}
	}()
	ctx := context.Background()
	sid := spiffeid.RequireFromString(serverID)

	c, err := mtls.Dial(ctx, "tcp", l.Addr().String(), e.source(clientID), mtls.WithServerID(sid))
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	c.Close()
	if err != nil || string(b) != "hi "+clientID+"\n" {
		t.Fatalf("allowed: %q %v", b, err)
	}
	if id, _ := mtls.PeerIDFromConn(c); id.String() != serverID {
		t.Fatalf("client saw server %s", id)
	}

	// Denied at the handshake: with TLS 1.3 the client learns at its first read.
	c, err = mtls.Dial(ctx, "tcp", l.Addr().String(), e.source(otherID), mtls.WithServerID(sid))
	if err == nil {
		_, err = io.ReadAll(c)
		c.Close()
	}
	if err == nil || !strings.Contains(err.Error(), "bad certificate") {
		t.Fatalf("denied peer: %v", err)
	}

	// The client refuses a server with an unexpected ID, with a clear error.
	_, err = mtls.Dial(ctx, "tcp", l.Addr().String(), e.source(clientID), mtls.WithServerID(spiffeid.RequireFromString("spiffe://example.org/other")))
	if err == nil || !strings.Contains(err.Error(), "mtls: unexpected peer spiffe://example.org/users: want spiffe://example.org/other") {
		t.Fatalf("wrong server: %v", err)
	}
	// A client that accepts the members of a trust domain refuses a server
	// of another one.
	_, err = mtls.Dial(ctx, "tcp", l.Addr().String(), e.source(partnerID), mtls.WithAuthorizer(mtls.AuthorizeMemberOf(spiffeid.RequireTrustDomainFromString("partner.org"))))
	if err == nil || !strings.Contains(err.Error(), "mtls: peer spiffe://example.org/users is not in an accepted trust domain") {
		t.Fatalf("member-of client authorizer: %v", err)
	}
	// A client that does not say which server it accepts does not connect.
	_, err = mtls.Dial(ctx, "tcp", l.Addr().String(), e.source(clientID))
	if !errors.Is(err, mtls.ErrNoServerAuthorizer) {
		t.Fatalf("default client authorizer: %v", err)
	}
}

func TestJWTBearer(t *testing.T) {
	e := newEnv(t)
	p, _ := policy.Parse([]byte(basePolicy), "policy.hcl")
	enf := mtls.NewEnforcer(p)
	var gotAud []string
	h := mtls.JWTBearer(jwtbundle.NewSet(e.ca.JWTBundle(), e.partner.JWTBundle()), "users")(
		mtls.HTTPMiddleware(enf.Authorize)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s, _ := mtls.JWTSVIDFromContext(r.Context())
			gotAud = s.Audience
			hello(w, r)
		})))
	// Plain HTTP: a proxy terminated TLS in front of this service.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(l)
	defer srv.Close()
	url := "http://" + l.Addr().String() + "/hello"
	do := func(token string) (int, string) {
		req, _ := http.NewRequest("GET", url, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(b))
	}
	for _, tc := range []struct {
		name  string
		token string
		code  int
		body  string
	}{
		{"valid", e.ca.JWT(clientID, time.Minute, "users"), 200, "hello " + clientID},
		{"valid, not allowed", e.ca.JWT(otherID, time.Minute, "users"), 403, otherID + " may not call GET /hello"},
		{"wrong audience", e.ca.JWT(clientID, time.Minute, "billing"), 401, `expected audience in ["users"]`},
		{"expired", e.ca.JWT(clientID, -time.Minute, "users"), 401, "token has expired"},
		{"untrusted issuer", e.evil.JWT(evilID, time.Minute, "users"), 401, `no bundle found for trust domain "evil.org"`},
		{"forged key", e.partner.JWT(clientID, time.Minute, "users"), 401, "invalid JWT-SVID"},
		{"garbage", "not-a-jwt", 401, "unable to parse JWT token"},
		{"missing", "", 401, "missing JWT-SVID"},
	} {
		code, body := do(tc.token)
		if code != tc.code || !strings.Contains(body, tc.body) {
			t.Errorf("%s: %d %q", tc.name, code, body)
		}
	}
	if len(gotAud) != 1 || gotAud[0] != "users" {
		t.Errorf("audience in context %v", gotAud)
	}
}

func TestHookAndSampling(t *testing.T) {
	p, _ := policy.Parse([]byte(basePolicy), "policy.hcl")
	core, logs := observer.New(zapcore.InfoLevel)
	enf := mtls.NewEnforcer(p, mtls.WithLogger(zap.New(core)), mtls.WithLogSampling(0, 1),
		mtls.WithHook(func(ctx context.Context, d policy.Decision) policy.Decision {
			if d.Allowed() && d.Target.Path == "/hello" && ctx.Value(ctxKey{}) == "maintenance" {
				d.Effect, d.Detail = policy.Deny, "the service is in maintenance; retry later"
			}
			return d
		}))
	web := spiffeid.RequireFromString(clientID)
	target := policy.HTTPTarget("", "GET", "/hello")
	if err := enf.Authorize(context.Background(), web, target); err != nil {
		t.Fatal(err)
	}
	err := enf.Authorize(context.WithValue(context.Background(), ctxKey{}, "maintenance"), web, target)
	var de *mtls.DeniedError
	if !errors.As(err, &de) || !errors.Is(err, mtls.ErrDenied) || err.Error() != "mtls: permission denied: the service is in maintenance; retry later" {
		t.Fatalf("hook: %v", err)
	}
	if logs.FilterMessage("authorization decision").Len() != 0 {
		t.Fatal("allowed decision logged at sample rate 0")
	}
	if logs.FilterMessage("authorization decision: denied").Len() != 1 {
		t.Fatal("denied decision not logged")
	}
}

type ctxKey struct{}
