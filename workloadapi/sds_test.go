package workloadapi

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	grpcstatus "google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/sigil-id/sigil/attestor/workload"
	unixattestor "github.com/sigil-id/sigil/attestor/workload/unix"
	"github.com/sigil-id/sigil/internal/eventually"
)

var partnerTD = spiffeid.RequireTrustDomainFromString("partner.test")

// sdsClient is go-control-plane's SDS client on the unix socket at addr
// ("unix://..."), as Envoy would connect: no Workload API header.
func sdsClient(t testing.TB, addr string) secretv3.SecretDiscoveryServiceClient {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return secretv3.NewSecretDiscoveryServiceClient(cc)
}

// decodeSecrets decodes the resources of a response by name.
func decodeSecrets(t testing.TB, rs []*anypb.Any) map[string]*tlsv3.Secret {
	t.Helper()
	out := make(map[string]*tlsv3.Secret, len(rs))
	for _, a := range rs {
		if a.TypeUrl != secretTypeURL {
			t.Fatalf("resource of type %s", a.TypeUrl)
		}
		var s tlsv3.Secret
		if err := a.UnmarshalTo(&s); err != nil {
			t.Fatal(err)
		}
		if _, dup := out[s.Name]; dup {
			t.Fatalf("secret %q sent twice", s.Name)
		}
		out[s.Name] = &s
	}
	return out
}

func secretNames(m map[string]*tlsv3.Secret) []string {
	return slices.Sorted(func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	})
}

// checkTLSSecret checks that s holds want's chain and a key matching it.
func checkTLSSecret(t testing.TB, s *tlsv3.Secret, want X509Identity) {
	t.Helper()
	tc := s.GetTlsCertificate()
	if tc == nil {
		t.Fatalf("secret %q is not a tls_certificate", s.Name)
	}
	pair, err := tls.X509KeyPair(tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes())
	if err != nil {
		t.Fatalf("secret %q: %v", s.Name, err)
	}
	if len(pair.Certificate) != len(want.Chain) || !slices.Equal(pair.Certificate[0], want.Chain[0].Raw) {
		t.Fatalf("secret %q: chain is not %s's", s.Name, want.SPIFFEID)
	}
	if !pair.PrivateKey.(*ecdsa.PrivateKey).Public().(*ecdsa.PublicKey).Equal(want.Chain[0].PublicKey) {
		t.Fatalf("secret %q: key does not match its certificate", s.Name)
	}
}

