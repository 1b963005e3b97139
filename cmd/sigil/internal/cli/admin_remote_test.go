package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// -admin marks an entry admin on create, update changes it (and only it),
// and show prints it.
func TestEntryAdmin(t *testing.T) {
	f := newFakeAdmin()
	sock := startFakeAdmin(t, f)
	code, out, errOut := run(t, "entry", "create", "-socket", sock, "-spiffe-id", "spiffe://example.org/ops/ci",
		"-parent-id", agentID, "-selector", "unix:uid:1000", "-admin")
	if code != 0 {
		t.Fatalf("create: %d %q", code, errOut)
	}
	if !f.entries["e1"].Admin || !strings.Contains(out, "Admin            : true\n") {
		t.Fatalf("stored %v, output:\n%s", f.entries["e1"], out)
	}
	if code, _, errOut := run(t, "entry", "update", "-socket", sock, "-id", "e1", "-admin=false"); code != 0 || f.entries["e1"].Admin {
		t.Fatalf("update -admin=false: %d %q %v", code, errOut, f.entries["e1"])
	}
	if f.entries["e1"].SpiffeId != "spiffe://example.org/ops/ci" || len(f.entries["e1"].Selectors) != 1 {
		t.Errorf("update changed other fields: %v", f.entries["e1"])
	}
	if code, out, _ := run(t, "entry", "show", "-socket", sock, "-id", "e1"); code != 0 || strings.Contains(out, "Admin ") {
		t.Errorf("show of a plain entry: %d\n%s", code, out)
	}
	if code, _, errOut := run(t, "entry", "create", "-socket", sock, "-data", "x.json", "-admin"); code != 2 || !strings.Contains(errOut, "-data and -admin are mutually exclusive") {
		t.Errorf("-data with -admin: %d %q", code, errOut)
	}
}

// The connection flags that do not fit together are refused before
// anything is dialed.
func TestAdminRemoteFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-server-address", "127.0.0.1:1"}, "-server-address needs an admin SVID: -workload-socket PATH, or -cert, -key and -bundle"},
		{[]string{"-workload-socket", "/x/api.sock"}, "-workload-socket needs -server-address"},
		{[]string{"-cert", "c.pem"}, "-cert needs -server-address"},
		{[]string{"-server-address", "127.0.0.1:1", "-cert", "c.pem"}, "-cert, -key and -bundle go together: -key, -bundle missing"},
		{[]string{"-server-address", "127.0.0.1:1", "-workload-socket", "/x", "-key", "k.pem"}, "-workload-socket and -key are mutually exclusive"},
		{[]string{"-server-address", "127.0.0.1:1", "-socket", "/x/admin.sock", "-workload-socket", "/x"}, "-socket and -server-address are mutually exclusive"},
		{[]string{"-server-address", "localhost", "-workload-socket", "/x"}, `invalid -server-address "localhost": want host:port`},
		{[]string{"-server-address", "127.0.0.1:1", "-workload-socket", filepath.Join(t.TempDir(), "none.sock")}, "does not exist (is `sigil agent` running on this machine?)"},
	} {
		code, _, errOut := run(t, append([]string{"entry", "list"}, tc.args...)...)
		if code == 0 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: %d %q, want an error saying %q", tc.args, code, errOut, tc.want)
		}
	}
}

// remoteFake is the fake admin API on TCP with mutual TLS: it presents an
// SVID of serverID from ca and records the SPIFFE ID of each caller's
// verified client certificate.
type remoteFake struct {
	mu      sync.Mutex
	callers []string
}

func (r *remoteFake) record(p *peer.Peer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.VerifiedChains) > 0 {
		r.callers = append(r.callers, ti.State.VerifiedChains[0][0].URIs[0].String())
	}
}

func startRemoteFake(t *testing.T, f *fakeAdmin, ca *testCA, serverID string) (string, *remoteFake) {
	t.Helper()
	certDER, keyDER := ca.issue(t, serverID)
	key, err := x509.ParsePKCS8PrivateKey(keyDER)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	tc := &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{certDER}, PrivateKey: key}},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rf := &remoteFake{}
	s := grpc.NewServer(grpc.Creds(credentials.NewTLS(tc)), grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if p, ok := peer.FromContext(ctx); ok {
			rf.record(p)
		}
		return h(ctx, req)
	}))
	sigilv1.RegisterAdminServer(s, f)
	go s.Serve(ln) //nolint:errcheck
	t.Cleanup(s.Stop)
	return ln.Addr().String(), rf
}

