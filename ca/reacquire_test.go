package ca_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"io"
	"math/big"
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

// errStale is what a flakyKM signer fails with once its backend was
// reset: its handle is stale, like a PKCS#11 key after the token came
// back, and it never works again.
var errStale = errors.New("CKR_OBJECT_HANDLE_INVALID")

// flakyKM is a memory key manager whose backend can be reset (reset):
// the signers obtained before fail for good, and the next getFails
// GetKey calls fail with errUnplugged; a GetKey after those returns a
// working signer. block, when set, holds every GetKey until it is
// closed (entered is told first).
type flakyKM struct {
	inner    *memory.KeyManager
	gen      atomic.Int64
	getFails atomic.Int64
	gets     atomic.Int64
	block    chan struct{}
	entered  chan struct{}
}

func newFlakyKM() *flakyKM { return &flakyKM{inner: memory.New()} }

// reset makes every signer obtained so far fail, and the next n GetKey
// calls.
func (k *flakyKM) reset(n int) {
	k.gen.Add(1)
	k.getFails.Store(int64(n))
}

func (k *flakyKM) GenerateKey(ctx context.Context, id string, kt ca.KeyType) (crypto.Signer, error) {
	s, err := k.inner.GenerateKey(ctx, id, kt)
	if err != nil {
		return nil, err
	}
	return &flakySigner{Signer: s, km: k, gen: k.gen.Load()}, nil
}

func (k *flakyKM) GetKey(ctx context.Context, id string) (crypto.Signer, error) {
	k.gets.Add(1)
	if k.block != nil {
		k.entered <- struct{}{}
		<-k.block
	}
	if k.getFails.Add(-1) >= 0 {
		return nil, errUnplugged
	}
	s, err := k.inner.GetKey(ctx, id)
	if err != nil {
		return nil, err
	}
	return &flakySigner{Signer: s, km: k, gen: k.gen.Load()}, nil
}

type flakySigner struct {
	crypto.Signer
	km  *flakyKM
	gen int64
}

func (s *flakySigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if s.gen != s.km.gen.Load() {
		return nil, errStale
	}
	return s.Signer.Sign(r, digest, opts)
}

// reacquireFixture is a CA on a flakyKM, a fake clock and a recorder.
type reacquireFixture struct {
	km  *flakyKM
	clk *clock.Fake
	obs *recorder
	ca  *ca.CA
	csr []byte
}

func newReacquireFixture(t *testing.T) *reacquireFixture {
	f := &reacquireFixture{km: newFlakyKM(), clk: clock.NewFake(start), obs: &recorder{}}
	cfg := testConfig(t, f.clk)
	cfg.KeyManager = f.km
	cfg.KeyObserver = f.obs
	f.ca = newCA(t, cfg)
	f.csr = mustCSR(t, genKey(t, "p256"), nil)
	return f
}

func (f *reacquireFixture) sign() error {
	_, err := f.ca.SignX509SVIDFromCSR(context.Background(), f.csr, spiffeid.RequireFromPath(td, "/web"), nil, 0)
	return err
}

// TestReacquireBackoff: a key whose backend was reset fails with an error
// naming it and the scheduled re-acquire; GetKey is called after 1 s,
// then 2 s, 4 s... up to 1 min (each jittered in [d/2, d]), never
// earlier, until it succeeds; the CA then signs again with the same key
// and calls GetKey no more. Every GetKey is reported to the observer.
func TestReacquireBackoff(t *testing.T) {
	f := newReacquireFixture(t)
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 32 * time.Second, time.Minute, time.Minute}
	f.km.reset(len(want) - 1)
	err := f.sign()
	if !errors.Is(err, errStale) || !strings.HasPrefix(err.Error(), `ca: signing X509-SVID for "spiffe://example.org/web": key "x509-ca" failed, re-acquire from the key manager scheduled in `) {
		t.Fatalf("first failure: %v", err)
	}
	if n := f.km.gets.Load(); n != 0 {
		t.Fatalf("GetKey called %d times at the failure, want 0", n)
	}
	failedAt := f.clk.Now()
	for i, d := range want {
		// Not before d/2: the signature goes to the stale key, no GetKey.
		f.clk.Set(failedAt.Add(d/2 - time.Millisecond))
		if err := f.sign(); !errors.Is(err, errStale) || !strings.Contains(err.Error(), "re-acquire from the key manager scheduled in ") {
			t.Fatalf("attempt %d, before %s: %v", i, d/2, err)
		}
		if n := f.km.gets.Load(); n != int64(i) {
			t.Fatalf("attempt %d: GetKey called %d times before %s, want %d", i, n, d/2, i)
		}
		// At d (the longest jitter), the re-acquire runs.
		f.clk.Set(failedAt.Add(d))
		err := f.sign()
		if n := f.km.gets.Load(); n != int64(i+1) {
			t.Fatalf("attempt %d: GetKey called %d times after %s, want %d", i, n, d, i+1)
		}
		failedAt = f.clk.Now()
		if i == len(want)-1 {
			if err != nil {
				t.Fatalf("after the backend came back: %v", err)
			}
			break
		}
		if !errors.Is(err, errUnplugged) || !strings.Contains(err.Error(), `key "x509-ca" failed, re-acquire from the key manager scheduled in `) {
			t.Fatalf("attempt %d: a failing GetKey: %v", i, err)
		}
	}
	for range 3 {
		if err := f.sign(); err != nil {
			t.Fatal(err)
		}
	}
	if n := f.km.gets.Load(); n != int64(len(want)) {
		t.Fatalf("GetKey called %d times, want %d (none once the key works)", n, len(want))
	}
	ok, failed := f.obs.counts()
	gets := 0
	for _, s := range failed {
		if s == "get: hsm unplugged" {
			gets++
		}
	}
	if gets != len(want)-1 {
		t.Fatalf("observer saw %d failed GetKey calls in %q, want %d", gets, failed, len(want)-1)
	}
	// New: generate and self-sign; then the good GetKey and 4 signatures.
	if ok != 2+1+4 {
		t.Fatalf("observer saw %d successes, want 7", ok)
	}
	// Recovered: a new failure starts again at 1 s.
	f.km.reset(0)
	if err := f.sign(); !errors.Is(err, errStale) {
		t.Fatal(err)
	}
	f.clk.Add(time.Second)
	if err := f.sign(); err != nil {
		t.Fatalf("1 s after a new failure: %v", err)
	}
}