// pemPool parses PEM certificates.
func pemCertsOf(t testing.TB, b []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

// checkBundleSecret checks that s is a validation context holding exactly
// the authorities of b.
func checkBundleSecret(t testing.TB, s *tlsv3.Secret, b *x509bundle.Bundle) {
	t.Helper()
	vc := s.GetValidationContext()
	if vc == nil {
		t.Fatalf("secret %q is not a validation_context", s.Name)
	}
	got := x509bundle.FromX509Authorities(b.TrustDomain(), pemCertsOf(t, vc.GetTrustedCa().GetInlineBytes()))
	if !got.Equal(b) {
		t.Fatalf("secret %q: bundle differs from %s's", s.Name, b.TrustDomain())
	}
}

func ack(resp *discoveryv3.DiscoveryResponse, names ...string) *discoveryv3.DiscoveryRequest {
	return &discoveryv3.DiscoveryRequest{VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce, ResourceNames: names, TypeUrl: secretTypeURL}
}

// startSDS is start with the agent's Prometheus meter, to count what SDS
// refuses.
func startSDS(t *testing.T) (*fixture, *PrometheusMeter) {
	m, _ := newTestPrometheusMeter(t)
	return start(t, func(s *Server) { s.meter = m }), m
}

// TestSDSStreamSecrets: over the state-of-the-world stream, with no
// Workload API header, the caller gets its SVID by SPIFFE ID and as
// "default", its trust domain's bundle as ROOTCA and by trust domain
// name and ID; a name it is not entitled to and a malformed one are left
// out and counted. An ACK is answered by nothing; a rotation and a CA
// change are pushed on the open stream; a NACK is counted and not
// answered.
func TestSDSStreamSecrets(t *testing.T) {
	f, m := startSDS(t)
	me := f.ca.identity(t, "e1", "/envoy")
	f.cache.SetIdentity(uidSelector(os.Geteuid()), me)
	f.cache.SetIdentity(uidSelector(424242), f.ca.identity(t, "e2", "/someone-else"))
	ctx := testCtx(t)
	stream, err := sdsClient(t, f.addr).StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"spiffe://example.org/envoy", "default", "ROOTCA", "example.org", "spiffe://example.org",
		"spiffe://example.org/someone-else", "partner.test", "spiffe://bad/../name"}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{ResourceNames: names, TypeUrl: secretTypeURL}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if resp.TypeUrl != secretTypeURL || resp.Nonce == "" || resp.VersionInfo == "" {
		t.Fatalf("response type %q nonce %q version %q", resp.TypeUrl, resp.Nonce, resp.VersionInfo)
	}
	got := decodeSecrets(t, resp.Resources)
	if want := []string{"ROOTCA", "default", "example.org", "spiffe://example.org", "spiffe://example.org/envoy"}; !slices.Equal(secretNames(got), want) {
		t.Fatalf("secrets %v, want %v", secretNames(got), want)
	}
	checkTLSSecret(t, got["spiffe://example.org/envoy"], me)
	checkTLSSecret(t, got["default"], me)
	for _, n := range []string{"ROOTCA", "example.org", "spiffe://example.org"} {
		checkBundleSecret(t, got[n], f.ca.bundle())
	}
	if n := testutil.ToFloat64(m.sdsNotEntitled); n != 2 {
		t.Errorf("%v names counted not entitled, want 2 (someone-else, partner.test)", n)
	}
	if n := testutil.ToFloat64(m.sdsInvalid); n != 1 {
		t.Errorf("%v names counted invalid, want 1", n)
	}

	// ACK, then rotate: the next message is the rotation (the ACK got no
	// answer), with the new certificate.
	if err := stream.Send(ack(resp, names...)); err != nil {
		t.Fatal(err)
	}
	rotated := f.ca.identity(t, "e1", "/envoy")
	f.cache.SetIdentity(uidSelector(os.Geteuid()), rotated)
	resp2, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if resp2.VersionInfo == resp.VersionInfo || resp2.Nonce == resp.Nonce {
		t.Fatalf("rotation: version %q nonce %q, the same as before", resp2.VersionInfo, resp2.Nonce)
	}
	got = decodeSecrets(t, resp2.Resources)
	checkTLSSecret(t, got["spiffe://example.org/envoy"], rotated)
	checkTLSSecret(t, got["default"], rotated)
	// Refusals are counted once per stream, not on every response.
	if n := testutil.ToFloat64(m.sdsNotEntitled); n != 2 {
		t.Errorf("%v names counted not entitled after the rotation, want still 2", n)
	}

	// NACK the rotation: counted; a stale ACK (of the first response) is
	// ignored; the next message is the CA change.
	nack := ack(resp2, names...)
	nack.VersionInfo = resp.VersionInfo
	nack.ErrorDetail = grpcstatus.New(codes.InvalidArgument, "bad certificate").Proto()
	if err := stream.Send(nack); err != nil {
		t.Fatal(err)
	}
	waitCount(t, m.sdsRejected, 1)
	if err := stream.Send(ack(resp, "ROOTCA")); err != nil { // stale: its names are not taken
		t.Fatal(err)
	}
	newCA := newCA(t)
	both := x509bundle.FromX509Authorities(td, []*x509.Certificate{f.ca.cert, newCA.cert})
	f.cache.SetBundle(both)
	resp3, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	got = decodeSecrets(t, resp3.Resources)
	if len(got) != 5 {
		t.Fatalf("after the CA change: %v, want the same five names", secretNames(got))
	}
	checkBundleSecret(t, got["ROOTCA"], both)
	checkTLSSecret(t, got["default"], rotated)

	// A changed subscription is answered at once with the new set.
	if err := stream.Send(ack(resp3, "ROOTCA")); err != nil {
		t.Fatal(err)
	}
	resp4, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if got := secretNames(decodeSecrets(t, resp4.Resources)); !slices.Equal(got, []string{"ROOTCA"}) {
		t.Fatalf("after asking for ROOTCA only: %v", got)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err == nil {
		t.Fatal("stream still open after CloseSend")
	}
}

// TestSDSDeltaSecrets: over the incremental stream, a wildcard
// subscription gets every resource the caller may have; later changes
// carry only what changed; a resource the caller loses (a federated
// bundle once its entry stops federating) is in removed_resources; a
// resource the client already holds (initial_resource_versions) is not
// sent again.
func TestSDSDeltaSecrets(t *testing.T) {
	f, m := startSDS(t)
	me := f.ca.identity(t, "e1", "/envoy")
	f.cache.SetIdentity(uidSelector(os.Geteuid()), me)
	partner := newCA(t)
	partnerBundle := x509bundle.FromX509Authorities(partnerTD, []*x509.Certificate{partner.cert})
	f.cache.SetFederatedBundle(partnerTD, partnerBundle)
	f.cache.SetFederatesWith("e1", partnerTD)
	otherTD := spiffeid.RequireTrustDomainFromString("other.test")
	f.cache.SetFederatedBundle(otherTD, x509bundle.FromX509Authorities(otherTD, []*x509.Certificate{newCA(t).cert}))
	ctx := testCtx(t)
	c := sdsClient(t, f.addr)

	stream, err := c.DeltaSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: secretTypeURL}); err != nil { // wildcard
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	versions := map[string]string{}
	var anys []*anypb.Any
	for _, r := range resp.Resources {
		if r.Version == "" || r.Name == "" {
			t.Fatalf("resource %q version %q", r.Name, r.Version)
		}
		versions[r.Name] = r.Version
		anys = append(anys, r.Resource)
	}
	got := decodeSecrets(t, anys)
	want := []string{"ALL", "ROOTCA", "default", "spiffe://example.org", "spiffe://example.org/envoy", "spiffe://partner.test"}
	if !slices.Equal(secretNames(got), want) {
		t.Fatalf("wildcard: %v, want %v", secretNames(got), want)
	}
	checkTLSSecret(t, got["default"], me)
	checkBundleSecret(t, got["spiffe://partner.test"], partnerBundle)
	checkAllSecret(t, got["ALL"], map[string]*x509bundle.Bundle{"example.org": f.ca.bundle(), "partner.test": partnerBundle})

	// ACK; subscribe to other.test too (not the caller's: nothing
	// comes), then rotate: only the SVIDs change.
	if err := stream.Send(&discoveryv3.DeltaDiscoveryRequest{ResponseNonce: resp.Nonce, ResourceNamesSubscribe: []string{"other.test"}}); err != nil {
		t.Fatal(err)
	}
	waitCount(t, m.sdsNotEntitled, 1)
	rotated := f.ca.identity(t, "e1", "/envoy")
	f.cache.SetIdentity(uidSelector(os.Geteuid()), rotated)
	resp2, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var changed []string
	for _, r := range resp2.Resources {
		changed = append(changed, r.Name)
		if r.Version == versions[r.Name] {
			t.Errorf("%s sent again with the same version", r.Name)
		}
	}
	slices.Sort(changed)
	if want := []string{"default", "spiffe://example.org/envoy"}; !slices.Equal(changed, want) || len(resp2.RemovedResources) != 0 {
		t.Fatalf("after a rotation: changed %v removed %v, want %v and none", changed, resp2.RemovedResources, want)
	}

	// The entry stops federating: partner.test's bundle is removed and
	// ALL changes.
	f.cache.SetFederatesWith("e1")
	resp3, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(resp3.RemovedResources, []string{"spiffe://partner.test"}) {
		t.Fatalf("removed %v, want partner.test's bundle", resp3.RemovedResources)
	}
	if len(resp3.Resources) != 1 || resp3.Resources[0].Name != "ALL" {
		t.Fatalf("after the federation ended: %d resources, want ALL only", len(resp3.Resources))
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}

	// A new stream that already holds the current ROOTCA is not sent it
	// again, only what it lacks.
	stream2, err := c.DeltaSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream2.Send(&discoveryv3.DeltaDiscoveryRequest{
		ResourceNamesSubscribe:  []string{"ROOTCA", "default"},
		InitialResourceVersions: map[string]string{"ROOTCA": versions["ROOTCA"]},
	}); err != nil {
		t.Fatal(err)
	}
	resp4, err := stream2.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp4.Resources) != 1 || resp4.Resources[0].Name != "default" {
		t.Fatalf("with ROOTCA held: %d resources, want default only", len(resp4.Resources))
	}
	// Unsubscribing sends nothing; a NACK is counted.
	if err := stream2.Send(&discoveryv3.DeltaDiscoveryRequest{ResponseNonce: resp4.Nonce, ErrorDetail: grpcstatus.New(codes.Unknown, "no").Proto(), ResourceNamesUnsubscribe: []string{"default"}}); err != nil {
		t.Fatal(err)
	}
	waitCount(t, m.sdsRejected, 1)
	f.cache.SetBundle(x509bundle.FromX509Authorities(td, []*x509.Certificate{f.ca.cert, newCA(t).cert}))
	resp5, err := stream2.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp5.Resources) != 1 || resp5.Resources[0].Name != "ROOTCA" {
		t.Fatalf("after a CA change: %d resources, want ROOTCA only", len(resp5.Resources))
	}
}

