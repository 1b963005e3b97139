package cli

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-id/sigil/internal/atomicfile"
	"github.com/sigil-id/sigil/internal/trustbundle"
	"github.com/sigil-id/sigil/internal/unixsock"
)

// DefaultWorkloadSocket is where the client commands look for the Workload
// API unless told otherwise: the current user's own agent's socket under
// $XDG_RUNTIME_DIR/sigil if there is one, else /run/sigil/agent/public/api.sock.
var DefaultWorkloadSocket = unixsock.ClientSocket(unixsock.WorkloadSocketName)

// workloadAddr turns a -socket value into a Workload API address: a plain
// path becomes unix://<absolute path>; unix:/tcp: addresses pass through.
func workloadAddr(s string) (addr, path string, err error) {
	if strings.HasPrefix(s, "unix:") || strings.HasPrefix(s, "tcp:") {
		if p, ok := strings.CutPrefix(s, "unix://"); ok {
			return s, p, nil
		}
		if p, ok := strings.CutPrefix(s, "unix:"); ok {
			return s, p, nil
		}
		return s, "", nil
	}
	abs, err := filepath.Abs(s)
	if err != nil {
		return "", "", err
	}
	return "unix://" + abs, abs, nil
}

// NewSVIDCommand returns `sigil svid`.
func NewSVIDCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "svid",
		Short: "Fetch this process's SVIDs from the Workload API",
	}
	def := DefaultWorkloadSocket
	if env := os.Getenv("SPIFFE_ENDPOINT_SOCKET"); env != "" {
		def = env
	}
	var (
		socket   string
		dir      string
		timeout  time.Duration
		jwt      bool
		audience []string
		spiffeID string
		output   string
	)
	fetch := &cobra.Command{
		Use:   "fetch",
		Short: "Fetch the X.509-SVIDs and trust bundles (or, with -jwt, JWT-SVIDs) of the calling process",
		Example: `  sigil svid fetch -socket /run/sigil/agent/public/api.sock
  sigil svid fetch -write /tmp/svid && openssl verify -CAfile /tmp/svid/bundle.pem /tmp/svid/svid.pem
  sigil svid fetch -jwt -audience spiffe://example.org/db`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if socket == "" {
				return usageError(errors.New("-socket is empty"))
			}
			addr, path, err := workloadAddr(socket)
			if err != nil {
				return usagef("invalid -socket %q: %v", socket, err)
			}
			if path != "" {
				if _, err := os.Stat(path); err != nil {
					if errors.Is(err, os.ErrNotExist) {
						return fmt.Errorf("Workload API socket %s does not exist (is `sigil agent` running? set -socket or SPIFFE_ENDPOINT_SOCKET)", path)
					}
					return fmt.Errorf("Workload API socket %s: %v", path, err)
				}
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			if jwt {
				if len(audience) == 0 {
					return usageError(errors.New("-jwt needs at least one -audience"))
				}
				if dir != "" {
					return usageError(errors.New("-write is for X.509-SVIDs; it cannot be combined with -jwt"))
				}
				return fetchJWT(ctx, cmd.OutOrStdout(), addr, audience, spiffeID, timeout, output == "json")
			}
			if len(audience) > 0 || spiffeID != "" {
				return usageError(errors.New("-audience and -spiffe-id go with -jwt"))
			}
			x509ctx, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr(addr))
			if err != nil {
				return fetchError(err, addr, timeout)
			}
			if len(x509ctx.SVIDs) == 0 {
				return errors.New("the Workload API returned no X.509-SVIDs")
			}
			if output == "json" {
				return printSVIDJSON(cmd.OutOrStdout(), x509ctx, dir)
			}
			now := time.Now()
			out := cmd.OutOrStdout()
			for i, s := range x509ctx.SVIDs {
				if i > 0 {
					fmt.Fprintln(out)
				}
				printSVID(out, s, now)
			}
			if x509ctx.Bundles != nil {
				fmt.Fprintln(out)
				for _, b := range x509ctx.Bundles.Bundles() {
					n := len(b.X509Authorities())
					fmt.Fprintf(out, "Trust bundle     : %s (%d %s)\n", b.TrustDomain(), n, plural(n, "CA certificate", "CA certificates"))
				}
			}
			if dir == "" {
				return nil
			}
			svid := x509ctx.DefaultSVID()
			var bundle []*x509.Certificate
			if x509ctx.Bundles != nil {
				if b, ok := x509ctx.Bundles.Get(svid.ID.TrustDomain()); ok {
					bundle = b.X509Authorities()
				}
			}
			if err := WriteSVID(dir, svid, bundle); err != nil {
				return err
			}
			fmt.Fprintf(out, "\nWrote %s, %s and %s for %s\n",
				filepath.Join(dir, "svid.pem"), filepath.Join(dir, "svid.key"), filepath.Join(dir, "bundle.pem"), svid.ID)
			return nil
		},
	}
	fetch.Flags().StringVar(&socket, "socket", def, "Workload API socket path or address (default from SPIFFE_ENDPOINT_SOCKET)")
	fetch.Flags().StringVar(&dir, "write", "", "directory to write svid.pem (chain), svid.key (PKCS#8) and bundle.pem into")
	fetch.Flags().DurationVar(&timeout, "timeout", 10*time.Second, "how long to wait for the SVIDs")
	fetch.Flags().BoolVar(&jwt, "jwt", false, "fetch JWT-SVIDs instead of X.509-SVIDs")
	fetch.Flags().StringArrayVar(&audience, "audience", nil, "audience of the JWT-SVID (repeatable; with -jwt)")
	fetch.Flags().StringVar(&spiffeID, "spiffe-id", "", "fetch only the JWT-SVID of this SPIFFE ID (with -jwt)")
	fetch.Flags().StringVar(&output, "output", "text", "output format: text or json (the private key is never printed)")
	cmd.AddCommand(fetch, newSVIDWatchCommand(def))
	return cmd
}

