package ca_test

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/ca/keymanager/memory"
	"github.com/sigil-id/sigil/clock"
)

// errUnplugged is what switchKM's backend fails with.
var errUnplugged = errors.New("hsm unplugged")

// switchKM is a memory key manager whose backend (GenerateKey, GetKey and
// the signers it returned) fails while fail is set, like an HSM pulled out.
type switchKM struct {
	inner *memory.KeyManager
	fail  atomic.Bool
}

func (k *switchKM) GenerateKey(ctx context.Context, id string, kt ca.KeyType) (crypto.Signer, error) {
	if k.fail.Load() {
		return nil, errUnplugged
	}
	s, err := k.inner.GenerateKey(ctx, id, kt)
	if err != nil {
		return nil, err
	}
	return switchSigner{s, k}, nil
}

func (k *switchKM) GetKey(ctx context.Context, id string) (crypto.Signer, error) {
	if k.fail.Load() {
		return nil, errUnplugged
	}
	s, err := k.inner.GetKey(ctx, id)
	if err != nil {
		return nil, err
	}
	return switchSigner{s, k}, nil
}

type switchSigner struct {
	crypto.Signer
	km *switchKM
}

func (s switchSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if s.km.fail.Load() {
		return nil, errUnplugged
	}
	return s.Signer.Sign(r, digest, opts)
}

// recorder is a KeyObserver that keeps what it was told.
type recorder struct {
	mu     sync.Mutex
	ok     int
	failed []string // "op: error"
}

func (r *recorder) KeyOK(string) { r.mu.Lock(); r.ok++; r.mu.Unlock() }
func (r *recorder) KeyFailed(op string, err error) {
	r.mu.Lock()
	r.failed = append(r.failed, op+": "+err.Error())
	r.mu.Unlock()
}

func (r *recorder) counts() (int, []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ok, append([]string(nil), r.failed...)
}

func TestKeyObserverSeesSigningFailuresOnly(t *testing.T) {
	km := &switchKM{inner: memory.New()}
	obs := &recorder{}
	cfg := testConfig(t, clock.NewFake(start))
	cfg.KeyManager = km
	cfg.KeyObserver = obs
	c := newCA(t, cfg)
	// GenerateKey and the self-signature succeeded.
	if ok, failed := obs.counts(); ok != 2 || len(failed) != 0 {
		t.Fatalf("after New: ok %d, failed %q; want 2 and none", ok, failed)
	}

	ctx := context.Background()
	id := spiffeid.RequireFromPath(td, "/web")
	csr := mustCSR(t, genKey(t, "p256"), nil)
	if _, err := c.SignX509SVIDFromCSR(ctx, csr, id, nil, 0); err != nil {
		t.Fatal(err)
	}
	if ok, _ := obs.counts(); ok != 3 {
		t.Fatalf("ok = %d after a signature, want 3", ok)
	}

	// What the caller got wrong never reaches the key.
	bad := append([]byte(nil), csr...)
	bad[len(bad)-5] ^= 0xff
	if _, err := c.SignX509SVIDFromCSR(ctx, bad, id, nil, 0); err == nil {
		t.Fatal("a corrupted CSR was signed")
	}
	if _, err := c.SignX509SVIDFromCSR(ctx, csr, spiffeid.RequireFromPath(otherTD, "/web"), nil, 0); err == nil {
		t.Fatal("an ID of another trust domain was signed")
	}
	if ok, failed := obs.counts(); ok != 3 || len(failed) != 0 {
		t.Fatalf("after bad requests: ok %d, failed %q; want 3 and none", ok, failed)
	}

	// The key's backend fails: the signing error is clear and reported.
	km.fail.Store(true)
	_, err := c.SignX509SVIDFromCSR(ctx, csr, id, nil, 0)
	if err == nil || !errors.Is(err, errUnplugged) || !strings.HasPrefix(err.Error(), "ca: signing X509-SVID") {
		t.Fatalf("err = %v, want a ca signing error wrapping %v", err, errUnplugged)
	}
	if ok, failed := obs.counts(); ok != 3 || len(failed) != 1 || failed[0] != "sign: hsm unplugged" {
		t.Fatalf("after a failing signature: ok %d, failed %q", ok, failed)
	}

	km.fail.Store(false)
	if _, err := c.SignX509SVIDFromCSR(ctx, csr, id, nil, 0); err != nil {
		t.Fatal(err)
	}
	if ok, failed := obs.counts(); ok != 4 || len(failed) != 1 {
		t.Fatalf("after recovery: ok %d, failed %q; want 4 and one", ok, failed)
	}
}

