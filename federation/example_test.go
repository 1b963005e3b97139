package federation_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/federation"
	"github.com/sigil-id/sigil/mtls/mtlstest"
)

// Encode writes a trust domain's bundle as a SPIFFE bundle document;
// Decode reads it back, as a partner reads it from the bundle endpoint.
func ExampleEncode() {
	ca := mtlstest.NewCA("example.org")
	doc, err := federation.Encode(&sigilv1.Bundle{
		TrustDomain:     "example.org",
		X509Authorities: []*sigilv1.X509Authority{{Certificate: ca.Cert().Raw}},
		SequenceNumber:  7,
		RefreshHint:     300,
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	b, err := federation.Decode(spiffeid.RequireTrustDomainFromString("example.org"), doc)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("sequence %d, refresh hint %ds, %d X.509 authority\n", b.SequenceNumber, b.RefreshHint, len(b.X509Authorities))
	// Output: sequence 7, refresh hint 300s, 1 X.509 authority
}

// Fetch reads a partner's bundle from its https_spiffe bundle endpoint,
// authenticating the endpoint with the partner's bundle held now (here
// the bootstrap bundle the operator gave).
func ExampleFetch() {
	// The partner, gcp.example, serves its bundle.
	partnerCA := mtlstest.NewCA("gcp.example")
	partnerBundle := &sigilv1.Bundle{
		TrustDomain:     "gcp.example",
		X509Authorities: []*sigilv1.X509Authority{{Certificate: partnerCA.Cert().Raw}},
		SequenceNumber:  3,
	}
	svid := partnerCA.SVID("spiffe://gcp.example/sigil/server", time.Hour)
	cert := &tls.Certificate{Certificate: [][]byte{svid.Certificates[0].Raw}, PrivateKey: svid.PrivateKey}
	endpoint, err := federation.NewEndpoint(federation.EndpointConfig{
		Profile: federation.ProfileHTTPSSPIFFE,
		Bundle:  func() (*sigilv1.Bundle, error) { return partnerBundle, nil },
		SVID:    func() (*tls.Certificate, error) { return cert, nil },
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go func() { _ = endpoint.Serve(ctx, l) }()

	// This trust domain fetches it.
	rel := &sigilv1.FederationRelationship{
		TrustDomain:       "gcp.example",
		BundleEndpointUrl: "https://" + l.Addr().String(),
		Profile:           federation.ProfileHTTPSSPIFFE,
		EndpointSpiffeId:  "spiffe://gcp.example/sigil/server",
	}
	bootstrap := &sigilv1.Bundle{
		TrustDomain:     "gcp.example",
		X509Authorities: []*sigilv1.X509Authority{{Certificate: partnerCA.Cert().Raw}},
	}
	b, err := federation.Fetch(context.Background(), rel, bootstrap, federation.FetchConfig{Timeout: 5 * time.Second})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("%s: sequence %d, refresh hint %ds\n", b.TrustDomain, b.SequenceNumber, b.RefreshHint)
	// Output: gcp.example: sequence 3, refresh hint 300s
}