func fetchError(err error, addr string, timeout time.Duration) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("no SVID from %s within %s (is this process registered? check `sigil entry list`)", addr, timeout)
	}
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("fetch X.509-SVID from %s: %v", addr, err)
	}
	switch st.Code() {
	case codes.PermissionDenied:
		return fmt.Errorf("no identity issued to this process by %s (%s); register it with `sigil entry create`", addr, st.Message())
	case codes.DeadlineExceeded:
		return fmt.Errorf("no SVID from %s within %s (is this process registered? check `sigil entry list`)", addr, timeout)
	case codes.Unavailable:
		return fmt.Errorf("cannot reach the Workload API at %s: %s", addr, st.Message())
	}
	return fmt.Errorf("fetch X.509-SVID from %s: %s", addr, statusText(st.Code(), st.Message()))
}

func printSVID(w io.Writer, s *x509svid.SVID, now time.Time) {
	leaf := s.Certificates[0]
	fmt.Fprintf(w, "SPIFFE ID        : %s\n", s.ID)
	if s.Hint != "" {
		fmt.Fprintf(w, "Hint             : %s\n", s.Hint)
	}
	fmt.Fprintf(w, "Serial           : %s\n", leaf.SerialNumber.Text(16))
	fmt.Fprintf(w, "Valid from       : %s\n", leaf.NotBefore.UTC().Format(time.RFC3339))
	left := leaf.NotAfter.Sub(now).Round(time.Second)
	state := "expires in " + left.String()
	if left <= 0 {
		state = "EXPIRED"
	}
	fmt.Fprintf(w, "Valid until      : %s (%s)\n", leaf.NotAfter.UTC().Format(time.RFC3339), state)
	for _, d := range leaf.DNSNames {
		fmt.Fprintf(w, "DNS name         : %s\n", d)
	}
	for i, c := range s.Certificates {
		fmt.Fprintf(w, "Chain [%d]        : subject=%q issuer=%q not_after=%s\n",
			i, subjectOf(c), c.Issuer.String(), c.NotAfter.UTC().Format(time.RFC3339))
	}
}

func subjectOf(c *x509.Certificate) string {
	if s := c.Subject.String(); s != "" {
		return s
	}
	if len(c.URIs) > 0 {
		return c.URIs[0].String()
	}
	return ""
}

// WriteSVID writes svid.pem (leaf first, then intermediates), svid.key
// (PKCS#8, mode 0600) and bundle.pem into dir, creating it if needed.
// Each file is replaced atomically.
func WriteSVID(dir string, s *x509svid.SVID, bundle []*x509.Certificate) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("-write: %w", err)
	}
	chain := trustbundle.EncodePEM(s.Certificates)
	der, err := x509.MarshalPKCS8PrivateKey(s.PrivateKey)
	if err != nil {
		return fmt.Errorf("encode private key: %w", err)
	}
	key := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	bundlePEM := trustbundle.EncodePEM(bundle)
	if len(bundlePEM) == 0 {
		return fmt.Errorf("the Workload API returned no trust bundle for %s", s.ID.TrustDomain())
	}
	// The key goes first so that a failure never leaves a new certificate
	// next to an old key.
	if err := atomicfile.WriteFile(filepath.Join(dir, "svid.key"), key, 0o600); err != nil {
		return err
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, "svid.pem"), chain, 0o644); err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(dir, "bundle.pem"), bundlePEM, 0o644)
}