func TestKeyObserverGenerateAndReload(t *testing.T) {
	km := &switchKM{inner: memory.New()}
	obs := &recorder{}
	cfg := testConfig(t, clock.NewFake(start))
	cfg.KeyManager = km
	cfg.KeyObserver = obs
	cfg.CertPath = filepath.Join(t.TempDir(), "ca.pem")

	km.fail.Store(true)
	if _, err := ca.New(context.Background(), cfg); !errors.Is(err, errUnplugged) {
		t.Fatalf("New with a failing key manager: %v", err)
	}
	// GetKey found no certificate to load a key for; GenerateKey failed.
	if ok, failed := obs.counts(); ok != 0 || len(failed) != 1 || failed[0] != "generate: hsm unplugged" {
		t.Fatalf("ok %d, failed %q", ok, failed)
	}

	km.fail.Store(false)
	newCA(t, cfg)
	// A reload loads the key (GetKey): reported.
	obs2 := &recorder{}
	cfg.KeyObserver = obs2
	km.fail.Store(true)
	if _, err := ca.New(context.Background(), cfg); !errors.Is(err, errUnplugged) {
		t.Fatalf("reload with a failing key manager: %v", err)
	}
	if ok, failed := obs2.counts(); ok != 0 || len(failed) != 1 || failed[0] != "get: hsm unplugged" {
		t.Fatalf("reload: ok %d, failed %q", ok, failed)
	}
}

func TestKeyObserverNotFoundIsNoFailure(t *testing.T) {
	obs := &recorder{}
	cfg := testConfig(t, clock.NewFake(start))
	cfg.KeyManager = failingKM{} // GetKey: ErrKeyNotFound, GenerateKey: "hsm offline"
	cfg.KeyObserver = obs
	cfg.CertPath = filepath.Join(t.TempDir(), "ca.pem")
	// A certificate whose key this key manager does not hold.
	other := testConfig(t, clock.NewFake(start))
	other.CertPath = cfg.CertPath
	newCA(t, other)
	if _, err := ca.New(context.Background(), cfg); err == nil {
		t.Fatal("New succeeded without a key")
	}
	if ok, failed := obs.counts(); ok != 0 || len(failed) != 1 || failed[0] != "generate: hsm offline" {
		t.Fatalf("ok %d, failed %q; want only the GenerateKey failure", ok, failed)
	}
}