// waitCount waits for c to reach n: a request is handled when the server
// reads it, after Send returned.
func waitCount(t *testing.T, c prometheus.Counter, n float64) {
	t.Helper()
	eventually.NoError(t, 10*time.Second, func() error {
		if got := testutil.ToFloat64(c); got != n {
			return fmt.Errorf("counter at %v, want %v", got, n)
		}
		return nil
	})
}

// checkAllSecret checks that s is a validation context with Envoy's SPIFFE
// validator configured with exactly want, by trust domain name.
func checkAllSecret(t testing.TB, s *tlsv3.Secret, want map[string]*x509bundle.Bundle) {
	t.Helper()
	cv := s.GetValidationContext().GetCustomValidatorConfig()
	if cv.GetName() != "envoy.tls.cert_validator.spiffe" {
		t.Fatalf("secret %q: custom validator %q", s.Name, cv.GetName())
	}
	var cfg tlsv3.SPIFFECertValidatorConfig
	if err := cv.GetTypedConfig().UnmarshalTo(&cfg); err != nil {
		t.Fatal(err)
	}
	if len(cfg.TrustDomains) != len(want) {
		t.Fatalf("secret %q: %d trust domains, want %d", s.Name, len(cfg.TrustDomains), len(want))
	}
	for _, d := range cfg.TrustDomains {
		b, ok := want[d.Name]
		if !ok {
			t.Fatalf("secret %q: unexpected trust domain %q", s.Name, d.Name)
		}
		got := x509bundle.FromX509Authorities(b.TrustDomain(), pemCertsOf(t, d.TrustBundle.GetInlineBytes()))
		if !got.Equal(b) {
			t.Fatalf("secret %q: %s bundle differs", s.Name, d.Name)
		}
	}
}

