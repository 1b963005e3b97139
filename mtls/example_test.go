package mtls_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/sigil-id/sigil/mtls"
	"github.com/sigil-id/sigil/mtls/mtlstest"
	"github.com/sigil-id/sigil/mtls/policy"
)

// A server authorizes each HTTP request by the caller's SPIFFE ID. The
// certificates here come from an in-memory CA; in production the source is
// mtls.NewSource(ctx), fed by the agent's Workload API.
func Example() {
	ca := mtlstest.NewCA("example.org")
	serverSrc := mtlstest.NewSource(ca.SVID("spiffe://example.org/users", time.Hour), ca.Bundle())
	webSrc := mtlstest.NewSource(ca.SVID("spiffe://example.org/web", time.Hour), ca.Bundle())
	batchSrc := mtlstest.NewSource(ca.SVID("spiffe://example.org/batch", time.Hour), ca.Bundle())

	pol, _ := policy.Parse([]byte(`
rule "web-reads-users" {
  from = ["spiffe://example.org/web"]
  to   = ["http:GET /users/*"]
}`), "policy.hcl")
	enf := mtls.NewEnforcer(pol, mtls.WithServiceName("users"))

	mux := http.NewServeMux()
	mux.HandleFunc("/users/{id}", func(w http.ResponseWriter, r *http.Request) {
		caller, _ := mtls.PeerIDFromContext(r.Context())
		fmt.Fprintf(w, "user %s, for %s", r.PathValue("id"), caller)
	})
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	srv := &http.Server{Handler: mtls.HTTPMiddleware(enf.Authorize)(mux), TLSConfig: mtls.ServerConfig(serverSrc)}
	go srv.ServeTLS(l, "", "")
	defer srv.Close()

	usersID := spiffeid.RequireFromString("spiffe://example.org/users")
	for _, src := range []*mtlstest.Source{webSrc, batchSrc} {
		client := &http.Client{Transport: &http.Transport{
			TLSClientConfig:   mtls.ClientConfig(src, mtls.WithServerID(usersID)),
			ForceAttemptHTTP2: true,
		}}
		resp, err := client.Get("https://" + l.Addr().String() + "/users/42")
		if err != nil {
			fmt.Println(err)
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Println(resp.StatusCode, strings.TrimSpace(string(body)))
	}
	// Output:
	// 200 user 42, for spiffe://example.org/web
	// 403 mtls: permission denied: spiffe://example.org/batch may not call GET /users/42 on service users: no rule in policy.hcl allows it (deny by default; add a rule with this SPIFFE ID in from and this target in to)
}

// NewSource connects to the agent's Workload API ($SPIFFE_ENDPOINT_SOCKET,
// or WithSocket) and keeps the SVID and bundles current.
func ExampleNewSource() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	src, err := mtls.NewSource(ctx,
		mtls.WithSocket("/run/sigil/agent/public/api.sock"),
		mtls.WithOnRotate(func(s *x509svid.SVID) { fmt.Println("rotated, now valid until", s.Certificates[0].NotAfter) }))
	if err != nil {
		fmt.Println(err) // mtls.ErrSocketMissing or mtls.ErrNoIdentity say what to fix
		return
	}
	defer src.Close()
	fmt.Println("I am", src.ID())
}

func ExampleEnforcer_Decide() {
	pol, _ := policy.Parse([]byte(`
mode = "shadow"
rule "billing" {
  from = ["spiffe://example.org/ns/*/sa/billing"]
  to   = ["grpc:/ledger.v1.Ledger/*"]
}`), "policy.hcl")
	enf := mtls.NewEnforcer(pol, mtls.WithServiceName("ledger"))
	ctx := context.Background()
	for _, caller := range []string{"spiffe://example.org/ns/prod/sa/billing", "spiffe://example.org/ns/prod/sa/web"} {
		d := enf.Decide(ctx, spiffeid.RequireFromString(caller), policy.GRPCTarget("", "/ledger.v1.Ledger/Post"))
		fmt.Println(d.Effect, d.Allowed(), d.Rule)
	}
	// Output:
	// allowed true billing
	// shadow_denied true
}

// JWTBearer authenticates callers by JWT-SVID where a proxy terminated TLS.
func ExampleJWTBearer() {
	ca := mtlstest.NewCA("example.org")
	h := mtls.JWTBearer(jwtbundle.NewSet(ca.JWTBundle()), "reports")(
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			id, _ := mtls.PeerIDFromContext(r.Context())
			fmt.Fprint(w, "hello ", id)
		}))
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	srv := &http.Server{Handler: h}
	go srv.Serve(l)
	defer srv.Close()

	for _, aud := range []string{"reports", "billing"} {
		req, _ := http.NewRequest("GET", "http://"+l.Addr().String()+"/", nil)
		req.Header.Set("Authorization", "Bearer "+ca.JWT("spiffe://example.org/web", time.Minute, aud))
		resp, _ := http.DefaultClient.Do(req)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Println(resp.StatusCode, strings.TrimSpace(string(body)))
	}
	// Output:
	// 200 hello spiffe://example.org/web
	// 401 mtls: invalid JWT-SVID: jwtsvid: expected audience in ["reports"] (audience=["billing"])
}

// A client names the server it accepts. Without WithServerID (or
// WithAuthorizer) Dial refuses to connect: any SVID of the trust domain,
// an agent's included, would otherwise pass as the server.
func ExampleDial() {
	ca := mtlstest.NewCA("example.org")
	serverSrc := mtlstest.NewSource(ca.SVID("spiffe://example.org/echo", time.Hour), ca.Bundle())
	clientSrc := mtlstest.NewSource(ca.SVID("spiffe://example.org/web", time.Hour), ca.Bundle())
	l, _ := mtls.Listen("tcp", "127.0.0.1:0", serverSrc)
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			id, _ := mtls.PeerIDFromConn(c)
			fmt.Fprintln(c, "hello", id)
			c.Close()
		}
	}()
	ctx := context.Background()

	_, err := mtls.Dial(ctx, "tcp", l.Addr().String(), clientSrc)
	fmt.Println(errors.Is(err, mtls.ErrNoServerAuthorizer))

	echo := spiffeid.RequireFromString("spiffe://example.org/echo")
	c, err := mtls.Dial(ctx, "tcp", l.Addr().String(), clientSrc, mtls.WithServerID(echo))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	b, _ := io.ReadAll(c)
	fmt.Print(string(b))
	// Output:
	// true
	// hello spiffe://example.org/web
}
