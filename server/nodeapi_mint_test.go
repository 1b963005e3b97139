package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// TestBatchMintResultsMatchTheLeaves: a batch of the agents' requests
// (P-256, empty subject: the CA's fast CSR check), requests with a subject
// (crypto/x509's check) and one with a broken signature is minted in
// parallel; every SVID carries its request's key and the entry's identity,
// each result's expiry is its leaf's NotAfter, each issuance's audit
// record names its leaf's serial and expiry (the node API no longer parses
// the certificates it mints), and the broken request alone is refused,
// as an invalid argument naming the signature.
func TestBatchMintResultsMatchTheLeaves(t *testing.T) {
	h := startServer(t)
	a := h.attest()
	resp, err := h.admin.BatchCreateEntry(context.Background(), &sigilv1.BatchCreateEntryRequest{Entries: []*sigilv1.Entry{{
		SpiffeId: "spiffe://example.org/mint", ParentId: a.id, X509SvidTtl: 3600, DnsNames: []string{"mint.example.org", "alt.example.org"},
		Selectors: []*sigilv1.Selector{{Type: "unix", Value: "uid:1000"}},
	}}})
	if err != nil || resp.Results[0].Status.GetCode() != 0 {
		t.Fatalf("create entry: %v %v", err, resp)
	}
	e := resp.Results[0].Entry
	const n, broken = 12, 5
	keys := make([]*ecdsa.PrivateKey, n)
	req := &sigilv1.BatchNewX509SVIDRequest{}
	for i := range keys {
		keys[i], _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		subject := ""
		if i%3 == 0 {
			subject = "not used"
		}
		csr := newCSR(t, keys[i], subject)
		if i == broken {
			csr[len(csr)-4] ^= 0x40
		}
		req.Requests = append(req.Requests, &sigilv1.X509SVIDRequest{EntryId: e.Id, Csr: csr})
	}
	before := time.Now().Truncate(time.Second)
	out, err := a.node.BatchNewX509SVID(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Results) != n {
		t.Fatalf("%d results for %d requests", len(out.Results), n)
	}
	serials := map[string]time.Time{}
	for i, r := range out.Results {
		if i == broken {
			if codes.Code(r.Status.GetCode()) != codes.InvalidArgument || !strings.Contains(r.Status.GetMessage(), "CSR signature is invalid") || len(r.Chain) != 0 {
				t.Fatalf("broken request: status %v, %d certificates", r.Status, len(r.Chain))
			}
			continue
		}
		if r.Status.GetCode() != 0 || r.EntryId != e.Id {
			t.Fatalf("request %d: %v (entry %q)", i, r.Status, r.EntryId)
		}
		leaf, err := x509.ParseCertificate(r.Chain[0])
		if err != nil {
			t.Fatal(err)
		}
		if !keys[i].PublicKey.Equal(leaf.PublicKey) {
			t.Fatalf("request %d: the SVID does not carry the request's key", i)
		}
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != e.SpiffeId || strings.Join(leaf.DNSNames, ",") != "mint.example.org,alt.example.org" || leaf.Subject.CommonName != "mint.example.org" {
			t.Fatalf("request %d: identity %v %v %q", i, leaf.URIs, leaf.DNSNames, leaf.Subject.CommonName)
		}
		if r.ExpiresAt != leaf.NotAfter.Unix() || leaf.NotAfter.Before(before.Add(time.Hour)) {
			t.Fatalf("request %d: expires at %d, the leaf at %v", i, r.ExpiresAt, leaf.NotAfter)
		}
		serials[leaf.SerialNumber.Text(16)] = leaf.NotAfter
	}
	issued := h.logs.FilterField(zap.String("audit", "x509_svid_issued")).All()
	if len(issued) != n-1 {
		t.Fatalf("%d issuance records, want %d", len(issued), n-1)
	}
	for _, rec := range issued {
		f := rec.ContextMap()
		want, ok := serials[f["serial"].(string)]
		if !ok {
			t.Fatalf("audit record of serial %v, not one of the SVIDs", f["serial"])
		}
		if got, _ := f["not_after"].(time.Time); !got.Equal(want) {
			t.Fatalf("audit record of %v: not_after %v, the leaf's %v", f["serial"], f["not_after"], want)
		}
		if f["entry_id"] != e.Id || f["spiffe_id"] != e.SpiffeId || f["agent_id"] != a.id {
			t.Fatalf("audit record fields %v", f)
		}
		delete(serials, f["serial"].(string))
	}
}
