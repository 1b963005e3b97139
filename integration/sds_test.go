package integration

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/sigil-id/sigil/internal/eventually"
)

// TestEnvoySDS: a real `sigil agent` process configured with sds_socket
// serves go-control-plane's SDS client there: nothing to a caller without
// an entry, then its SVID and the trust bundle (ROOTCA and by trust
// domain ID) once the entry exists, and the new bundle pushed on the open
// stream when a server prepares a new CA.
func TestEnvoySDS(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	root := t.TempDir()
	s := newServer(t, filepath.Join(root, "server"))
	s.start()
	a := newAgent(t, s, filepath.Join(root, "agent"))
	sdsSock := filepath.Join(root, "agent", "sds", "sds.sock")
	cfg, err := os.ReadFile(a.config)
	if err != nil {
		t.Fatal(err)
	}
	cfg = []byte(strings.TrimSuffix(string(cfg), "}\n") + "  sds_socket = \"" + sdsSock + "\"\n}\n")
	if err := os.WriteFile(a.config, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	a.start()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cc, err := grpc.NewClient("unix://"+sdsSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := secretv3.NewSecretDiscoveryServiceClient(cc)
	names := []string{"default", "ROOTCA", "spiffe://" + trustDomain}

	_, err = client.FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{ResourceNames: names})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("before any entry: %v, want PermissionDenied", err)
	}

	want := "spiffe://" + trustDomain + "/it/envoy"
	createEntry(t, s, want, a.id, uidSelector(t))
	eventually.NoError(t, 30*time.Second, func() error {
		_, err := client.FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{ResourceNames: names})
		return err
	})

	stream, err := client.StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{ResourceNames: names}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*tlsv3.Secret{}
	for _, r := range resp.Resources {
		var sec tlsv3.Secret
		if err := r.UnmarshalTo(&sec); err != nil {
			t.Fatal(err)
		}
		got[sec.Name] = &sec
	}
	if len(got) != 3 {
		t.Fatalf("%d secrets, want default, ROOTCA and the trust domain's bundle", len(got))
	}
	td := spiffeid.RequireTrustDomainFromString(trustDomain)
	bundle := x509bundle.FromX509Authorities(td, pemCertsOf(t, got["ROOTCA"].GetValidationContext().GetTrustedCa().GetInlineBytes()))
	if !bundle.Equal(x509bundle.FromX509Authorities(td, pemCertsOf(t, got["spiffe://"+trustDomain].GetValidationContext().GetTrustedCa().GetInlineBytes()))) {
		t.Fatal("ROOTCA and the trust domain's bundle differ")
	}
	tc := got["default"].GetTlsCertificate()
	svid, err := x509svid.Parse(tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes())
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID.String() != want {
		t.Fatalf("default SVID is %s, want %s", svid.ID, want)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, bundle); err != nil {
		t.Fatalf("SVID does not verify against ROOTCA: %v", err)
	}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce, ResourceNames: names}); err != nil {
		t.Fatal(err)
	}

	// A new CA prepared on the server reaches the open stream.
	s.cli("authority", "prepare")
	before := len(bundle.X509Authorities())
	for {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("waiting for the new bundle: %v", err)
		}
		for _, r := range resp.Resources {
			var sec tlsv3.Secret
			if err := r.UnmarshalTo(&sec); err != nil {
				t.Fatal(err)
			}
			if sec.Name == "ROOTCA" && len(pemCertsOf(t, sec.GetValidationContext().GetTrustedCa().GetInlineBytes())) > before {
				return
			}
		}
		if err := stream.Send(&discoveryv3.DiscoveryRequest{VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce, ResourceNames: names}); err != nil {
			t.Fatal(err)
		}
	}
}
