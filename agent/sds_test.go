package agent

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/attestor/node/jointoken"
	"github.com/sigil-id/sigil/attestor/workload"
	"github.com/sigil-id/sigil/attestor/workload/unix"
	"github.com/sigil-id/sigil/ca/keymanager/memory"
	"github.com/sigil-id/sigil/internal/eventually"
	"github.com/sigil-id/sigil/server"
)

// realServer is a single in-process sigil server with its admin APIs.
type realServer struct {
	srv   *server.Server
	admin sigilv1.AdminClient
	auth  sigilv1.AuthorityAdminClient
}

// startRealServer runs a real server (Raft, CA, node API on loopback)
// that attests agents with join tokens.
func startRealServer(t *testing.T) *realServer {
	t.Helper()
	dir, err := os.MkdirTemp("", "sgsds")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := server.DefaultConfig()
	cfg.TrustDomain = testTD
	cfg.NodeName = "s1"
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.BindAddress = "127.0.0.1:0"
	cfg.AdminSocket = filepath.Join(dir, "admin", "admin.sock")
	cfg.Logger = zaptest.NewLogger(t).Named("server")
	cfg.NodeVerifiers = []node.Verifier{jointoken.NewServerVerifier()}
	cfg.KeyStore = memory.NewStore()
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Error("server did not stop")
		}
	})
	select {
	case <-srv.Ready():
	case err := <-done:
		t.Fatalf("server: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("server not ready")
	}
	conn, err := grpc.NewClient("unix://"+cfg.AdminSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &realServer{srv: srv, admin: sigilv1.NewAdminClient(conn), auth: sigilv1.NewAuthorityAdminClient(conn)}
}

// agentConfig is an agent attesting to rs with a fresh join token, and the
// agent's SPIFFE ID.
func (rs *realServer) agentConfig(t *testing.T, ctx context.Context) (Config, string) {
	t.Helper()
	tok, err := rs.admin.CreateJoinToken(ctx, &sigilv1.CreateJoinTokenRequest{})
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "sgsdsa")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := DefaultConfig()
	cfg.TrustDomain = testTD
	cfg.ServerAddress = rs.srv.NodeAddr().String()
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.SocketPath = filepath.Join(dir, "public", "api.sock")
	cfg.NodeAttestor = jointoken.NewAttestor(tok.Token)
	cfg.WorkloadAttestors = []workload.Attestor{unix.New()}
	cfg.TrustBundle = rs.srv.Bundle()
	cfg.Logger = zaptest.NewLogger(t).Named("agent")
	return cfg, tok.AgentId
}

func sdsClientAt(t *testing.T, sock string) secretv3.SecretDiscoveryServiceClient {
	t.Helper()
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return secretv3.NewSecretDiscoveryServiceClient(cc)
}

func secretsByName(t *testing.T, rs []*anypb.Any) map[string]*tlsv3.Secret {
	t.Helper()
	out := make(map[string]*tlsv3.Secret, len(rs))
	for _, a := range rs {
		var s tlsv3.Secret
		if err := a.UnmarshalTo(&s); err != nil {
			t.Fatal(err)
		}
		out[s.Name] = &s
	}
	return out
}