// TestReacquireRefusesAnotherKey: when the key manager answers GetKey
// with another key than the CA's (the name now holds a different key),
// it is refused, reported, and the CA keeps failing: it never signs with
// a key that is not its own.
func TestReacquireRefusesAnotherKey(t *testing.T) {
	f := newReacquireFixture(t)
	f.km.reset(0)
	if _, err := f.km.inner.GenerateKey(context.Background(), "x509-ca", ca.KeyTypeECP256); err != nil {
		t.Fatal(err)
	}
	if err := f.sign(); !errors.Is(err, errStale) {
		t.Fatal(err)
	}
	for i := range 3 {
		f.clk.Add(time.Hour)
		err := f.sign()
		if err == nil || !strings.Contains(err.Error(), `key "x509-ca" failed, re-acquire from the key manager scheduled in `) ||
			!strings.HasSuffix(err.Error(), `: the key manager returned another key (a different public key) for "x509-ca": refused`) {
			t.Fatalf("attempt %d: %v", i, err)
		}
		if n := f.km.gets.Load(); n != int64(i+1) {
			t.Fatalf("GetKey called %d times, want %d", n, i+1)
		}
	}
	ok, failed := f.obs.counts()
	if ok != 2 || len(failed) != 1+3 || failed[0] != "sign: CKR_OBJECT_HANDLE_INVALID" || failed[len(failed)-1] != `get: the key manager returned another key (a different public key) for "x509-ca": refused` {
		t.Fatalf("observer saw %q", failed)
	}
}

// TestReacquireSingleFlight: while a re-acquire runs (its GetKey blocks),
// other signatures fail at once with the last error, without another
// GetKey; the re-acquire then signs and the others succeed again.
func TestReacquireSingleFlight(t *testing.T) {
	f := newReacquireFixture(t)
	f.km.reset(0)
	if err := f.sign(); !errors.Is(err, errStale) {
		t.Fatal(err)
	}
	f.km.block, f.km.entered = make(chan struct{}), make(chan struct{}, 1)
	f.clk.Add(time.Second)
	first := make(chan error, 1)
	go func() { first <- f.sign() }()
	<-f.km.entered
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- f.sign()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if !errors.Is(err, errStale) || !strings.Contains(err.Error(), `key "x509-ca" failed, re-acquire from the key manager in progress: `) {
			t.Errorf("a signature during the re-acquire: %v", err)
		}
	}
	close(f.km.block)
	if err := <-first; err != nil {
		t.Fatalf("the re-acquiring signature: %v", err)
	}
	if err := f.sign(); err != nil {
		t.Fatal(err)
	}
	if n := f.km.gets.Load(); n != 1 {
		t.Fatalf("GetKey called %d times, want 1", n)
	}
}