func writePEM(t *testing.T, path, typ string, ders ...[]byte) {
	t.Helper()
	var b []byte
	for _, d := range ders {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: d})...)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// With -cert, -key and -bundle the admin commands reach a TCP admin
// endpoint with mutual TLS, presenting the SVID of the files, and accept
// only a Sigil server ID of the SVID's trust domain.
func TestAdminRemoteFiles(t *testing.T) {
	ca := newTestCA(t, "example.org")
	dir := t.TempDir()
	cert, key := ca.issue(t, "spiffe://example.org/ops/alice")
	certFile, keyFile, bundleFile := filepath.Join(dir, "svid.pem"), filepath.Join(dir, "svid.key"), filepath.Join(dir, "bundle.pem")
	writePEM(t, certFile, "CERTIFICATE", cert)
	writePEM(t, keyFile, "PRIVATE KEY", key)
	writePEM(t, bundleFile, "CERTIFICATE", ca.cert.Raw)

	f := newFakeAdmin()
	addr, rf := startRemoteFake(t, f, ca, "spiffe://example.org/sigil/server/s1")
	code, out, errOut := run(t, "entry", "create", "-server-address", addr, "-cert", certFile, "-key", keyFile, "-bundle", bundleFile,
		"-spiffe-id", "spiffe://example.org/web", "-parent-id", agentID, "-selector", "unix:uid:1000")
	if code != 0 {
		t.Fatalf("create over TCP: %d %q", code, errOut)
	}
	if f.entries["e1"] == nil || !strings.Contains(out, "spiffe://example.org/web") {
		t.Fatalf("stored %v, output:\n%s", f.entries, out)
	}
	if len(rf.callers) != 1 || rf.callers[0] != "spiffe://example.org/ops/alice" {
		t.Errorf("the server saw callers %v, want the SVID of the files", rf.callers)
	}

	// A server that is not a Sigil server of the trust domain is refused.
	other, _ := startRemoteFake(t, newFakeAdmin(), ca, "spiffe://example.org/web")
	code, _, errOut = run(t, "entry", "list", "-server-address", other, "-cert", certFile, "-key", keyFile, "-bundle", bundleFile)
	if code == 0 || !strings.Contains(errOut, "presented spiffe://example.org/web, not a Sigil server ID of trust domain example.org") {
		t.Errorf("server with a workload ID: %d %q", code, errOut)
	}
	// A bundle that does not hold the server's CA.
	writePEM(t, bundleFile, "CERTIFICATE", newTestCA(t, "example.org").cert.Raw)
	code, _, errOut = run(t, "entry", "list", "-server-address", addr, "-cert", certFile, "-key", keyFile, "-bundle", bundleFile)
	if code == 0 || !strings.Contains(errOut, "cannot reach the server on "+addr) {
		t.Errorf("server outside the bundle: %d %q", code, errOut)
	}
	// A key that is not the certificate's.
	_, otherKey := ca.issue(t, "spiffe://example.org/ops/bob")
	writePEM(t, keyFile, "PRIVATE KEY", otherKey)
	code, _, errOut = run(t, "entry", "list", "-server-address", addr, "-cert", certFile, "-key", keyFile, "-bundle", bundleFile)
	if code == 0 || !strings.Contains(errOut, "admin SVID from -cert") {
		t.Errorf("mismatched key: %d %q", code, errOut)
	}
}

// With -workload-socket the admin SVID and the bundle come from the
// Workload API.
func TestAdminRemoteWorkloadSocket(t *testing.T) {
	ca := newTestCA(t, "example.org")
	cert, key := ca.issue(t, "spiffe://example.org/ops/ci")
	sock := startFakeWorkloadAPI(t, &fakeWorkloadAPI{resp: &workloadpb.X509SVIDResponse{Svids: []*workloadpb.X509SVID{{
		SpiffeId: "spiffe://example.org/ops/ci", X509Svid: cert, X509SvidKey: key, Bundle: ca.cert.Raw,
	}}}})
	f := newFakeAdmin()
	addr, rf := startRemoteFake(t, f, ca, "spiffe://example.org/sigil/server/s1")
	code, _, errOut := run(t, "entry", "create", "-server-address", addr, "-workload-socket", sock,
		"-spiffe-id", "spiffe://example.org/web", "-parent-id", agentID, "-selector", "unix:uid:1000")
	if code != 0 {
		t.Fatalf("create over TCP: %d %q", code, errOut)
	}
	if f.entries["e1"] == nil || len(rf.callers) != 1 || rf.callers[0] != "spiffe://example.org/ops/ci" {
		t.Fatalf("stored %v; the server saw callers %v, want the Workload API's SVID", f.entries, rf.callers)
	}
}
