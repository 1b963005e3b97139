// Command client is the aws.example half of the federation example: it
// calls the gcp.example greeter over mutual TLS with its own SPIFFE
// identity, accepting only the greeter's SPIFFE ID, which verifies against
// the gcp.example bundle that its agent hands it because its entry
// federates with gcp.example. See ../README.md.
package main

import (
	"context"
	"errors"
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
		url      = flag.String("url", "https://127.0.0.1:9443/hello", "URL to call")
		socket   = flag.String("socket", "", "Workload API socket (default $SPIFFE_ENDPOINT_SOCKET, then your own agent's under $XDG_RUNTIME_DIR/sigil, then "+mtls.DefaultSocket+")")
		serverID = flag.String("server-id", "", "SPIFFE ID the server must present (required, e.g. spiffe://gcp.example/example/greeter)")
		count    = flag.Int("n", 1, "number of requests")
		interval = flag.Duration("interval", time.Second, "pause between requests")
	)
	flag.Parse()
	if err := run(*url, *socket, *serverID, *count, *interval); err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		os.Exit(1)
	}
}

func run(url, socket, serverID string, count int, interval time.Duration) error {
	if serverID == "" {
		return fmt.Errorf("-server-id is required: the SPIFFE ID the server must present (e.g. spiffe://gcp.example/example/greeter)")
	}
	sid, err := spiffeid.FromString(serverID)
	if err != nil {
		return fmt.Errorf("-server-id: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var opts []mtls.SourceOption
	if socket != "" {
		opts = append(opts, mtls.WithSocket(socket))
	}
	src, err := newSource(ctx, opts...)
	if err != nil {
		return err
	}
	defer src.Close()
	if _, err := src.GetX509BundleForTrustDomain(sid.TrustDomain()); err != nil {
		return fmt.Errorf("no bundle of %s from the agent: the entry of %s must federate with it (sigil entry create … -federates-with %s) and the servers must federate (sigil federation create): %w",
			sid.TrustDomain().Name(), src.ID(), sid.TrustDomain().Name(), err)
	}
	fmt.Printf("I am %s; calling %s\n", src.ID(), sid)

	// Each request on a new connection: a full mTLS handshake each time.
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig:   mtls.ClientConfig(src, mtls.WithServerID(sid)),
		DisableKeepAlives: true,
	}}
	for i := 0; i < count; i++ {
		if i > 0 {
			time.Sleep(interval)
		}
		resp, err := client.Get(url)
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		fmt.Printf("%s: %s\n", resp.Status, strings.TrimSpace(string(body)))
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("the greeter answered %s", resp.Status)
		}
	}
	return nil
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
