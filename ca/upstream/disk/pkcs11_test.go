package disk

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/ca/keymanager/pkcs11/softhsmtest"
	"github.com/sigil-id/sigil/clock"
)

// keyID is the CKA_ID of the upstream key the tests import.
var keyID = []byte{0xa1, 0xb2, 0xc3}

// importKey puts the key of c in the SoftHSM2 token tk as the key pair
// labelled label with CKA_ID id, with softhsm2-util --import (the way
// an operator moves an existing CA key into a token).
func importKey(t testing.TB, tk *softhsmtest.Token, c *issued, label string, id []byte) {
	t.Helper()
	util, _, err := softhsmtest.Find()
	if err != nil {
		t.Fatal(err)
	}
	p := writeFile(t, filepath.Join(t.TempDir(), "import.key"), pemKey(t, c.key))
	cmd := exec.Command(util, "--import", p, "--token", tk.Label, "--label", label, "--id", hex.EncodeToString(id), "--pin", tk.PIN)
	cmd.Env = append(os.Environ(), tk.Env())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("softhsm2-util --import: %v\n%s", err, out)
	}
}

// pkcs11Upstream is a two-level upstream whose signing key is in a new
// SoftHSM2 token (the key file is removed).
func pkcs11Upstream(t *testing.T, now time.Time) (*softhsmtest.Token, files, *issued) {
	t.Helper()
	tk := softhsmtest.New(t, "upstream")
	tk.Setenv(t)
	root := newCert(t, caOpts("Root", now), nil)
	inter := newCert(t, caOpts("HSM Intermediate", now), root)
	importKey(t, tk, inter, "upstream-ca", keyID)
	f := writeUpstream(t, inter.key, []*x509.Certificate{inter.cert, root.cert}, nil)
	if err := os.Remove(f.keyPEM); err != nil {
		t.Fatal(err)
	}
	f.keyPEM = ""
	return tk, f, inter
}

func pkcs11Config(f files, tk *softhsmtest.Token, now time.Time) Config {
	cfg := f.config(clock.NewFake(now))
	cfg.PKCS11 = &PKCS11Key{Module: tk.Module, TokenLabel: tk.Label, PIN: tk.PIN, KeyLabel: "upstream-ca"}
	return cfg
}

// The upstream key in a real SoftHSM2 token, found by label, by id or by
// both, with the token chosen by label or slot: minted chains verify with
// Go and openssl.
func TestPKCS11Mint(t *testing.T) {
	now := time.Now()
	tk, f, inter := pkcs11Upstream(t, now)
	slot := tk.Slot
	for name, k := range map[string]PKCS11Key{
		"label":        {TokenLabel: tk.Label, KeyLabel: "upstream-ca"},
		"id, slot":     {Slot: &slot, KeyID: keyID},
		"label and id": {TokenLabel: tk.Label, KeyLabel: "upstream-ca", KeyID: keyID},
	} {
		t.Run(name, func(t *testing.T) {
			cfg := f.config(clock.NewFake(now))
			k.Module, k.PIN = tk.Module, tk.PIN
			cfg.PKCS11 = &k
			a := newAuthority(t, cfg)
			resp, r := mint(t, a, time.Hour)
			sameChain(t, "chain[1:]", resp.Chain[1:], []*x509.Certificate{inter.cert})
			verifyBoth(t, resp, r, now)
			if err := a.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := a.MintX509CA(context.Background(), ca.X509CARequest{CSR: newCSR(t, td).der, TrustDomain: td, TTL: time.Hour}); !errors.Is(err, errClosed) {
				t.Fatalf("mint after Close: %v", err)
			}
		})
	}
}

// Each PKCS#11 failure at start is a clear error, and none holds the PIN.
func TestPKCS11StartErrors(t *testing.T) {
	now := time.Now()
	tk, f, _ := pkcs11Upstream(t, now)
	for _, c := range []struct {
		name string
		mod  func(k *PKCS11Key)
		want string
	}{
		{"wrong PIN", func(k *PKCS11Key) { k.PIN = "9999" }, `ca/upstream/disk: key_pkcs11: logging in to token "upstream": wrong PIN (CKR_PIN_INCORRECT)`},
		{"missing token", func(k *PKCS11Key) { k.TokenLabel = "nope" }, `ca/upstream/disk: key_pkcs11: no token "nope" in module ` + tk.Module},
		{"missing module", func(k *PKCS11Key) { k.Module = "/nonexistent/libpkcs11.so" }, "ca/upstream/disk: key_pkcs11: module /nonexistent/libpkcs11.so: no such file or directory"},
		{"missing key", func(k *PKCS11Key) { k.KeyLabel = "other" }, `ca/upstream/disk: key_pkcs11: token "upstream" holds no key pair with label "other"`},
		{"label and id of different keys", func(k *PKCS11Key) { k.KeyID = []byte{1} }, `ca/upstream/disk: key_pkcs11: token "upstream" holds no key pair with label "upstream-ca" and id 01`},
		{"no key named", func(k *PKCS11Key) { k.KeyLabel = "" }, "ca/upstream/disk: key_pkcs11: no key: set key_label or key_id"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := pkcs11Config(f, tk, now)
			c.mod(cfg.PKCS11)
			a, err := New(cfg)
			if err == nil {
				a.Close()
				t.Fatal("New succeeded")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error\n  %v\nwant it to contain\n  %s", err, c.want)
			}
			if strings.Contains(err.Error(), "PIN") && strings.Contains(err.Error(), cfg.PKCS11.PIN) {
				t.Fatalf("the error shows the PIN: %v", err)
			}
		})
	}

	// A key in the token that is not the signing certificate's.
	t.Run("key mismatch", func(t *testing.T) {
		importKey(t, tk, newCert(t, caOpts("Other", now), nil), "other-ca", []byte{0x0f})
		cfg := pkcs11Config(f, tk, now)
		cfg.PKCS11.KeyLabel = "other-ca"
		cfg.PKCS11.KeyID = nil
		_, err := New(cfg)
		if err == nil || !strings.Contains(err.Error(), `ca/upstream/disk: the key does not match the signing certificate "CN=HSM Intermediate,O=Operator"`) {
			t.Fatalf("New: %v", err)
		}
	})
	// The token still works after those failures.
	a := newAuthority(t, pkcs11Config(f, tk, now))
	resp, r := mint(t, a, time.Hour)
	verifyBoth(t, resp, r, now)
}
