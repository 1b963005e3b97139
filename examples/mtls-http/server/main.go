// Command server is an HTTPS service that accepts only mutual TLS with a
// SPIFFE identity from the local Sigil agent and authorizes every request
// with a hot-reloaded policy file. See ../README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/zap"

	"github.com/sigil-id/sigil/mtls"
	"github.com/sigil-id/sigil/mtls/policy"
)

func main() {
	var (
		addr        = flag.String("addr", "127.0.0.1:8443", "address to serve HTTPS on")
		socket      = flag.String("socket", "", "Workload API socket (default $SPIFFE_ENDPOINT_SOCKET, then your own agent's under $XDG_RUNTIME_DIR/sigil, then "+mtls.DefaultSocket+")")
		id          = flag.String("spiffe-id", "", "SPIFFE ID to present when the process has several (default: the first)")
		policyFile  = flag.String("policy", "policy.hcl", "authorization policy file (reloaded when it changes)")
		service     = flag.String("service", "greeter", "service name the policy's service: targets refer to")
		metricsAddr = flag.String("metrics", "127.0.0.1:9443", "address of the plain-HTTP /metrics endpoint (empty: none)")
	)
	flag.Parse()
	log, _ := zap.NewDevelopment(zap.AddStacktrace(zap.ErrorLevel))
	if err := run(log, *addr, *socket, *id, *policyFile, *service, *metricsAddr); err != nil {
		fmt.Fprintln(os.Stderr, "server:", err)
		os.Exit(1)
	}
}

func run(log *zap.Logger, addr, socket, id, policyFile, service, metricsAddr string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	opts := []mtls.SourceOption{
		mtls.WithLogger(log),
		mtls.WithOnRotate(func(s *x509svid.SVID) {
			log.Info("presenting a new SVID from the next handshake on", zap.String("serial", s.Certificates[0].SerialNumber.String()))
		}),
	}
	if socket != "" {
		opts = append(opts, mtls.WithSocket(socket))
	}
	if id != "" {
		sid, err := spiffeid.FromString(id)
		if err != nil {
			return fmt.Errorf("-spiffe-id: %v", err)
		}
		opts = append(opts, mtls.WithSVIDID(sid))
	}
	startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	src, err := mtls.NewSource(startCtx, opts...)
	if err != nil {
		return err
	}
	defer src.Close()

	reg := prometheus.NewRegistry()
	watcher, err := policy.Watch(policyFile, policy.WithWatchLogger(log), policy.WithWatchRegisterer(reg))
	if err != nil {
		return err
	}
	defer watcher.Close()
	enf := mtls.NewEnforcer(watcher, mtls.WithServiceName(service), mtls.WithMetrics(reg),
		mtls.WithLogger(log), mtls.WithLogSampling(1, 1))

	mux := http.NewServeMux()
	mux.HandleFunc("GET /hello", func(w http.ResponseWriter, r *http.Request) {
		caller, _ := mtls.PeerIDFromContext(r.Context())
		fmt.Fprintf(w, "hello %s, this is %s\n", caller, src.ID())
	})
	mux.HandleFunc("GET /admin", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "admin area\n")
	})
	srv := &http.Server{
		Addr:              addr,
		Handler:           mtls.HTTPMiddleware(enf.Authorize)(mux),
		TLSConfig:         mtls.ServerConfig(src),
		ReadHeaderTimeout: 10 * time.Second,
	}
	if metricsAddr != "" {
		ms := &http.Server{Addr: metricsAddr, Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 10 * time.Second}
		go ms.ListenAndServe()
		defer ms.Close()
	}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(shutdown)
	}()
	log.Info("serving", zap.String("addr", addr), zap.String("spiffe_id", src.ID().String()),
		zap.String("policy", policyFile), zap.Int("rules", watcher.Policy().Len()))
	if err := srv.ListenAndServeTLS("", ""); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