func parsePEMChain(t *testing.T, b []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		if blk, b = pem.Decode(b); blk == nil {
			return out
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}

// svidSecret returns the certificate chain of an SDS tls_certificate,
// after checking that it is a valid SVID of wantID under bundle and that
// its key matches.
func svidSecret(t *testing.T, s *tlsv3.Secret, wantID string, bundle *x509bundle.Bundle) []*x509.Certificate {
	t.Helper()
	tc := s.GetTlsCertificate()
	svid, err := x509svid.Parse(tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes())
	if err != nil {
		t.Fatalf("secret %q: %v", s.Name, err)
	}
	if svid.ID.String() != wantID {
		t.Fatalf("secret %q holds %s, want %s", s.Name, svid.ID, wantID)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, bundle); err != nil {
		t.Fatalf("secret %q does not verify against the bundle: %v", s.Name, err)
	}
	return svid.Certificates
}

// bundleSecret returns the trust bundle of an SDS validation context.
func bundleSecret(t *testing.T, s *tlsv3.Secret) *x509bundle.Bundle {
	t.Helper()
	vc := s.GetValidationContext()
	if vc == nil {
		t.Fatalf("secret %q is not a validation context", s.Name)
	}
	return x509bundle.FromX509Authorities(testTD, parsePEMChain(t, vc.GetTrustedCa().GetInlineBytes()))
}

// TestAgentServesSDS: go-control-plane's SDS client against a real agent
// of a real server. A caller with no entry gets "no identity issued";
// once its entry exists it gets its SVID and the trust bundle on both
// streaming variants, and not the SVID of an entry it does not match.
// A CA rotation (prepare, activate, taint the old key) pushes the new
// bundle and then a new certificate, signed by the new CA, on the open
// streams. A rejected response (NACK) is counted and the stream goes on.
func TestAgentServesSDS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	rs := startRealServer(t)
	cfg, agentID := rs.agentConfig(t, ctx)
	r := startAgent(t, cfg)
	c := sdsClientAt(t, cfg.SocketPath)
	envoyID, otherID := "spiffe://example.org/envoy", "spiffe://example.org/other"
	names := []string{envoyID, "ROOTCA", otherID}

	// No entry yet: the caller is not attested to anything.
	stream, err := c.StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{ResourceNames: names}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.PermissionDenied || status.Convert(err).Message() != "no identity issued" {
		t.Fatalf("caller without entry: %v, want PermissionDenied no identity issued", err)
	}

	uid := "uid:" + strconv.Itoa(os.Geteuid())
	created, err := rs.admin.BatchCreateEntry(ctx, &sigilv1.BatchCreateEntryRequest{Entries: []*sigilv1.Entry{
		{SpiffeId: envoyID, ParentId: agentID, Selectors: []*sigilv1.Selector{{Type: "unix", Value: uid}}},
		{SpiffeId: otherID, ParentId: agentID, Selectors: []*sigilv1.Selector{{Type: "unix", Value: "uid:424242"}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, res := range created.Results {
		if res.Status.GetCode() != 0 {
			t.Fatalf("create entry: %s", res.Status.GetMessage())
		}
	}
	eventually.NoError(t, 30*time.Second, func() error {
		_, err := c.FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{ResourceNames: []string{"default"}})
		return err
	})

	stream, err = c.StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{ResourceNames: names, TypeUrl: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	got := secretsByName(t, resp.Resources)
	if len(got) != 2 || got[otherID] != nil {
		t.Fatalf("got %d secrets (other's: %v), want the SVID and ROOTCA only", len(got), got[otherID] != nil)
	}
	bundle := bundleSecret(t, got["ROOTCA"])
	if !bundle.Equal(x509bundle.FromX509Authorities(testTD, rs.srv.Bundle())) {
		t.Fatal("ROOTCA is not the server's bundle")
	}
	firstCert := svidSecret(t, got[envoyID], envoyID, bundle)[0]

	delta, err := c.DeltaSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := delta.Send(&discoveryv3.DeltaDiscoveryRequest{ResourceNamesSubscribe: []string{envoyID, "example.org", otherID}}); err != nil {
		t.Fatal(err)
	}
	dresp, err := delta.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(dresp.Resources) != 2 {
		t.Fatalf("delta: %d resources, want the SVID and example.org's bundle", len(dresp.Resources))
	}
	for _, res := range dresp.Resources {
		if res.Name == otherID {
			t.Fatal("delta: another entry's SVID was sent")
		}
	}

	// NACK the first response: counted, and the stream carries on.
	nack := &discoveryv3.DiscoveryRequest{ResponseNonce: resp.Nonce, ResourceNames: names,
		ErrorDetail: status.New(codes.InvalidArgument, "test rejects it").Proto()}
	if err := stream.Send(nack); err != nil {
		t.Fatal(err)
	}
	eventually.NoError(t, 10*time.Second, func() error {
		rec := httptest.NewRecorder()
		r.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		if !strings.Contains(rec.Body.String(), "sigil_agent_sds_rejected_total 1\n") {
			return errors.New("sigil_agent_sds_rejected_total is not 1")
		}
		return nil
	})

	// Rotate the CA: the new key comes into the bundle first, then signs
	// the SVID once the old key is tainted.
	prep, err := rs.auth.PrepareAuthority(ctx, &sigilv1.AuthorityRequest{Kind: "x509"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rs.auth.ActivateAuthority(ctx, &sigilv1.AuthorityRequest{Kind: "x509", Id: prep.Slot.Id}); err != nil {
		t.Fatal(err)
	}
	shown, err := rs.auth.ShowAuthorities(ctx, &sigilv1.ShowAuthoritiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var oldID string
	for _, s := range shown.Slots {
		if s.Kind == "x509" && s.State == "retired" {
			oldID = s.Id
		}
	}
	if oldID == "" {
		t.Fatalf("no retired CA after the activation: %v", shown.Slots)
	}
	if _, err := rs.auth.TaintAuthority(ctx, &sigilv1.AuthorityRequest{Kind: "x509", Id: oldID}); err != nil {
		t.Fatal(err)
	}
	newCA := caWithID(t, rs.srv.Bundle(), prep.Slot.Id)

	// SotW: responses arrive (each ACKed) until one holds a certificate
	// signed by the new CA, with the new CA in ROOTCA.
	for {
		resp, err = stream.Recv()
		if err != nil {
			t.Fatalf("waiting for the rotated SVID: %v", err)
		}
		if err := stream.Send(&discoveryv3.DiscoveryRequest{VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce, ResourceNames: names}); err != nil {
			t.Fatal(err)
		}
		got = secretsByName(t, resp.Resources)
		bundle = bundleSecret(t, got["ROOTCA"])
		if !bundle.HasX509Authority(newCA) {
			continue
		}
		cert := svidSecret(t, got[envoyID], envoyID, bundle)[0]
		if bytes.Equal(cert.AuthorityKeyId, newCA.SubjectKeyId) {
			if cert.Equal(firstCert) {
				t.Fatal("the same certificate after the rotation")
			}
			break
		}
	}
	// Delta: the rotated SVID arrives too.
	for {
		dresp, err = delta.Recv()
		if err != nil {
			t.Fatalf("delta: waiting for the rotated SVID: %v", err)
		}
		if err := delta.Send(&discoveryv3.DeltaDiscoveryRequest{ResponseNonce: dresp.Nonce}); err != nil {
			t.Fatal(err)
		}
		for _, res := range dresp.Resources {
			var s tlsv3.Secret
			if err := res.Resource.UnmarshalTo(&s); err != nil {
				t.Fatal(err)
			}
			if res.Name == envoyID && bytes.Equal(svidSecret(t, &s, envoyID, x509bundle.FromX509Authorities(testTD, rs.srv.Bundle()))[0].AuthorityKeyId, newCA.SubjectKeyId) {
				r.stop(t)
				return
			}
		}
	}
}

// caWithID is the CA certificate among bundle whose SubjectKeyId is the
// hex id.
func caWithID(t *testing.T, bundle []*x509.Certificate, id string) *x509.Certificate {
	t.Helper()
	for _, c := range bundle {
		if fmt.Sprintf("%x", c.SubjectKeyId) == id {
			return c
		}
	}
	t.Fatalf("no CA %s in the bundle", id)
	return nil
}

// TestAgentSDSSocket: with SDSSocket set, SDS is served there, with the
// same attestation, and not on the Workload API socket; a configuration
// naming one socket for both is refused.
func TestAgentSDSSocket(t *testing.T) {
	srv := newFakeServer(t)
	srv.upsert(entry("me", "me", 1, "uid:"+strconv.Itoa(os.Getuid())))
	cfg := srv.config(t, t.TempDir())
	dir, err := os.MkdirTemp("", "sgsds")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg.SDSSocket = filepath.Join(dir, "sds", "sds.sock")
	r := startAgent(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := sdsClientAt(t, cfg.SDSSocket).FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{ResourceNames: []string{"default"}})
	if err != nil {
		t.Fatal(err)
	}
	got := secretsByName(t, resp.Resources)
	svidSecret(t, got["default"], "spiffe://example.org/me", x509bundle.FromX509Authorities(testTD, []*x509.Certificate{srv.ca.cert}))
	if _, err := sdsClientAt(t, cfg.SocketPath).FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("SDS on the Workload API socket: %v, want Unimplemented", err)
	}
	r.stop(t)
	if _, err := os.Stat(cfg.SDSSocket); !os.IsNotExist(err) {
		t.Fatalf("SDS socket left behind: %v", err)
	}

	bad := cfg
	bad.SDSSocket = bad.SocketPath
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "SDS socket") {
		t.Fatalf("Validate with the SDS socket on the Workload API socket: %v", err)
	}
}