// TestSDSFetchSecrets: the unary fetch answers with the named resources,
// or all of them with none named; a federated trust domain the caller's
// entry does not federate with is not among them.
func TestSDSFetchSecrets(t *testing.T) {
	f := start(t, nil)
	me := f.ca.identity(t, "e1", "/envoy")
	f.cache.SetIdentity(uidSelector(os.Geteuid()), me)
	partnerBundle := x509bundle.FromX509Authorities(partnerTD, []*x509.Certificate{newCA(t).cert})
	f.cache.SetFederatedBundle(partnerTD, partnerBundle)
	c := sdsClient(t, f.addr)
	ctx := testCtx(t)
	resp, err := c.FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{ResourceNames: []string{"partner.test", "ALL", "spiffe://example.org/envoy"}})
	if err != nil {
		t.Fatal(err)
	}
	got := decodeSecrets(t, resp.Resources)
	if !slices.Equal(secretNames(got), []string{"ALL", "spiffe://example.org/envoy"}) {
		t.Fatalf("fetch: %v", secretNames(got))
	}
	checkAllSecret(t, got["ALL"], map[string]*x509bundle.Bundle{"example.org": f.ca.bundle()})

	f.cache.SetFederatesWith("e1", partnerTD)
	resp, err = c.FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got = decodeSecrets(t, resp.Resources)
	checkBundleSecret(t, got["spiffe://partner.test"], partnerBundle)
	checkAllSecret(t, got["ALL"], map[string]*x509bundle.Bundle{"example.org": f.ca.bundle(), "partner.test": partnerBundle})
	checkTLSSecret(t, got["default"], me)
}

