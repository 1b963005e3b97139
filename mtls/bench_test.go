package mtls_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/mtls"
	"github.com/sigil-id/sigil/mtls/policy"
)

// benchPolicy is 1,000 rules, the last of which lets the client in.
func benchPolicy(b *testing.B) *policy.Policy {
	var sb strings.Builder
	for i := 0; i < 999; i++ {
		fmt.Fprintf(&sb, "rule \"r%d\" {\n  from = [\"spiffe://example.org/ns/*/sa/svc-%d\"]\n  to = [\"service:echo-%d\"]\n}\n", i, i, i)
	}
	sb.WriteString("rule \"web\" {\n  from = [\"spiffe://example.org/web\"]\n  to = [\"service:echo\"]\n}\n")
	p, err := policy.Parse([]byte(sb.String()), "bench.hcl")
	if err != nil {
		b.Fatal(err)
	}
	return p
}

// BenchmarkHandshake is one full mutual TLS 1.3 handshake (ECDSA P-256
// SVIDs, chain verification against the bundle on both sides) over an
// in-memory pipe, with and without a 1,000-rule policy deciding at the
// handshake.
func BenchmarkHandshake(b *testing.B) {
	e := newEnv(b)
	client := e.source(clientID)
	sid := spiffeid.RequireFromString(serverID)
	clientCfg := mtls.ClientConfig(client, mtls.WithServerID(sid))
	enf := mtls.NewEnforcer(benchPolicy(b))
	for _, bc := range []struct {
		name string
		cfg  *tls.Config
	}{
		{"no-policy", mtls.ServerConfig(e.server)},
		{"policy-1000-rules", mtls.ServerConfig(e.server, mtls.WithAuthorizer(enf.Authorize), mtls.WithService("echo"))},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				c1, c2 := net.Pipe()
				srv := tls.Server(c2, bc.cfg)
				errc := make(chan error, 1)
				go func() { errc <- srv.HandshakeContext(context.Background()) }()
				cli := tls.Client(c1, clientCfg)
				if err := cli.Handshake(); err != nil {
					b.Fatal(err)
				}
				if err := <-errc; err != nil {
					b.Fatal(err)
				}
				c1.Close()
				c2.Close()
			}
		})
	}
}

// BenchmarkEnforcerDecide is a policy decision through the Enforcer
// (policy, metrics off, log sampling at 0 for allowed calls).
func BenchmarkEnforcerDecide(b *testing.B) {
	enf := mtls.NewEnforcer(benchPolicy(b), mtls.WithLogSampling(0, 0))
	web := spiffeid.RequireFromString(clientID)
	t := policy.ServiceTarget("echo")
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := enf.Authorize(ctx, web, t); err != nil {
			b.Fatal(err)
		}
	}
}
