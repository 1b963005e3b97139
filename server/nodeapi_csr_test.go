package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/node/jointoken"
	"github.com/sigil-id/sigil/ca"
)

// bigCSR returns a well-formed, correctly signed CSR of more than size
// bytes: an opaque extension pads it.
func bigCSR(t *testing.T, key *ecdsa.PrivateKey, size int) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{{
		Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 55555, 1}, Value: make([]byte, size),
	}}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestNodeAPIRefusesOversizedCSR: a correctly signed CSR over ca.MaxCSRSize
// is refused on every node API path that takes one (attestation, agent
// renewal, workload SVIDs) with a message naming the limit; the refused
// attestation writes nothing to Raft and leaves its join token usable.
func TestNodeAPIRefusesOversizedCSR(t *testing.T) {
	h := startServer(t)
	ctx := context.Background()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	big := bigCSR(t, key, ca.MaxCSRSize)
	if _, err := x509.ParseCertificateRequest(big); err != nil {
		t.Fatal(err)
	}
	wantMsg := "is too large (at most 16384)"

	token, agentID := h.token()
	index := h.srv.store.LastIndex()
	_, err := h.nodeClient(nil).Attest(ctx, &sigilv1.AttestRequest{AttestationType: jointoken.Name, Payload: []byte(token), Csr: big})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), wantMsg) {
		t.Fatalf("attest with an oversized CSR: %v", err)
	}
	if got := h.srv.store.LastIndex(); got != index {
		t.Fatalf("Raft index moved from %d to %d", index, got)
	}
	if _, err := h.admin.GetAgent(ctx, &sigilv1.GetAgentRequest{SpiffeId: agentID}); status.Code(err) != codes.NotFound {
		t.Fatalf("agent recorded after a refused attestation: %v", err)
	}
	// The token was not consumed.
	if _, err := h.nodeClient(nil).Attest(ctx, &sigilv1.AttestRequest{AttestationType: jointoken.Name, Payload: []byte(token), Csr: newCSR(t, key, "a")}); err != nil {
		t.Fatalf("the token no longer works: %v", err)
	}

	a := h.attest()
	e := h.createEntry("spiffe://example.org/web", a.id, "unix:uid:1000")
	if _, err := a.node.RenewAgent(ctx, &sigilv1.RenewAgentRequest{Csr: big}); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), wantMsg) {
		t.Fatalf("renew with an oversized CSR: %v", err)
	}
	resp, err := a.node.BatchNewX509SVID(ctx, &sigilv1.BatchNewX509SVIDRequest{Requests: []*sigilv1.X509SVIDRequest{{EntryId: e.Id, Csr: big}}})
	if err != nil {
		t.Fatal(err)
	}
	if r := resp.Results[0]; codes.Code(r.Status.Code) != codes.InvalidArgument || !strings.Contains(r.Status.Message, wantMsg) || len(r.Chain) != 0 {
		t.Fatalf("workload SVID with an oversized CSR: %v", r.Status)
	}
}
