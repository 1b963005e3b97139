//go:build !cgo

package disk

import (
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
)

// Run by TestStaticBuildWithoutCgo (cmd/sigil) under CGO_ENABLED=0: a
// key_pkcs11 block is refused at its line with the error that names the
// build, New refuses a Config with PKCS11, and key_file still works.
func TestKeyPKCS11WithoutCgo(t *testing.T) {
	if err := PKCS11Available(); !errors.Is(err, ErrNoCgo) {
		t.Fatalf("PKCS11Available() = %v, want ErrNoCgo", err)
	}
	now := time.Now()
	root := newCert(t, caOpts("Root", now), nil)
	f := writeUpstream(t, root.key, []*x509.Certificate{root.cert}, nil)

	_, err := newPlugin(body(t, `
cert_file = "`+f.cert+`"
key_pkcs11 {
  module      = "/usr/lib/softhsm/libsofthsm2.so"
  token_label = "upstream"
  pin_env     = "SIGIL_TEST_NO_SUCH_PIN"
  key_label   = "ca"
}
`), serverEnv(now))
	var diags hcl.Diagnostics
	if !errors.As(err, &diags) || len(diags) != 1 || diags[0].Subject == nil || diags[0].Subject.Start.Line != 3 ||
		diags[0].Summary != "key_pkcs11: "+ErrNoCgo.Error() {
		t.Fatalf("newPlugin error = %#v, want %q at line 3", err, "key_pkcs11: "+ErrNoCgo.Error())
	}

	cfg := f.config(serverEnv(now).Clock)
	cfg.KeyFile = ""
	cfg.PKCS11 = &PKCS11Key{Module: "/usr/lib/softhsm/libsofthsm2.so", TokenLabel: "upstream", PIN: "1234", KeyLabel: "ca"}
	if _, err := New(cfg); !errors.Is(err, ErrNoCgo) || err.Error() != "ca/upstream/disk: key_pkcs11: "+ErrNoCgo.Error() {
		t.Fatalf("New error = %v, want ErrNoCgo", err)
	}

	// key_file needs no cgo: the static build signs with it.
	v, err := newPlugin(body(t, `
cert_file = "`+f.cert+`"
key_file  = "`+f.keyPEM+`"
`), serverEnv(now))
	if err != nil {
		t.Fatal(err)
	}
	a := v.(*Authority)
	t.Cleanup(func() { a.Close() })
	resp, r := mint(t, a, time.Hour)
	verifyBoth(t, resp, r, now)
}
