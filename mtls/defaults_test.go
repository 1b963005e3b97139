package mtls_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/sigil-id/sigil/mtls"
	"github.com/sigil-id/sigil/mtls/mtlstest"
	"github.com/sigil-id/sigil/mtls/policy"
)

const agentID = "spiffe://example.org/sigil/agent/join_token/0123456789abcdef"

// TestClientWithoutServerAuthorizerRefuses: a client that does not say
// which server it accepts gets a clear error and accepts no server, not
// even one of its own trust domain.
func TestClientWithoutServerAuthorizerRefuses(t *testing.T) {
	e := newEnv(t)
	addr, errs := resumeServer(t, mtls.ServerConfig(e.server))
	src := e.source(clientID)

	// Dial fails before connecting.
	_, err := mtls.Dial(context.Background(), "tcp", addr, src)
	if !errors.Is(err, mtls.ErrNoServerAuthorizer) || !strings.Contains(err.Error(), "pass mtls.WithServerID(serverID)") {
		t.Fatalf("Dial without a server ID: %v", err)
	}
	// ClientConfig without an authorizer fails every handshake.
	_, err = exchange(addr, mtls.ClientConfig(src))
	if !errors.Is(err, mtls.ErrNoServerAuthorizer) {
		t.Fatalf("ClientConfig without a server ID: %v", err)
	}
	// So do gRPC client credentials.
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(mtls.ClientCredentials(src)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err == nil || !strings.Contains(err.Error(), "the client does not say which server it accepts") {
		t.Fatalf("ClientCredentials without a server ID: %v", err)
	}
	// With the server's ID the same client connects.
	if _, err := exchange(addr, mtls.ClientConfig(src, mtls.WithServerID(spiffeid.RequireFromString(serverID)))); err != nil {
		t.Fatalf("with the server ID: %v", err)
	}
	select {
	case err := <-errs:
		// The refusals are the client's: the server saw a peer closing.
		if strings.Contains(err.Error(), "mtls:") {
			t.Fatalf("server refused the client: %v", err)
		}
	default:
	}
}

// TestAgentSVIDIsNotAWorkload: an agent SVID (reserved /sigil/ path) is
// refused as a server by clients that accept a trust domain or name
// another ID, and as a client by a server's default authorizer; only an
// authorizer naming its exact ID accepts it.
func TestAgentSVIDIsNotAWorkload(t *testing.T) {
	e := newEnv(t)
	agent := mtlstest.NewSource(e.ca.SVID(agentID, time.Hour), e.ca.Bundle())
	agentAddr, _ := resumeServer(t, mtls.ServerConfig(agent))
	web := e.source(clientID)
	exampleOrg := spiffeid.RequireTrustDomainFromString("example.org")

	for _, tc := range []struct {
		name string
		opts []mtls.TLSOption
		want string
	}{
		{"default", nil, "the client does not say which server it accepts"},
		{"server-id", []mtls.TLSOption{mtls.WithServerID(spiffeid.RequireFromString(serverID))}, "unexpected peer " + agentID},
		{"member-of", []mtls.TLSOption{mtls.WithAuthorizer(mtls.AuthorizeMemberOf(exampleOrg))}, "is a Sigil agent or server identity (reserved path /sigil/), not a workload"},
		{"any", []mtls.TLSOption{mtls.WithAuthorizer(mtls.AuthorizeAny())}, "is a Sigil agent or server identity"},
		{"policy-trust-domain", []mtls.TLSOption{mtls.WithAuthorizer(mtls.NewEnforcer(mustPolicy(t, `rule "any-server" {
  from = ["spiffe://example.org"]
  to   = ["service:echo"]
}`)).Authorize), mtls.WithService("echo")}, "only a rule in policy.hcl naming this exact SPIFFE ID in from allows"},
	} {
		_, err := exchange(agentAddr, mtls.ClientConfig(web, tc.opts...))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: client accepted or wrong error: %v, want %q", tc.name, err, tc.want)
		}
	}
	// Named exactly, it is accepted.
	if _, err := exchange(agentAddr, mtls.ClientConfig(web, mtls.WithServerID(spiffeid.RequireFromString(agentID)))); err != nil {
		t.Errorf("exact agent ID: %v", err)
	}

	// A server with the default authorizer refuses an agent as a client.
	srvAddr, errs := resumeServer(t, mtls.ServerConfig(e.server))
	_, err := exchange(srvAddr, mtls.ClientConfig(agent, mtls.WithServerID(spiffeid.RequireFromString(serverID))))
	if err == nil {
		t.Fatal("server accepted an agent SVID as a client")
	}
	select {
	case err := <-errs:
		if !strings.Contains(err.Error(), agentID+" is a Sigil agent or server identity") {
			t.Fatalf("server refused with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the server reported no handshake error")
	}
	// The workload itself is still accepted.
	if _, err := exchange(srvAddr, mtls.ClientConfig(web, mtls.WithServerID(spiffeid.RequireFromString(serverID)))); err != nil {
		t.Fatalf("workload client: %v", err)
	}
}

func mustPolicy(t testing.TB, src string) *policy.Policy {
	t.Helper()
	p, err := policy.Parse([]byte(src), "policy.hcl")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestHTTPClientDefaultRefuses: an http.Client on ClientConfig without a
// server ID gets the error, not a response.
func TestHTTPClientDefaultRefuses(t *testing.T) {
	e := newEnv(t)
	url, _ := serveHTTP(t, e.server, mtls.HTTPMiddleware(mtls.AuthorizeAny())(http.HandlerFunc(hello)))
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig:   mtls.ClientConfig(e.source(clientID)),
		ForceAttemptHTTP2: true,
	}}
	resp, err := c.Get(url + "/hello")
	if err == nil {
		resp.Body.Close()
	}
	if !errors.Is(err, mtls.ErrNoServerAuthorizer) {
		t.Fatalf("GET without a server ID: %v", err)
	}
}
