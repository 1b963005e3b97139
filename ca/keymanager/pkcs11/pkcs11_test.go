package pkcs11

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/ca/keymanager/internal/signtest"
	"github.com/sigil-id/sigil/ca/keymanager/pkcs11/softhsmtest"
	"github.com/sigil-id/sigil/clock"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// token creates a SoftHSM2 token for the test and points SoftHSM2 at it.
func token(t testing.TB) *softhsmtest.Token {
	t.Helper()
	tk := softhsmtest.New(t, "sigil")
	tk.Setenv(t)
	return tk
}

func config(tk *softhsmtest.Token, node string) Config {
	c := DefaultConfig()
	c.Module, c.TokenLabel, c.PIN = tk.Module, tk.Label, tk.PIN
	c.TrustDomain, c.NodeName = td, node
	return c
}

// open returns a Store on cfg, closed when the test ends.
func open(t testing.TB, cfg Config) *Store {
	t.Helper()
	s, err := NewStore(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func keyManager(t testing.TB, s *Store, scope ca.KeyScope) *KeyManager {
	t.Helper()
	km, err := s.OpenKeyManager(context.Background(), scope)
	if err != nil {
		t.Fatal(err)
	}
	return km.(*KeyManager)
}

// TestSoftHSM2Installed fails (it does not skip) when SoftHSM2 is missing,
// with the command that installs it: every test here needs it.
func TestSoftHSM2Installed(t *testing.T) {
	if !strings.Contains(softhsmtest.InstallHint, "apt-get install -y --no-install-recommends softhsm2") {
		t.Errorf("install hint %q", softhsmtest.InstallHint)
	}
	if _, _, err := softhsmtest.Find(); err != nil {
		t.Fatal(err)
	}
	// Without softhsm2-util in PATH, the error says how to install it.
	t.Setenv("PATH", t.TempDir())
	if _, _, err := softhsmtest.Find(); err == nil || err.Error() != "softhsm2-util is not in PATH: "+softhsmtest.InstallHint {
		t.Errorf("Find without softhsm2-util: %v", err)
	}
}

func samePublic(a, b crypto.Signer) bool {
	return a.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(b.Public())
}

func TestGenerateGetSignVerify(t *testing.T) {
	tk := token(t)
	s := open(t, config(tk, "s1"))
	if !s.Persistent() {
		t.Error("Persistent() = false")
	}
	km := keyManager(t, s, ca.KeyScopeAuthorities)
	ctx := context.Background()
	for _, kt := range []ca.KeyType{ca.KeyTypeECP256, ca.KeyTypeECP384, ca.KeyTypeRSA2048} {
		t.Run(string(kt), func(t *testing.T) {
			id := "x509-ca-" + string(kt)
			k, err := km.GenerateKey(ctx, id, kt)
			if err != nil {
				t.Fatal(err)
			}
			if err := checkType(k.Public(), kt); err != nil {
				t.Fatal(err)
			}
			if _, ok := k.(*ecdsa.PrivateKey); ok {
				t.Fatal("the key is in process memory")
			}
			signtest.SignVerify(t, k)
			got, err := km.GetKey(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if !samePublic(got, k) {
				t.Fatal("GetKey returned another key")
			}
			signtest.SignVerify(t, got)
		})
	}
	if _, err := km.GenerateKey(ctx, "k", "ed25519"); err == nil || !strings.Contains(err.Error(), `pkcs11: ca: unsupported key type "ed25519"`) {
		t.Errorf("ed25519: %v", err)
	}
	for _, id := range []string{"", "a\nb", strings.Repeat("k", 129), "\xff"} {
		if _, err := km.GenerateKey(ctx, id, ca.KeyTypeECP256); err == nil || !strings.HasPrefix(err.Error(), "pkcs11: key id") {
			t.Errorf("id %q: %v", id, err)
		}
	}
}

// TestKeysSurviveReopen: keys are found again by a new store (a restart),
// per scope and node name; GenerateKey replaces and DeleteKey destroys, in
// the token.
func TestKeysSurviveReopen(t *testing.T) {
	tk := token(t)
	ctx := context.Background()
	s1 := open(t, config(tk, "s1"))
	auth, err := keyManager(t, s1, ca.KeyScopeAuthorities).GenerateKey(ctx, "x509-ca-1", ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	cluster, err := keyManager(t, s1, ca.KeyScopeClusterIdentity).GenerateKey(ctx, "x509-ca-1", ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	old, err := keyManager(t, s1, ca.KeyScopeAuthorities).GenerateKey(ctx, "x509-ca-2", ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	if samePublic(auth, cluster) {
		t.Fatal("two scopes share a key")
	}
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}

	s2 := open(t, config(tk, "s1"))
	a2, c2 := keyManager(t, s2, ca.KeyScopeAuthorities), keyManager(t, s2, ca.KeyScopeClusterIdentity)
	for name, c := range map[string]struct {
		km   *KeyManager
		want crypto.Signer
	}{"authorities": {a2, auth}, "cluster identity": {c2, cluster}} {
		got, err := c.km.GetKey(ctx, "x509-ca-1")
		if err != nil {
			t.Fatalf("%s after reopening: %v", name, err)
		}
		if !samePublic(got, c.want) {
			t.Fatalf("%s: another key after reopening", name)
		}
		signtest.SignVerify(t, got)
	}
	// Another server sharing the token sees none of s1's keys.
	other := keyManager(t, open(t, config(tk, "s2")), ca.KeyScopeAuthorities)
	if _, err := other.GetKey(ctx, "x509-ca-1"); !errors.Is(err, ca.ErrKeyNotFound) {
		t.Fatalf("node s2 got s1's key: %v", err)
	}
	// GenerateKey replaces: the old pair is gone from the token.
	repl, err := a2.GenerateKey(ctx, "x509-ca-2", ca.KeyTypeECP384)
	if err != nil {
		t.Fatal(err)
	}
	if samePublic(repl, old) {
		t.Fatal("GenerateKey kept the old key")
	}
	// DeleteKey destroys; deleting a missing key is no error.
	if err := a2.DeleteKey(ctx, "x509-ca-1"); err != nil {
		t.Fatal(err)
	}
	if err := a2.DeleteKey(ctx, "never-made"); err != nil {
		t.Fatalf("deleting a missing key: %v", err)
	}
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}

	s3 := open(t, config(tk, "s1"))
	a3 := keyManager(t, s3, ca.KeyScopeAuthorities)
	_, err = a3.GetKey(ctx, "x509-ca-1")
	if !errors.Is(err, ca.ErrKeyNotFound) || !strings.HasPrefix(err.Error(), `pkcs11: key "x509-ca-1" (label "sigil/example.org/s1/authorities/x509-ca-1") is not in token "sigil"`) {
		t.Fatalf("deleted key: %v", err)
	}
	got, err := a3.GetKey(ctx, "x509-ca-2")
	if err != nil {
		t.Fatal(err)
	}
	if !samePublic(got, repl) || checkType(got.Public(), ca.KeyTypeECP384) != nil {
		t.Fatal("the replacing key is not the one in the token")
	}
	if _, err := keyManager(t, s3, ca.KeyScopeClusterIdentity).GetKey(ctx, "x509-ca-1"); err != nil {
		t.Fatalf("deleting in one scope touched the other: %v", err)
	}
}

func TestSlotSelection(t *testing.T) {
	tk := token(t)
	cfg := config(tk, "s1")
	cfg.TokenLabel, cfg.Slot = "", &tk.Slot
	km := keyManager(t, open(t, cfg), ca.KeyScopeAuthorities)
	k, err := km.GenerateKey(context.Background(), "k", ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	signtest.SignVerify(t, k)
	// The same key, through the token's label.
	got, err := keyManager(t, open(t, config(tk, "s1")), ca.KeyScopeAuthorities).GetKey(context.Background(), "k")
	if err != nil || !samePublic(got, k) {
		t.Fatalf("by label: %v", err)
	}
}

func TestOpenFailures(t *testing.T) {
	tk := token(t)
	ctx := context.Background()
	const secretPIN = "98765-not-the-pin"
	notLib := filepath.Join(t.TempDir(), "lib.so")
	if err := os.WriteFile(notLib, []byte("not a library"), 0o644); err != nil {
		t.Fatal(err)
	}
	bad := func(f func(*Config)) Config {
		c := config(tk, "s1")
		f(&c)
		return c
	}
	missingSlot := 424242
	for name, c := range map[string]struct {
		cfg  Config
		want string
	}{
		"wrong PIN":     {bad(func(c *Config) { c.PIN = secretPIN }), `pkcs11: logging in to token "sigil": wrong PIN (CKR_PIN_INCORRECT)`},
		"missing token": {bad(func(c *Config) { c.TokenLabel = "nope" }), `pkcs11: no token "nope" in module ` + tk.Module + " (list the tokens with softhsm2-util --show-slots"},
		"missing slot":  {bad(func(c *Config) { c.TokenLabel, c.Slot = "", &missingSlot }), `pkcs11: no token slot 424242 in module`},
		"not a module":  {bad(func(c *Config) { c.Module = notLib }), "pkcs11: module " + notLib + " could not be loaded: is it a PKCS#11 library for this platform?"},
	} {
		s := open(t, c.cfg)
		_, err := s.OpenKeyManager(ctx, ca.KeyScopeAuthorities)
		if err == nil || !strings.HasPrefix(err.Error(), c.want) {
			t.Errorf("%s: %v\nwant %s", name, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), secretPIN) {
			t.Errorf("%s: the error holds the PIN: %v", name, err)
		}
	}
	// The right PIN still works after a wrong one.
	if _, err := keyManager(t, open(t, config(tk, "s1")), ca.KeyScopeAuthorities).GenerateKey(ctx, "k", ca.KeyTypeECP256); err != nil {
		t.Fatal(err)
	}
	if _, err := open(t, config(tk, "s1")).OpenKeyManager(ctx, "other"); err == nil || err.Error() != `pkcs11: unknown key scope "other"` {
		t.Errorf("unknown scope: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	tk := token(t)
	slot := 1
	neg := -1
	for name, c := range map[string]struct {
		f    func(*Config)
		want string
	}{
		"no module":       {func(c *Config) { c.Module = "" }, "pkcs11: the module path is empty"},
		"module missing":  {func(c *Config) { c.Module = "/nonexistent/libsofthsm2.so" }, "pkcs11: module /nonexistent/libsofthsm2.so does not exist (for SoftHSM2: apt-get install softhsm2)"},
		"module is a dir": {func(c *Config) { c.Module = t.TempDir() }, "is not a regular file"},
		"no token":        {func(c *Config) { c.TokenLabel = "" }, "pkcs11: no token: set a token label or a slot"},
		"label and slot":  {func(c *Config) { c.Slot = &slot }, "pkcs11: both a token label and a slot are set: choose one"},
		"negative slot":   {func(c *Config) { c.TokenLabel, c.Slot = "", &neg }, "pkcs11: slot -1 is negative"},
		"no PIN":          {func(c *Config) { c.PIN = "" }, "pkcs11: the PIN is empty"},
		"no trust domain": {func(c *Config) { c.TrustDomain = spiffeid.TrustDomain{} }, "pkcs11: the trust domain is not set"},
		"no node name":    {func(c *Config) { c.NodeName = "" }, "pkcs11: the node name is not set"},
		"slash in node":   {func(c *Config) { c.NodeName = "a/b" }, `pkcs11: node name "a/b" holds '/'`},
		"bad prefix":      {func(c *Config) { c.KeyLabelPrefix = "a b" }, `pkcs11: key label prefix: "a b" holds ' '`},
		"prefix too long": {func(c *Config) { c.KeyLabelPrefix = strings.Repeat("p", 17) }, "pkcs11: key label prefix: must be 1 to 16 characters"},
	} {
		cfg := config(tk, "s1")
		c.f(&cfg)
		if _, err := NewStore(cfg); err == nil || !strings.HasPrefix(err.Error(), c.want) && !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
	cfg := config(tk, "s1")
	if s := cfg.String(); strings.Contains(s, tk.PIN) || !strings.Contains(s, "sigil/example.org/s1") {
		t.Errorf("Config.String() = %q", s)
	}
}

// TestClosed: after Close, signers, key managers and the store fail with
// a clear error, never panic, and Close again is harmless.
func TestClosed(t *testing.T) {
	tk := token(t)
	ctx := context.Background()
	s := open(t, config(tk, "s1"))
	km := keyManager(t, s, ca.KeyScopeAuthorities)
	ec, err := km.GenerateKey(ctx, "ec", ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	rk, err := km.GenerateKey(ctx, "rsa", ca.KeyTypeRSA2048)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	digest := sha256.Sum256([]byte("x"))
	for name, k := range map[string]crypto.Signer{"ec": ec, "rsa": rk} {
		_, err := k.Sign(rand.Reader, digest[:], crypto.SHA256)
		if !errors.Is(err, errClosed) || err.Error() != `pkcs11: sign with key "`+name+`": the key store is closed` {
			t.Errorf("sign after Close: %v", err)
		}
	}
	if _, err := km.GetKey(ctx, "ec"); !errors.Is(err, errClosed) {
		t.Errorf("GetKey after Close: %v", err)
	}
	if _, err := km.GenerateKey(ctx, "ec2", ca.KeyTypeECP256); !errors.Is(err, errClosed) {
		t.Errorf("GenerateKey after Close: %v", err)
	}
	if err := km.DeleteKey(ctx, "ec"); !errors.Is(err, errClosed) {
		t.Errorf("DeleteKey after Close: %v", err)
	}
	if _, err := s.OpenKeyManager(ctx, ca.KeyScopeAuthorities); !errors.Is(err, errClosed) {
		t.Errorf("OpenKeyManager after Close: %v", err)
	}
	// A store closed before it opened the token is closed too.
	never := open(t, config(tk, "s1"))
	if err := never.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := never.OpenKeyManager(ctx, ca.KeyScopeAuthorities); !errors.Is(err, errClosed) {
		t.Errorf("OpenKeyManager after an early Close: %v", err)
	}
}

// TestConcurrentSign: many goroutines sign with one key, and generate and
// read keys, at once (run with -race).
func TestConcurrentSign(t *testing.T) {
	tk := token(t)
	ctx := context.Background()
	km := keyManager(t, open(t, config(tk, "s1")), ca.KeyScopeAuthorities)
	k, err := km.GenerateKey(ctx, "k", ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("concurrent"))
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				sig, err := k.Sign(rand.Reader, digest[:], crypto.SHA256)
				if err != nil {
					errs <- err
					return
				}
				if !ecdsa.VerifyASN1(k.Public().(*ecdsa.PublicKey), digest[:], sig) {
					errs <- errors.New("bad signature")
					return
				}
			}
			id := "k" + string(rune('a'+i))
			if _, err := km.GenerateKey(ctx, id, ca.KeyTypeECP256); err != nil {
				errs <- err
				return
			}
			if _, err := km.GetKey(ctx, id); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestTokenFailure: when the token fails underneath (here its files are
// removed), signing and generating fail with a clear error, the cause
// from the token, and no fallback; nothing panics.
func TestTokenFailure(t *testing.T) {
	tk := token(t)
	ctx := context.Background()
	km := keyManager(t, open(t, config(tk, "s1")), ca.KeyScopeAuthorities)
	k, err := km.GenerateKey(ctx, "k", ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(tk.Dir); err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("x"))
	for range 2 {
		_, err = k.Sign(rand.Reader, digest[:], crypto.SHA256)
		if err == nil || err.Error() != `pkcs11: sign with key "k": 0x82: CKR_OBJECT_HANDLE_INVALID` {
			t.Fatalf("sign with the token gone: %v", err)
		}
	}
	// GetKey re-opens the token after the failed signature (not the
	// stale key): the token is gone, a failure, not a missing key.
	_, err = km.GetKey(ctx, "k")
	if err == nil || errors.Is(err, ca.ErrKeyNotFound) || !strings.HasPrefix(err.Error(), `pkcs11: opening token "sigil" with module `) || !strings.HasSuffix(err.Error(), "CKR_GENERAL_ERROR") || strings.Count(err.Error(), "pkcs11:") != 1 {
		t.Fatalf("GetKey with the token gone: %v (want a fresh opening of the token, not the stale key)", err)
	}
	// The key held signs no more, saying why.
	_, err = k.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err == nil || !strings.HasPrefix(err.Error(), `pkcs11: sign with key "k": the token was closed after a failure and could not be opened again: opening token "sigil" with module `) || !strings.HasSuffix(err.Error(), "CKR_GENERAL_ERROR") {
		t.Fatalf("sign with the token gone and closed: %v", err)
	}
	_, err = km.GenerateKey(ctx, "k2", ca.KeyTypeECP256)
	if err == nil || !strings.HasPrefix(err.Error(), `pkcs11: opening token "sigil" with module `) || strings.Count(err.Error(), "pkcs11:") != 1 {
		t.Fatalf("generate with the token gone: %v", err)
	}
}

// TestGenerateFailureReopens: a key generation that fails in an open
// token (its files moved away) makes the next call re-open the token.
func TestGenerateFailureReopens(t *testing.T) {
	tk := token(t)
	ctx := context.Background()
	km := keyManager(t, open(t, config(tk, "s1")), ca.KeyScopeAuthorities)
	if _, err := km.GenerateKey(ctx, "k", ca.KeyTypeECP256); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tk.Dir, tk.Dir+".away"); err != nil {
		t.Fatal(err)
	}
	_, err := km.GenerateKey(ctx, "k2", ca.KeyTypeECP256)
	if err == nil || !strings.HasPrefix(err.Error(), `pkcs11: generate ec-p256 key "k2" (label "sigil/example.org/s1/authorities/k2"): 0x`) || strings.Count(err.Error(), "pkcs11:") != 1 {
		t.Fatalf("generate with the token gone: %v", err)
	}
	if err := os.Rename(tk.Dir+".away", tk.Dir); err != nil {
		t.Fatal(err)
	}
	k, err := km.GetKey(ctx, "k")
	if err != nil {
		t.Fatalf("GetKey with the token back: %v", err)
	}
	signtest.SignVerify(t, k)
}

// TestTokenBackWithoutRestart: the token's files are moved away (the
// token unplugged): the active slot's signatures fail, with the token's
// error; the files are put back: after the backoff, the same slot signs
// again, with the same key, in the same process (the re-acquire of
// package ca calls GetKey, which re-opens the token). The other scope's
// key, held from before, signs again too, without a GetKey of its own.
func TestTokenBackWithoutRestart(t *testing.T) {
	tk := token(t)
	ctx := context.Background()
	s := open(t, config(tk, "s1"))
	km := keyManager(t, s, ca.KeyScopeAuthorities)
	clusterKM := keyManager(t, s, ca.KeyScopeClusterIdentity)
	held, err := clusterKM.GenerateKey(ctx, "x509-ca", ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	clk := clock.NewFake(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	cfg := ca.DefaultConfig()
	cfg.TrustDomain, cfg.ServerID, cfg.KeyManager, cfg.Clock = td, "s1", km, clk
	m, err := ca.NewManager(ctx, ca.ManagerConfig{Kind: ca.KindX509, CA: cfg, Propagation: time.Minute, Publisher: nopPublisher{}})
	if err != nil {
		t.Fatal(err)
	}
	slot, err := m.Prepare(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.Activate(ctx, slot.ID); err != nil {
		t.Fatal(err)
	}
	authority := m.X509CA()
	workload, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromPath(td, "/web")
	sign := func() (*x509.Certificate, error) {
		chain, err := m.X509CA().SignX509SVID(ctx, ca.X509SVIDParams{PublicKey: workload.Public(), SPIFFEID: id})
		if err != nil {
			return nil, err
		}
		return chain[0], nil
	}
	if _, err := sign(); err != nil {
		t.Fatal(err)
	}

	if err := os.Rename(tk.Dir, tk.Dir+".away"); err != nil {
		t.Fatal(err)
	}
	_, err = sign()
	if err == nil || !strings.Contains(err.Error(), `key "x509-ca-1" failed, re-acquire from the key manager scheduled in `) || !strings.HasSuffix(err.Error(), `: pkcs11: sign with key "x509-ca-1": 0x82: CKR_OBJECT_HANDLE_INVALID`) {
		t.Fatalf("sign with the token gone: %v", err)
	}
	clk.Add(time.Second)
	if _, err = sign(); err == nil || !strings.Contains(err.Error(), `pkcs11: opening token "sigil"`) {
		t.Fatalf("re-acquire with the token gone: %v", err)
	}

	if err := os.Rename(tk.Dir+".away", tk.Dir); err != nil {
		t.Fatal(err)
	}
	clk.Add(2 * time.Second) // the second backoff: 1 to 2 s
	leaf, err := sign()
	if err != nil {
		t.Fatalf("sign with the token back: %v", err)
	}
	if m.X509CA() != authority {
		t.Fatal("another slot signs")
	}
	roots := x509.NewCertPool()
	roots.AddCert(authority.Certificate())
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: clk.Now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("the SVID signed after the token came back does not verify with the slot's CA: %v", err)
	}
	signtest.SignVerify(t, held)
}

// nopPublisher publishes nowhere.
type nopPublisher struct{}

func (nopPublisher) Publish(context.Context, ca.Slot) error   { return nil }
func (nopPublisher) Unpublish(context.Context, ca.Slot) error { return nil }

// TestRefreshRefusesAnotherKey: a signer held across a re-opening of the
// token whose name now holds another key pair refuses to sign with it.
func TestRefreshRefusesAnotherKey(t *testing.T) {
	tk := token(t)
	ctx := context.Background()
	km := keyManager(t, open(t, config(tk, "s1")), ca.KeyScopeAuthorities)
	held, err := km.GenerateKey(ctx, "k", ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	replaced, err := km.GenerateKey(ctx, "k", ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("x"))
	if _, err := held.Sign(rand.Reader, digest[:], crypto.SHA256); err == nil || !strings.Contains(err.Error(), "CKR_OBJECT_HANDLE_INVALID") {
		t.Fatalf("the replaced key signed: %v", err)
	}
	// The failure makes GetKey re-open the token.
	got, err := km.GetKey(ctx, "k")
	if err != nil || !samePublic(got, replaced) {
		t.Fatalf("GetKey after the re-opening: %v", err)
	}
	_, err = held.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err == nil || err.Error() != `pkcs11: sign with key "k" (label "sigil/example.org/s1/authorities/k"): token "sigil" now holds another key pair under that name` {
		t.Fatalf("the held signer after the re-opening: %v", err)
	}
	signtest.SignVerify(t, got)
}
