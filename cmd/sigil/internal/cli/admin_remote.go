package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/registration"
)

// svidWait bounds the wait for the first SVID from the Workload API.
const svidWait = 30 * time.Second

// RemoteAdmin says how to reach a server's admin API on its TCP listener
// (server config admin_address) with an admin X.509-SVID: from a
// Workload API socket (WorkloadSocket), or from PEM files (CertFile with
// the SVID and its chain, KeyFile with its private key, BundleFile with
// the trust domain's bundle). The server must present a Sigil server SVID
// of the SVID's trust domain.
type RemoteAdmin struct {
	Address        string
	WorkloadSocket string
	CertFile       string
	KeyFile        string
	BundleFile     string
}

// addRemoteFlags registers the flags of a remote admin endpoint.
func (o *adminOpts) addRemoteFlags(cmd *cobra.Command) {
	fs := cmd.Flags()
	fs.StringVar(&o.remote.Address, "server-address", "", "host:port of a server's TCP admin API (its admin_address), instead of -socket; needs an admin SVID from -workload-socket or -cert, -key and -bundle")
	fs.StringVar(&o.remote.WorkloadSocket, "workload-socket", "", "with -server-address: Workload API socket to get the admin X.509-SVID from")
	fs.StringVar(&o.remote.CertFile, "cert", "", "with -server-address: PEM file of the admin X.509-SVID (and its intermediates)")
	fs.StringVar(&o.remote.KeyFile, "key", "", "with -server-address: PEM file of the admin X.509-SVID's private key")
	fs.StringVar(&o.remote.BundleFile, "bundle", "", "with -server-address: PEM file of the trust domain's bundle, to verify the server")
}

// remoteFlags checks the connection flags: it reports whether they ask
// for a remote endpoint, or why they do not fit together.
func (o *adminOpts) remoteFlags() (bool, error) {
	r := o.remote
	files := map[string]string{"cert": r.CertFile, "key": r.KeyFile, "bundle": r.BundleFile}
	var given, missing []string
	for _, n := range []string{"cert", "key", "bundle"} {
		if files[n] != "" {
			given = append(given, "-"+n)
		} else {
			missing = append(missing, "-"+n)
		}
	}
	if r.Address == "" {
		switch {
		case r.WorkloadSocket != "":
			return false, errors.New("-workload-socket needs -server-address (the unix -socket needs no SVID)")
		case len(given) > 0:
			return false, fmt.Errorf("%s needs -server-address (the unix -socket needs no SVID)", strings.Join(given, ", "))
		}
		return false, nil
	}
	if o.cmd != nil && o.cmd.Flags().Changed("socket") {
		return false, errors.New("-socket and -server-address are mutually exclusive")
	}
	switch {
	case r.WorkloadSocket != "" && len(given) > 0:
		return false, fmt.Errorf("-workload-socket and %s are mutually exclusive: the admin SVID comes from one of them", strings.Join(given, ", "))
	case r.WorkloadSocket == "" && len(given) == 0:
		return false, errors.New("-server-address needs an admin SVID: -workload-socket PATH, or -cert, -key and -bundle")
	case r.WorkloadSocket == "" && len(missing) > 0:
		return false, fmt.Errorf("-cert, -key and -bundle go together: %s missing", strings.Join(missing, ", "))
	}
	if _, _, err := net.SplitHostPort(r.Address); err != nil {
		return false, fmt.Errorf("invalid -server-address %q: want host:port", r.Address)
	}
	return true, nil
}

// DialAdminRemote connects to the admin API on a server's TCP admin
// listener with mutual TLS (see RemoteAdmin). It fails at once when the
// SVID cannot be had; the server's refusal of the SVID comes with the
// first call.
func DialAdminRemote(ctx context.Context, r RemoteAdmin) (*AdminConn, error) {
	var (
		svids   x509svid.Source
		bundles x509bundle.Source
		td      spiffeid.TrustDomain
		closer  func() error
	)
	if r.WorkloadSocket != "" {
		src, err := workloadSource(ctx, r.WorkloadSocket)
		if err != nil {
			return nil, err
		}
		svid, err := src.GetX509SVID()
		if err != nil {
			src.Close()
			return nil, fmt.Errorf("admin SVID from the Workload API at %s: %v", r.WorkloadSocket, err)
		}
		svids, bundles, td, closer = src, src, svid.ID.TrustDomain(), src.Close
	} else {
		svid, err := x509svid.Load(r.CertFile, r.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("admin SVID from -cert %s and -key %s: %v", r.CertFile, r.KeyFile, err)
		}
		if exp := svid.Certificates[0].NotAfter; time.Now().After(exp) {
			return nil, fmt.Errorf("admin SVID %s in -cert %s expired at %s", svid.ID, r.CertFile, exp.UTC().Format(time.RFC3339))
		}
		td = svid.ID.TrustDomain()
		b, err := x509bundle.Load(td, r.BundleFile)
		if err != nil {
			return nil, fmt.Errorf("-bundle %s: %v", r.BundleFile, err)
		}
		if len(b.X509Authorities()) == 0 {
			return nil, fmt.Errorf("-bundle %s holds no certificate", r.BundleFile)
		}
		svids, bundles = svid, b
	}
	authorize := tlsconfig.AdaptMatcher(func(id spiffeid.ID) error {
		if id.TrustDomain() != td || !registration.IsServerID(id) {
			return fmt.Errorf("the server at %s presented %s, not a Sigil server ID of trust domain %s", r.Address, id, td)
		}
		return nil
	})
	tc := tlsconfig.MTLSClientConfig(svids, bundles, authorize)
	conn, err := grpc.NewClient(r.Address, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		if closer != nil {
			_ = closer()
		}
		return nil, fmt.Errorf("admin API at %s: %w", r.Address, err)
	}
	return &AdminConn{AdminClient: sigilv1.NewAdminClient(conn), socket: r.Address, conn: conn, closeSource: closer}, nil
}

// workloadSource opens the Workload API at path and waits (svidWait at
// most) for its first X.509-SVID.
func workloadSource(ctx context.Context, path string) (*workloadapi.X509Source, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("-workload-socket %s: %w", path, err)
	}
	if _, err := os.Stat(abs); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("the Workload API socket %s does not exist (is `sigil agent` running on this machine?)", abs)
	} else if err != nil {
		return nil, fmt.Errorf("the Workload API socket %s: %w", abs, err)
	}
	ctx, cancel := context.WithTimeout(ctx, svidWait)
	defer cancel()
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+abs)))
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("no X.509-SVID from the Workload API at %s within %s (is an entry registered for this process?)", abs, svidWait)
		}
		return nil, fmt.Errorf("the Workload API at %s: %w", abs, err)
	}
	return src, nil
}
