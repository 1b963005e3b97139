// Command client calls the example HTTPS service over mutual TLS with its
// SPIFFE identity from the local Sigil agent, reusing one HTTP/2
// connection, and prints each answer. See ../README.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/mtls"
)

func main() {
	var (
		url      = flag.String("url", "https://127.0.0.1:8443/hello", "URL to call")
		socket   = flag.String("socket", "", "Workload API socket (default $SPIFFE_ENDPOINT_SOCKET, then your own agent's under $XDG_RUNTIME_DIR/sigil, then "+mtls.DefaultSocket+")")
		id       = flag.String("spiffe-id", "", "SPIFFE ID to present when the process has several (default: the first)")
		serverID = flag.String("server-id", "", "SPIFFE ID the server must present (required, e.g. spiffe://dev.sigil.local/example/http-server)")
		count    = flag.Int("n", 1, "number of requests")
		interval = flag.Duration("interval", time.Second, "pause between requests")
	)
	flag.Parse()
	if err := run(*url, *socket, *id, *serverID, *count, *interval); err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		os.Exit(1)
	}
}

func run(url, socket, id, serverID string, count int, interval time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// A client names the server it accepts: any other SVID of the trust
	// domain (another workload's, an agent's) is refused.
	if serverID == "" {
		return fmt.Errorf("-server-id is required: the SPIFFE ID the server must present (e.g. spiffe://dev.sigil.local/example/http-server)")
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

	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig:   mtls.ClientConfig(src, tlsOpts...),
		ForceAttemptHTTP2: true,
	}}
	failed := false
	for i := 0; i < count; i++ {
		if i > 0 {
			time.Sleep(interval)
		}
		resp, err := client.Get(url)
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Printf("%s %s (server cert serial %s, mine %s): %s\n", resp.Proto, resp.Status,
			resp.TLS.PeerCertificates[0].SerialNumber, mySerial(src), strings.TrimSpace(string(body)))
		failed = failed || resp.StatusCode != http.StatusOK
	}
	if failed {
		os.Exit(1)
	}
	return nil
}

func mySerial(src *mtls.Source) string {
	s, err := src.GetX509SVID()
	if err != nil {
		return "?"
	}
	return s.Certificates[0].SerialNumber.String()
}