func TestKeyObserverSlotManager(t *testing.T) {
	for _, kind := range []ca.SlotKind{ca.KindX509, ca.KindJWT} {
		t.Run(string(kind), func(t *testing.T) {
			km := &switchKM{inner: memory.New()}
			obs := &recorder{}
			clk := clock.NewFake(start)
			cfg := testConfig(t, clk)
			cfg.KeyManager = km
			cfg.KeyObserver = obs
			state := filepath.Join(t.TempDir(), "slots.json")
			open := func() (*ca.Manager, error) {
				return ca.NewManager(context.Background(), ca.ManagerConfig{
					Kind: kind, CA: cfg, Propagation: time.Hour, StatePath: state,
					Publisher: &fakeBundle{entries: map[string]string{}},
				})
			}
			m, err := open()
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			km.fail.Store(true)
			if _, err := m.Prepare(ctx); !errors.Is(err, errUnplugged) {
				t.Fatalf("Prepare with a failing key manager: %v", err)
			}
			if _, failed := obs.counts(); len(failed) != 1 || failed[0] != "generate: hsm unplugged" {
				t.Fatalf("failed %q", failed)
			}
			km.fail.Store(false)
			s, err := m.Prepare(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := m.Activate(ctx, s.ID); err != nil {
				t.Fatal(err)
			}
			before, _ := obs.counts()
			id := spiffeid.RequireFromPath(td, "/web")
			sign := func() error {
				if kind == ca.KindJWT {
					_, _, err := m.JWTSigner().SignJWTSVID(ctx, ca.JWTSVIDParams{SPIFFEID: id, Audience: []string{"a"}})
					return err
				}
				_, err := m.X509CA().SignX509SVIDFromCSR(ctx, mustCSR(t, genKey(t, "p256"), nil), id, nil, 0)
				return err
			}
			if err := sign(); err != nil {
				t.Fatal(err)
			}
			if ok, _ := obs.counts(); ok != before+1 {
				t.Fatalf("ok = %d after a signature, want %d", ok, before+1)
			}
			km.fail.Store(true)
			if err := sign(); !errors.Is(err, errUnplugged) {
				t.Fatalf("signing with a failing key: %v", err)
			}
			if _, failed := obs.counts(); len(failed) != 2 || failed[1] != "sign: hsm unplugged" {
				t.Fatalf("failed %q", failed)
			}
			// Reloading the slots while the backend fails: GetKey reported.
			if _, err := open(); err != nil {
				t.Fatal(err)
			}
			if _, failed := obs.counts(); len(failed) != 3 || failed[2] != "get: hsm unplugged" {
				t.Fatalf("failed %q", failed)
			}
		})
	}
}

// atomicObserver is a KeyObserver that costs what a server's does: an
// atomic store per operation.
type atomicObserver struct{ ok, failed atomic.Int64 }

func (o *atomicObserver) KeyOK(string)            { o.ok.Add(1) }
func (o *atomicObserver) KeyFailed(string, error) { o.failed.Add(1) }

// BenchmarkSignX509SVIDObserved is BenchmarkSignX509SVID with a
// KeyObserver: the cost of reporting each signature.
func BenchmarkSignX509SVIDObserved(b *testing.B) {
	cfg := testConfig(b, clock.New())
	obs := &atomicObserver{}
	cfg.KeyObserver = obs
	c := newCA(b, cfg)
	csr := mustCSR(b, genKey(b, "p256"), nil)
	id := spiffeid.RequireFromPath(td, "/ns/prod/sa/web")
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.SignX509SVIDFromCSR(ctx, csr, id, []string{"web.example.org"}, 0); err != nil {
			b.Fatal(err)
		}
	}
	if obs.ok.Load() < int64(b.N) || obs.failed.Load() != 0 {
		b.Fatalf("observer saw %d ok and %d failed of %d signatures", obs.ok.Load(), obs.failed.Load(), b.N)
	}
}

// TestKeyObserverTimeoutIsFailureCancelIsNot: a backend that times out
// fails; a call its caller canceled (the server stopping) does not.
func TestKeyObserverTimeoutIsFailureCancelIsNot(t *testing.T) {
	for _, tc := range []struct {
		err    error
		failed bool
	}{
		{fmt.Errorf("awskms: sign: %w", context.DeadlineExceeded), true},
		{fmt.Errorf("awskms: generate: %w", context.Canceled), false},
	} {
		obs := &recorder{}
		cfg := testConfig(t, clock.NewFake(start))
		cfg.KeyManager = errKM{tc.err}
		cfg.KeyObserver = obs
		if _, err := ca.New(context.Background(), cfg); !errors.Is(err, tc.err) {
			t.Fatalf("New: %v, want %v", err, tc.err)
		}
		if _, failed := obs.counts(); (len(failed) == 1) != tc.failed || len(failed) > 1 {
			t.Errorf("%v: failures reported %q, want a failure: %v", tc.err, failed, tc.failed)
		}
	}
}

type errKM struct{ err error }

func (k errKM) GenerateKey(context.Context, string, ca.KeyType) (crypto.Signer, error) {
	return nil, k.err
}
func (k errKM) GetKey(context.Context, string) (crypto.Signer, error) { return nil, k.err }
