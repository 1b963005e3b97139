package cluster

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/ca/keymanager/memory"
)

// opRecorder is a ca.KeyObserver that counts what it is told, by op.
type opRecorder struct {
	mu     sync.Mutex
	ok     map[string]int
	failed map[string]int
}

func (r *opRecorder) KeyOK(op string) { r.mu.Lock(); r.ok[op]++; r.mu.Unlock() }
func (r *opRecorder) KeyFailed(op string, _ error) {
	r.mu.Lock()
	r.failed[op]++
	r.mu.Unlock()
}

// TestIdentityKeyObserved: Config.KeyObserver is told about the identity
// CA's key: its generation, its self-signature and each SVID it signs.
func TestIdentityKeyObserved(t *testing.T) {
	obs := &opRecorder{ok: map[string]int{}, failed: map[string]int{}}
	cfg := DefaultConfig()
	cfg.TrustDomain, cfg.NodeName, cfg.Dir, cfg.ListenAddress = testTD, "s0", t.TempDir(), "127.0.0.1:0"
	cfg.IdentityKeyManager = memory.New()
	cfg.SVID = func() *tls.Certificate { return nil }
	cfg.Admin = testAdmin{}
	cfg.KeyObserver = obs
	c, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.IdentityCA().SignX509SVID(context.Background(), ca.X509SVIDParams{PublicKey: key.Public(), SPIFFEID: spiffeid.RequireFromPath(testTD, "/sigil/server/s0")}); err != nil {
		t.Fatal(err)
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if obs.ok[ca.KeyOpGenerate] != 1 || obs.ok[ca.KeyOpSign] != 2 || len(obs.failed) != 0 {
		t.Fatalf("observer saw ok %v, failed %v; want 1 generate and 2 signatures", obs.ok, obs.failed)
	}
}
