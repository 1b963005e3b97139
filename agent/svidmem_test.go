package agent

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/clock"
)

// TestInstalledSVIDMemory checks what one installed SVID costs the agent:
// the DER of its chain and key and a few fields, not the parsed
// certificate and key (about 4 KiB more for a P-256 SVID). Keys, CSRs,
// server answers and parsed chains are made inside the measured span,
// as the minting loop makes them, and are garbage once installed.
func TestInstalledSVIDMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("generates 3,000 keys and certificates")
	}
	const n = 3000
	const perSVIDBound = 1536 // bytes
	ca := newTestCA(t, t0)
	c := newCache(testTD, zap.NewNop(), clock.NewFake(t0))
	bundle := x509bundle.New(testTD)
	bundle.AddX509Authority(ca.cert)
	c.SetBundle(bundle)
	entries := make([]*sigilv1.Entry, n)
	for i := range entries {
		id := fmt.Sprintf("e%05d", i)
		entries[i] = entry(id, "ns/default/sa/workload-"+id, int64(i), fmt.Sprintf("uid:%d", i))
	}
	c.ReplaceEntries(entries)
	jobs := c.takeDue(t0, n)
	if len(jobs) != n {
		t.Fatalf("%d jobs, want %d", len(jobs), n)
	}

	before := liveHeap()
	outs := make([]mintOutcome, n)
	for i, j := range jobs {
		key, _, err := newKeyAndCSR()
		if err != nil {
			t.Fatal(err)
		}
		j.key = key
		der := ca.sign(t, spiffeid.RequireFromString(j.fp.spiffeID), key.Public(), t0.Add(-time.Minute), time.Hour)[0].Raw
		chain, err := parseDERChain([][]byte{append([]byte(nil), der...)})
		if err != nil {
			t.Fatal(err)
		}
		outs[i] = mintOutcome{chain: chain}
	}
	if got := c.finishBatch(jobs, outs); got != n {
		t.Fatalf("installed %d SVIDs, want %d", got, n)
	}
	jobs, outs = nil, nil
	per := (liveHeap() - before) / n
	runtime.KeepAlive(c)
	t.Logf("live heap per installed SVID: %d B", per)
	if per > perSVIDBound {
		t.Fatalf("each installed SVID holds %d B of live heap, want at most %d", per, perSVIDBound)
	}

	// What the cache hands out still parses to the SVID and its key.
	sub := c.SubscribeX509([]*sigilv1.Selector{sel("uid:7")})
	defer sub.Close()
	snap := <-sub.Updates()
	if len(snap.Identities) != 1 {
		t.Fatalf("%d identities, want 1", len(snap.Identities))
	}
	leaf, key := leafOf(t, snap.Identities[0]), keyOf(t, snap.Identities[0])
	if !publicKeyEqual(leaf.PublicKey, key.Public()) || leaf.URIs[0].String() != entries[7].SpiffeId {
		t.Fatalf("handed out %v with a key that does not match", leaf.URIs)
	}
}
