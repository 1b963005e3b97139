// Command client calls the example gRPC service over mutual TLS with its
// SPIFFE identity from the local Sigil agent: one Check, then a Watch
// stream on the same connection that stays open across SVID rotations.
// See ../README.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/sigil-id/sigil/mtls"
)

func main() {
	var (
		addr     = flag.String("addr", "127.0.0.1:8444", "server address")
		socket   = flag.String("socket", "", "Workload API socket (default $SPIFFE_ENDPOINT_SOCKET, then your own agent's under $XDG_RUNTIME_DIR/sigil, then "+mtls.DefaultSocket+")")
		id       = flag.String("spiffe-id", "", "SPIFFE ID to present when the process has several (default: the first)")
		serverID = flag.String("server-id", "", "SPIFFE ID the server must present (required, e.g. spiffe://dev.sigil.local/example/grpc-server)")
		watch    = flag.Duration("watch", 0, "after the Check, keep a Watch stream open this long and print each update")
	)
	flag.Parse()
	if err := run(*addr, *socket, *id, *serverID, *watch); err != nil {
		if st, ok := status.FromError(err); ok {
			fmt.Fprintf(os.Stderr, "client: %s: %s\n", st.Code(), st.Message())
		} else {
			fmt.Fprintln(os.Stderr, "client:", err)
		}
		os.Exit(1)
	}
}

func run(addr, socket, id, serverID string, watch time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second+watch)
	defer cancel()
	// A client names the server it accepts: any other SVID of the trust
	// domain (another workload's, an agent's) is refused.
	if serverID == "" {
		return fmt.Errorf("-server-id is required: the SPIFFE ID the server must present (e.g. spiffe://dev.sigil.local/example/grpc-server)")
	}
	sid, err := spiffeid.FromString(serverID)
	if err != nil {
		return fmt.Errorf("-server-id: %v", err)
	}
	tlsOpts := []mtls.TLSOption{mtls.WithServerID(sid)}
	var opts []mtls.SourceOption
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
	src, err := mtls.NewSource(ctx, opts...)
	if err != nil {
		return err
	}
	defer src.Close()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(mtls.ClientCredentials(src, tlsOpts...)))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := healthpb.NewHealthClient(conn)

	resp, err := client.Check(ctx, &healthpb.HealthCheckRequest{Service: "example"})
	if err != nil {
		return err
	}
	fmt.Printf("Check as %s: %s\n", src.ID(), resp.Status)
	if watch <= 0 {
		return nil
	}
	wctx, wcancel := context.WithTimeout(ctx, watch)
	defer wcancel()
	stream, err := client.Watch(wctx, &healthpb.HealthCheckRequest{Service: "example"})
	if err != nil {
		return err
	}
	for {
		msg, err := stream.Recv()
		if err != nil {
			if wctx.Err() != nil {
				return nil // watched long enough
			}
			return err
		}
		svid, _ := src.GetX509SVID()
		fmt.Printf("%s Watch: %s (my SVID serial now %s, same stream)\n", time.Now().Format(time.TimeOnly), msg.Status, svid.Certificates[0].SerialNumber)
	}
}