// TestSDSNoIdentity: a caller whose selectors match no entry gets what
// FetchX509SVID gives it, PermissionDenied "no identity issued", on every
// SDS method, and no secret, not even a bundle.
func TestSDSNoIdentity(t *testing.T) {
	f := start(t, nil)
	f.cache.SetIdentity(uidSelector(424242), f.ca.identity(t, "e1", "/someone-else"))
	c := sdsClient(t, f.addr)
	ctx := testCtx(t)

	_, err := c.FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{ResourceNames: []string{"ROOTCA"}})
	wantCode(t, err, codes.PermissionDenied, "no identity issued")

	stream, err := c.StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The server may end the stream before the request is sent: Send
	// then returns io.EOF and Recv the stream's status.
	if err := stream.Send(&discoveryv3.DiscoveryRequest{ResourceNames: []string{"ROOTCA", "spiffe://example.org/someone-else"}}); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	wantCode(t, err, codes.PermissionDenied, "no identity issued")

	delta, err := c.DeltaSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := delta.Send(&discoveryv3.DeltaDiscoveryRequest{}); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	_, err = delta.Recv()
	wantCode(t, err, codes.PermissionDenied, "no identity issued")
}

// TestSDSEntryDeletedEndsStream: a caller whose last entry is deleted
// while its stream is open is refused as on the Workload API.
func TestSDSEntryDeletedEndsStream(t *testing.T) {
	f := start(t, nil)
	f.cache.SetIdentity(uidSelector(os.Geteuid()), f.ca.identity(t, "e1", "/envoy"))
	stream, err := sdsClient(t, f.addr).StreamSecrets(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{ResourceNames: []string{"default"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	f.cache.RemoveIdentity("e1")
	_, err = stream.Recv()
	wantCode(t, err, codes.PermissionDenied, "no identity issued")
}

// TestSDSBadRequests: too many names and a type other than secrets end
// the call with InvalidArgument and a clear message.
func TestSDSBadRequests(t *testing.T) {
	f := start(t, nil)
	f.cache.SetIdentity(uidSelector(os.Geteuid()), f.ca.identity(t, "e1", "/envoy"))
	c := sdsClient(t, f.addr)
	ctx := testCtx(t)
	many := make([]string, MaxSDSResourceNames+1)
	for i := range many {
		many[i] = "spiffe://example.org/n" + strings.Repeat("x", i)
	}
	_, err := c.FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{ResourceNames: many})
	wantCode(t, err, codes.InvalidArgument, "129 resource names asked for; at most 128 are served on one stream")
	_, err = c.FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{TypeUrl: "type.googleapis.com/envoy.config.cluster.v3.Cluster"})
	wantCode(t, err, codes.InvalidArgument, `type_url "type.googleapis.com/envoy.config.cluster.v3.Cluster" is not `+secretTypeURL+`: this server serves only SDS secrets`)

	// On the delta stream, names add up across requests.
	delta, err := c.DeltaSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := delta.Send(&discoveryv3.DeltaDiscoveryRequest{ResourceNamesSubscribe: many[:100]}); err != nil {
		t.Fatal(err)
	}
	if err := delta.Send(&discoveryv3.DeltaDiscoveryRequest{ResourceNamesSubscribe: many[100:]}); err != nil {
		t.Fatal(err)
	}
	_, err = delta.Recv()
	wantCode(t, err, codes.InvalidArgument, "129 resource names asked for; at most 128 are served on one stream")
}

// TestSDSSeparateSocket: with SeparateSDS, SDS is served on its own
// listener with the same attestation, and not on the Workload API's,
// which keeps serving the Workload API.
func TestSDSSeparateSocket(t *testing.T) {
	cache := NewMemoryCache()
	ca := newCA(t)
	cache.SetBundle(ca.bundle())
	cache.SetIdentity(uidSelector(os.Geteuid()), ca.identity(t, "e1", "/envoy"))
	srv, err := New(Config{Cache: cache, Attestors: []workload.Attestor{unixattestor.New()}, SeparateSDS: true})
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "wlsds")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	apiSock, sdsSock := filepath.Join(dir, "public", "api.sock"), filepath.Join(dir, "sds", "sds.sock")
	apiL, err := Listen(apiSock)
	if err != nil {
		t.Fatal(err)
	}
	sdsL, err := Listen(sdsSock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errs := make(chan error, 2)
	go func() { errs <- srv.Serve(ctx, apiL) }()
	go func() { errs <- srv.ServeSDS(ctx, sdsL) }()
	t.Cleanup(func() {
		cancel()
		for range 2 {
			if err := <-errs; err != nil {
				t.Errorf("Serve: %v", err)
			}
		}
	})
	tctx := testCtx(t)
	resp, err := sdsClient(t, "unix://"+sdsSock).FetchSecrets(tctx, &discoveryv3.DiscoveryRequest{ResourceNames: []string{"default"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := secretNames(decodeSecrets(t, resp.Resources)); !slices.Equal(got, []string{"default"}) {
		t.Fatalf("SDS socket: %v", got)
	}
	_, err = sdsClient(t, "unix://"+apiSock).FetchSecrets(tctx, &discoveryv3.DiscoveryRequest{})
	wantCode(t, err, codes.Unimplemented, "")

	cc, err := grpc.NewClient("unix://"+apiSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	stream, err := workloadpb.NewSpiffeWorkloadAPIClient(cc).FetchX509SVID(withHeader(tctx), &workloadpb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatalf("Workload API socket: %v", err)
	}
	if err := srv.ServeSDS(ctx, sdsL); err == nil {
		t.Fatal("ServeSDS called twice succeeded")
	}

	// Without SeparateSDS, ServeSDS refuses.
	plain, err := New(Config{Cache: cache, Attestors: []workload.Attestor{unixattestor.New()}})
	if err != nil {
		t.Fatal(err)
	}
	l, err := Listen(filepath.Join(dir, "other", "sds.sock"))
	if err != nil {
		t.Fatal(err)
	}
	if err := plain.ServeSDS(ctx, l); err == nil || !strings.HasPrefix(err.Error(), "workloadapi: ") {
		t.Fatalf("ServeSDS without SeparateSDS: %v", err)
	}
}

// TestSDSCallerRecheckedBeforePush: a caller that is not the process that
// connected any more gets no further message on its open stream.
func TestSDSCallerRecheckedBeforePush(t *testing.T) {
	f := start(t, nil)
	f.cache.SetIdentity(uidSelector(os.Geteuid()), f.ca.identity(t, "e1", "/envoy"))
	stream, err := sdsClient(t, f.addr).StreamSecrets(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{ResourceNames: []string{"default"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	// The pid now belongs to another process (its start time changed).
	f.server.proc.startTime = func(*PeerInfo) (uint64, error) { return 1, nil }
	f.cache.SetIdentity(uidSelector(os.Geteuid()), f.ca.identity(t, "e1", "/envoy"))
	_, err = stream.Recv()
	wantCode(t, err, codes.PermissionDenied, "caller process exited or was replaced during attestation")
}

// TestParseSDSName: the kinds of resource names, and bad names refused
// with a clear error.
func TestParseSDSName(t *testing.T) {
	for _, tc := range []struct {
		name string
		kind sdsKind
		want string // the ID or trust domain
		err  string
	}{
		{"default", sdsDefault, "", ""},
		{"ROOTCA", sdsRootCA, "", ""},
		{"ALL", sdsAll, "", ""},
		{"example.org", sdsTrustDomain, "example.org", ""},
		{"spiffe://example.org", sdsTrustDomain, "example.org", ""},
		{"spiffe://default", sdsTrustDomain, "default", ""},
		{"spiffe://example.org/envoy/a", sdsSVID, "spiffe://example.org/envoy/a", ""},
		{"", 0, "", "empty resource name"},
		{"rootca", sdsTrustDomain, "rootca", ""},
		{"Example.org", 0, "", `resource name "Example.org" is neither "default", "ROOTCA", "ALL", a SPIFFE ID nor a trust domain: trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores`},
		{"spiffe://example.org/", 0, "", `resource name "spiffe://example.org/": path cannot have a trailing slash`},
		{"spiffe://" + strings.Repeat("a", 2050), 0, "", "resource name is 2059 bytes long, longer than a SPIFFE ID may be (2048)"},
	} {
		n, err := parseSDSName(tc.name)
		if tc.err != "" {
			if err == nil || err.Error() != tc.err {
				t.Errorf("%q: err = %v, want %q", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.name, err)
			continue
		}
		var got string
		switch n.kind {
		case sdsSVID:
			got = n.id.String()
		case sdsTrustDomain:
			got = n.td.Name()
		}
		if n.kind != tc.kind || got != tc.want {
			t.Errorf("%q: kind %d %q, want %d %q", tc.name, n.kind, got, tc.kind, tc.want)
		}
	}
}

// TestSDSBuilderRefusesBrokenIdentity: an identity without a key is an
// error, not a secret without a key.
func TestSDSBuilderRefusesBrokenIdentity(t *testing.T) {
	id := newCA(t).identity(t, "e1", "/envoy")
	id.PrivateKey = nil
	_, _, err := newSDSBuilder(&X509Snapshot{Identities: []X509Identity{id}}).build([]string{"default"})
	if err == nil || !strings.Contains(err.Error(), "no private key") {
		t.Fatalf("err = %v", err)
	}
}

// TestSDSRefusalsLogged: the names a caller is refused are logged, with
// its pid and uid, once per process however often it asks; the SDS calls
// are counted under their own method names.
func TestSDSRefusalsLogged(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	m, reg := newTestPrometheusMeter(t)
	f := start(t, func(s *Server) { s.log = zap.New(core); s.meter = m })
	f.cache.SetIdentity(uidSelector(os.Geteuid()), f.ca.identity(t, "e1", "/envoy"))
	c := sdsClient(t, f.addr)
	for range 3 {
		if _, err := c.FetchSecrets(testCtx(t), &discoveryv3.DiscoveryRequest{ResourceNames: []string{"default", "spiffe://example.org/db", "Bad"}}); err != nil {
			t.Fatal(err)
		}
	}
	lines := logs.FilterMessage("SDS resources refused: the caller is not entitled to them or they are not resource names").All()
	if len(lines) != 1 {
		t.Fatalf("%d log lines for 3 calls of one process, want 1", len(lines))
	}
	fields := lines[0].ContextMap()
	if fields["pid"] != int32(os.Getpid()) || fields["uid"] != uint32(os.Geteuid()) {
		t.Errorf("log fields %v, want pid %d uid %d", fields, os.Getpid(), os.Geteuid())
	}
	if ne, _ := fields["not_entitled"].([]any); len(ne) != 1 || ne[0] != `"spiffe://example.org/db"` {
		t.Errorf("not_entitled %v", fields["not_entitled"])
	}
	if inv, _ := fields["invalid"].([]any); len(inv) != 1 || inv[0] != `"Bad"` {
		t.Errorf("invalid %v", fields["invalid"])
	}
	if n := testutil.ToFloat64(m.sdsNotEntitled); n != 3 {
		t.Errorf("%v not-entitled names counted over 3 calls, want 3", n)
	}
	want := `
# HELP sigil_agent_workload_api_calls_total Workload API calls ended, by method (the Workload API RPCs, or "other") and gRPC status code.
# TYPE sigil_agent_workload_api_calls_total counter
sigil_agent_workload_api_calls_total{code="OK",method="FetchSecrets"} 3
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), MetricCalls); err != nil {
		t.Fatal(err)
	}
	if n, _ := histogram(t, reg, "FetchSecrets"); n != 3 {
		t.Errorf("FetchSecrets latency: %d samples, want 3", n)
	}
}
