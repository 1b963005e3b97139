package agent

import (
	"crypto"
	"crypto/x509"
	"fmt"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/clock"
)

// BenchmarkCacheMintCycle measures the cache's part of minting: 5000
// entries, one waiting workload, taken in batches of 500 and handed back
// with SVIDs signed beforehand (the cost of signing is left out; checking
// and verifying the SVIDs is in).
func BenchmarkCacheMintCycle(b *testing.B) {
	const n, batch = 5000, 500
	ca := newTestCA(b, t0)
	entries := make([]*sigilv1.Entry, n)
	keys := make(map[string]crypto.Signer, n)
	chains := make(map[string][]*x509.Certificate, n)
	for i := range entries {
		id := fmt.Sprintf("e%05d", i)
		entries[i] = entry(id, "w/"+id, int64(i), fmt.Sprintf("uid:%d", i%100))
		key, _, err := newKeyAndCSR()
		if err != nil {
			b.Fatal(err)
		}
		keys[id] = key
		chains[id] = ca.sign(b, spiffeid.RequireFromString(entries[i].SpiffeId), key.Public(), t0.Add(-time.Minute), time.Hour)
	}
	b.ResetTimer()
	for range b.N {
		c := newCache(testTD, zap.NewNop(), clock.NewFake(t0))
		bundle := x509bundle.New(testTD)
		bundle.AddX509Authority(ca.cert)
		c.SetBundle(bundle)
		c.ReplaceEntries(entries)
		sub := c.SubscribeX509([]*sigilv1.Selector{sel("uid:7")})
		cached := 0
		for {
			jobs := c.takeDue(t0, batch)
			if len(jobs) == 0 {
				break
			}
			outs := make([]mintOutcome, len(jobs))
			for i, j := range jobs {
				j.key = keys[j.id]
				outs[i] = mintOutcome{chain: chains[j.id]}
			}
			cached += c.finishBatch(jobs, outs)
		}
		if cached != n {
			b.Fatalf("cached %d of %d", cached, n)
		}
		if s := <-sub.Updates(); len(s.Identities) != n/100 {
			b.Fatalf("%d identities", len(s.Identities))
		}
		sub.Close()
	}
}
