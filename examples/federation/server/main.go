// Command server is the gcp.example half of the federation example: an
// HTTPS service that accepts mutual TLS with SPIFFE identities of its own
// trust domain and of the trust domains it federates with (the agent
// hands it their bundles), and lets through only what policy.hcl allows,
// here a client of another trust domain. See ../README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/sigil-id/sigil/mtls"
	"github.com/sigil-id/sigil/mtls/policy"
)

func main() {
	var (
		addr       = flag.String("addr", "127.0.0.1:9443", "address to serve HTTPS on")
		socket     = flag.String("socket", "", "Workload API socket (default $SPIFFE_ENDPOINT_SOCKET, then your own agent's under $XDG_RUNTIME_DIR/sigil, then "+mtls.DefaultSocket+")")
		policyFile = flag.String("policy", "policy.hcl", "authorization policy file (reloaded when it changes)")
	)
	flag.Parse()
	log, _ := zap.NewDevelopment()
	if err := run(log, *addr, *socket, *policyFile); err != nil {
		fmt.Fprintln(os.Stderr, "server:", err)
		os.Exit(1)
	}
}

func run(log *zap.Logger, addr, socket, policyFile string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var opts []mtls.SourceOption
	if socket != "" {
		opts = append(opts, mtls.WithSocket(socket))
	}
	startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	src, err := newSource(startCtx, opts...)
	if err != nil {
		return err
	}
	defer src.Close()
	log.Info("serving with identity "+src.ID().String(), zap.Strings("trusted_trust_domains", trustDomains(src)))

	pol, err := policy.Watch(policyFile, policy.WithWatchLogger(log))
	if err != nil {
		return err
	}
	defer pol.Close()
	enf := mtls.NewEnforcer(pol, mtls.WithServiceName("greeter"), mtls.WithLogger(log), mtls.WithLogSampling(1, 1))
	hello := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		caller, _ := mtls.PeerIDFromContext(r.Context())
		fmt.Fprintf(w, "hello %s, from %s\n", caller, src.ID())
	})
	// The TLS layer accepts any workload whose SVID verifies against the
	// bundles, federated ones included; the policy decides per request.
	srv := &http.Server{
		Handler:           mtls.HTTPMiddleware(enf.Authorize)(hello),
		TLSConfig:         mtls.ServerConfig(src),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          zap.NewStdLog(log),
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); srv.Close() }()
	log.Info("listening on https://" + l.Addr().String())
	if err := srv.ServeTLS(l, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// trustDomains lists the trust domains whose bundles the source holds.
func trustDomains(src *mtls.Source) []string {
	var tds []string
	for _, b := range src.Bundles().Bundles() {
		tds = append(tds, b.TrustDomain().Name())
	}
	return tds
}

// newSource is mtls.NewSource, retried while the Workload API answers
// that no identity is issued to this process yet: an entry created a
// moment ago may still be on its way to the agent.
func newSource(ctx context.Context, opts ...mtls.SourceOption) (*mtls.Source, error) {
	for {
		src, err := mtls.NewSource(ctx, opts...)
		if !errors.Is(err, mtls.ErrNoIdentity) {
			return src, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(500 * time.Millisecond):
		}
	}
}
