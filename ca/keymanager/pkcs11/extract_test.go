//go:build cgo

// The raw PKCS#11 calls of this test need cgo, as the key manager does.

package pkcs11

import (
	"bytes"
	"context"
	"errors"
	"testing"

	p11 "github.com/miekg/pkcs11"

	"github.com/sigil-id/sigil/ca"
)

// TestKeysStayInToken reads the token with raw PKCS#11 calls (not through
// the key manager): each generated private key is one token object with
// the documented CKA_LABEL and CKA_ID, sensitive and never extractable,
// and the token refuses to reveal its secret.
func TestKeysStayInToken(t *testing.T) {
	tk := token(t)
	s := open(t, config(tk, "s1"))
	km := keyManager(t, s, ca.KeyScopeClusterIdentity)
	types := map[string]ca.KeyType{"ec": ca.KeyTypeECP256, "ec384": ca.KeyTypeECP384, "rsa": ca.KeyTypeRSA2048}
	for id, kt := range types {
		if _, err := km.GenerateKey(context.Background(), id, kt); err != nil {
			t.Fatal(err)
		}
	}
	// The store's module instance must be gone before this test
	// initializes the module itself.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	ctx := p11.New(tk.Module)
	if ctx == nil {
		t.Fatalf("loading %s failed", tk.Module)
	}
	if err := ctx.Initialize(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx.Finalize()
		ctx.Destroy()
	}()
	sess, err := ctx.OpenSession(uint(tk.Slot), p11.CKF_SERIAL_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	defer ctx.CloseSession(sess)
	if err := ctx.Login(sess, p11.CKU_USER, tk.PIN); err != nil {
		t.Fatal(err)
	}
	defer ctx.Logout(sess)

	for id, kt := range types {
		label, ckaID := KeyLabel(DefaultKeyLabelPrefix, td, "s1", ca.KeyScopeClusterIdentity, id)
		if err := ctx.FindObjectsInit(sess, []*p11.Attribute{
			p11.NewAttribute(p11.CKA_CLASS, p11.CKO_PRIVATE_KEY),
			p11.NewAttribute(p11.CKA_LABEL, label),
		}); err != nil {
			t.Fatal(err)
		}
		objs, _, err := ctx.FindObjects(sess, 10)
		ctx.FindObjectsFinal(sess)
		if err != nil || len(objs) != 1 {
			t.Fatalf("%s: %d private keys labelled %q: %v", kt, len(objs), label, err)
		}
		attrs, err := ctx.GetAttributeValue(sess, objs[0], []*p11.Attribute{
			p11.NewAttribute(p11.CKA_ID, nil),
			p11.NewAttribute(p11.CKA_TOKEN, nil),
			p11.NewAttribute(p11.CKA_SENSITIVE, nil),
			p11.NewAttribute(p11.CKA_ALWAYS_SENSITIVE, nil),
			p11.NewAttribute(p11.CKA_EXTRACTABLE, nil),
			p11.NewAttribute(p11.CKA_NEVER_EXTRACTABLE, nil),
		})
		if err != nil {
			t.Fatal(err)
		}
		want := [][]byte{ckaID, {1}, {1}, {1}, {0}, {1}}
		names := []string{"CKA_ID", "CKA_TOKEN", "CKA_SENSITIVE", "CKA_ALWAYS_SENSITIVE", "CKA_EXTRACTABLE", "CKA_NEVER_EXTRACTABLE"}
		for i, a := range attrs {
			if !bytes.Equal(a.Value, want[i]) {
				t.Errorf("%s: %s = %x, want %x", kt, names[i], a.Value, want[i])
			}
		}
		secret := uint(p11.CKA_VALUE)
		if kt == ca.KeyTypeRSA2048 {
			secret = p11.CKA_PRIVATE_EXPONENT
		}
		_, err = ctx.GetAttributeValue(sess, objs[0], []*p11.Attribute{p11.NewAttribute(secret, nil)})
		var perr p11.Error
		if !errors.As(err, &perr) || perr != p11.CKR_ATTRIBUTE_SENSITIVE {
			t.Errorf("%s: reading the secret: %v, want CKR_ATTRIBUTE_SENSITIVE", kt, err)
		}
	}
}
