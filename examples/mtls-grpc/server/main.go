// Command server is a gRPC service (the standard grpc.health.v1.Health
// service, so that no generated code is needed) that accepts only mutual
// TLS with a SPIFFE identity from the local Sigil agent and authorizes
// every call by the caller's SPIFFE ID and the gRPC method, with a
// hot-reloaded policy file. See ../README.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
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
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/sigil-id/sigil/mtls"
	"github.com/sigil-id/sigil/mtls/policy"
)

func main() {
	var (
		addr        = flag.String("addr", "127.0.0.1:8444", "address to serve gRPC on")
		socket      = flag.String("socket", "", "Workload API socket (default $SPIFFE_ENDPOINT_SOCKET, then your own agent's under $XDG_RUNTIME_DIR/sigil, then "+mtls.DefaultSocket+")")
		id          = flag.String("spiffe-id", "", "SPIFFE ID to present when the process has several (default: the first)")
		policyFile  = flag.String("policy", "policy.hcl", "authorization policy file (reloaded when it changes)")
		metricsAddr = flag.String("metrics", "127.0.0.1:9444", "address of the plain-HTTP /metrics endpoint (empty: none)")
		flip        = flag.Duration("flip", 5*time.Second, "toggle the reported health status this often, so Watch streams see updates")
	)
	flag.Parse()
	log, _ := zap.NewDevelopment(zap.AddStacktrace(zap.ErrorLevel))
	if err := run(log, *addr, *socket, *id, *policyFile, *metricsAddr, *flip); err != nil {
		fmt.Fprintln(os.Stderr, "server:", err)
		os.Exit(1)
	}
}

func run(log *zap.Logger, addr, socket, id, policyFile, metricsAddr string, flip time.Duration) error {
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
	enf := mtls.NewEnforcer(watcher, mtls.WithServiceName("health"), mtls.WithMetrics(reg),
		mtls.WithLogger(log), mtls.WithLogSampling(1, 1))

	srv := grpc.NewServer(
		grpc.Creds(mtls.ServerCredentials(src)),
		grpc.UnaryInterceptor(mtls.UnaryServerInterceptor(enf.Authorize)),
		grpc.StreamInterceptor(mtls.StreamServerInterceptor(enf.Authorize)),
	)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	go func() {
		serving := true
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(flip):
			}
			serving = !serving
			st := healthpb.HealthCheckResponse_SERVING
			if !serving {
				st = healthpb.HealthCheckResponse_NOT_SERVING
			}
			hs.SetServingStatus("example", st)
		}
	}()
	hs.SetServingStatus("example", healthpb.HealthCheckResponse_SERVING)

	if metricsAddr != "" {
		ms := &http.Server{Addr: metricsAddr, Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 10 * time.Second}
		go ms.ListenAndServe()
		defer ms.Close()
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	go func() {
		<-ctx.Done()
		srv.GracefulStop()
	}()
	log.Info("serving gRPC", zap.String("addr", addr), zap.String("spiffe_id", src.ID().String()),
		zap.String("policy", policyFile), zap.Int("rules", watcher.Policy().Len()))
	return srv.Serve(l)
}