// TestReacquireSlots: the slot manager's keys (X.509 CA and JWT, as
// prepared and as restored from the state file) recover the same way,
// and keep their public key: a JWT-SVID signed after the re-acquire
// verifies with the published key.
func TestReacquireSlots(t *testing.T) {
	for _, kind := range []ca.SlotKind{ca.KindX509, ca.KindJWT} {
		for _, restored := range []bool{false, true} {
			name := string(kind)
			if restored {
				name += "/restored"
			}
			t.Run(name, func(t *testing.T) {
				km := newFlakyKM()
				clk := clock.NewFake(start)
				cfg := testConfig(t, clk)
				cfg.KeyManager = km
				state := t.TempDir() + "/slots.json"
				open := func() *ca.Manager {
					m, err := ca.NewManager(context.Background(), ca.ManagerConfig{
						Kind: kind, CA: cfg, Propagation: time.Hour, StatePath: state,
						Publisher: &fakeBundle{entries: map[string]string{}},
					})
					if err != nil {
						t.Fatal(err)
					}
					return m
				}
				ctx := context.Background()
				m := open()
				s, err := m.Prepare(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if _, _, err := m.Activate(ctx, s.ID); err != nil {
					t.Fatal(err)
				}
				if restored {
					m = open()
				}
				id := spiffeid.RequireFromPath(td, "/web")
				sign := func() (string, error) {
					if kind == ca.KindJWT {
						tok, _, err := m.JWTSigner().SignJWTSVID(ctx, ca.JWTSVIDParams{SPIFFEID: id, Audience: []string{"a"}})
						return tok, err
					}
					_, err := m.X509CA().SignX509SVIDFromCSR(ctx, mustCSR(t, genKey(t, "p256"), nil), id, nil, 0)
					return "", err
				}
				if _, err := sign(); err != nil {
					t.Fatal(err)
				}
				km.reset(1)
				_, err = sign()
				if !errors.Is(err, errStale) || !strings.Contains(err.Error(), `key "`+s.KeyID+`" failed, re-acquire from the key manager scheduled in `) {
					t.Fatalf("after the reset: %v", err)
				}
				clk.Add(time.Second)
				if _, err := sign(); !errors.Is(err, errUnplugged) {
					t.Fatalf("GetKey failing: %v", err)
				}
				clk.Add(2 * time.Second)
				tok, err := sign()
				if err != nil {
					t.Fatalf("after the re-acquire: %v", err)
				}
				if kind == ca.KindJWT {
					pub, err := x509.ParsePKIXPublicKey(s.PublicKey)
					if err != nil {
						t.Fatal(err)
					}
					verifyJWT(t, tok, s.ID, pub)
				}
				if n := km.gets.Load(); n != map[bool]int64{false: 2, true: 3}[restored] {
					t.Fatalf("GetKey called %d times", n)
				}
			})
		}
	}
}

// TestReacquireNotOnCallerErrors: a signature canceled by its caller is
// no backend failure: no re-acquire follows.
func TestReacquireNotOnCallerErrors(t *testing.T) {
	km := &cancelKM{flakyKM: newFlakyKM()}
	clk := clock.NewFake(start)
	cfg := testConfig(t, clk)
	cfg.KeyManager = km
	c := newCA(t, cfg)
	km.cancel.Store(true)
	csr := mustCSR(t, genKey(t, "p256"), nil)
	id := spiffeid.RequireFromPath(td, "/web")
	if _, err := c.SignX509SVIDFromCSR(context.Background(), csr, id, nil, 0); !errors.Is(err, context.Canceled) || strings.Contains(err.Error(), "re-acquire") {
		t.Fatalf("canceled signature: %v", err)
	}
	km.cancel.Store(false)
	clk.Add(time.Hour)
	if _, err := c.SignX509SVIDFromCSR(context.Background(), csr, id, nil, 0); err != nil {
		t.Fatal(err)
	}
	if n := km.gets.Load(); n != 0 {
		t.Fatalf("GetKey called %d times after a canceled signature", n)
	}
}

// cancelKM's signers fail with context.Canceled while cancel is set.
type cancelKM struct {
	*flakyKM
	cancel atomic.Bool
}

func (k *cancelKM) GenerateKey(ctx context.Context, id string, kt ca.KeyType) (crypto.Signer, error) {
	s, err := k.flakyKM.GenerateKey(ctx, id, kt)
	if err != nil {
		return nil, err
	}
	return cancelSigner{s, k}, nil
}

type cancelSigner struct {
	crypto.Signer
	km *cancelKM
}

func (s cancelSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if s.km.cancel.Load() {
		return nil, context.Canceled
	}
	return s.Signer.Sign(r, digest, opts)
}

// verifyJWT checks the ES256 signature of tok with pub and its kid (the
// token's times are the fake clock's, so go-spiffe's validation, on the
// wall clock, is not used).
func verifyJWT(t *testing.T, tok, kid string, pub crypto.PublicKey) {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("token %q has %d parts", tok, len(parts))
	}
	header, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil || !strings.Contains(string(header), `"kid":"`+kid+`"`) {
		t.Fatalf("header %s (%v): want kid %q", header, err, kid)
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || len(sig) != 64 {
		t.Fatalf("signature %x (%v)", sig, err)
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
	if !ecdsa.Verify(pub.(*ecdsa.PublicKey), digest[:], r, s) {
		t.Fatal("the JWT-SVID does not verify with the published key")
	}
}
