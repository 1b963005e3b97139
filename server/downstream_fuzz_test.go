package server

import (
	"testing"
	"time"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/ca"
)

// FuzzDownstreamRequest: what MintX509CA does with a caller's request
// before the CA key is used (the lifetime from ttl_seconds and the
// entries' x509_svid_ttl, the CSR checked by ca.UpstreamCATemplate)
// never panics; an accepted lifetime is positive and at most the CA TTL,
// and an accepted CSR names the trust domain and is within the size
// bound.
func FuzzDownstreamRequest(f *testing.F) {
	f.Add(downstreamCSR(f, newKey(f), "spiffe://example.org"), int64(3600), int32(0))
	f.Add(downstreamCSR(f, newKey(f), "spiffe://example.org/x"), int64(0), int32(600))
	f.Add([]byte("not a CSR"), int64(-1), int32(-5))
	f.Add([]byte{}, int64(1<<62), int32(1<<30))
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	const caTTL = 24 * time.Hour
	f.Fuzz(func(t *testing.T, csr []byte, ttlSeconds int64, entryTTL int32) {
		ttl, err := downstreamTTL(ttlSeconds, caTTL, []*sigilv1.Entry{{X509SvidTtl: entryTTL}})
		if err != nil {
			if ttlSeconds >= 0 {
				t.Fatalf("ttl_seconds %d refused: %v", ttlSeconds, err)
			}
			return
		}
		if ttl <= 0 || ttl > caTTL {
			t.Fatalf("lifetime %v from ttl_seconds %d, entry TTL %d", ttl, ttlSeconds, entryTTL)
		}
		tmpl, _, err := ca.UpstreamCATemplate(ca.X509CARequest{CSR: csr, TrustDomain: testTD, TTL: ttl}, now, 0, now.Add(ttl))
		if err != nil {
			return
		}
		if len(csr) > ca.MaxCSRSize || len(tmpl.URIs) != 1 || tmpl.URIs[0].String() != "spiffe://example.org" || !tmpl.NotAfter.After(now) {
			t.Fatalf("accepted a CSR of %d bytes with URIs %v, NotAfter %v", len(csr), tmpl.URIs, tmpl.NotAfter)
		}
	})
}
