package disk

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/plugin"
)

func body(t testing.TB, src string) hcl.Body {
	t.Helper()
	f, diags := hclsyntax.ParseConfig([]byte(src), "p.hcl", hcl.Pos{Line: 1, Column: 1})
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	return f.Body
}

func serverEnv(now time.Time) plugin.Env {
	return plugin.Env{Role: plugin.RoleServer, TrustDomain: td, NodeName: "s1", Clock: clock.NewFake(now)}
}

// The plugin as a server builds it from its configuration: key_file with
// the roots at the end of cert_file, an encrypted key with
// passphrase_env, and a key in a SoftHSM2 token with pin_file.
func TestPlugin(t *testing.T) {
	now := time.Now()
	root := newCert(t, caOpts("Root", now), nil)
	inter := newCert(t, caOpts("Intermediate", now), root)
	f := writeUpstream(t, inter.key, []*x509.Certificate{inter.cert, root.cert}, nil)

	v, err := newPlugin(body(t, `
cert_file = "`+f.cert+`"
key_file  = "`+f.keyPEM+`"
`), serverEnv(now))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := v.(ca.UpstreamAuthority); !ok {
		t.Fatalf("the plugin is a %T, not a ca.UpstreamAuthority", v)
	}
	a := v.(*Authority)
	t.Cleanup(func() { a.Close() })
	resp, r := mint(t, a, time.Hour)
	verifyBoth(t, resp, r, now)

	// An encrypted key with passphrase_env, and bundle_file.
	const pass = "correct horse battery"
	writeFile(t, f.keyPEM, encryptedKey(t, inter, pass))
	bundle := writeFile(t, filepath.Join(f.dir, "bundle.pem"), pemCerts(root.cert))
	t.Setenv("SIGIL_TEST_UPSTREAM_PASS", pass)
	v, err = newPlugin(body(t, `
cert_file      = "`+f.cert+`"
bundle_file    = "`+bundle+`"
key_file       = "`+f.keyPEM+`"
passphrase_env = "SIGIL_TEST_UPSTREAM_PASS"
`), serverEnv(now))
	if err != nil {
		t.Fatal(err)
	}
	a = v.(*Authority)
	t.Cleanup(func() { a.Close() })
	if a.cfg.BundleFile != bundle || string(a.cfg.Passphrase) != pass {
		t.Fatalf("config: bundle %q", a.cfg.BundleFile)
	}
	resp, r = mint(t, a, time.Hour)
	verifyBoth(t, resp, r, now)

	// passphrase_file.
	passFile := writeFile(t, filepath.Join(t.TempDir(), "pass"), []byte(pass+"\n"))
	v, err = newPlugin(body(t, `
cert_file       = "`+f.cert+`"
key_file        = "`+f.keyPEM+`"
passphrase_file = "`+passFile+`"
`), serverEnv(now))
	if err != nil {
		t.Fatal(err)
	}
	v.(*Authority).Close()
}

func TestPluginPKCS11(t *testing.T) {
	now := time.Now()
	tk, f, _ := pkcs11Upstream(t, now)
	pinFile := tk.WritePIN(t)
	v, err := newPlugin(body(t, `
cert_file = "`+f.cert+`"
key_pkcs11 {
  module      = "`+tk.Module+`"
  token_label = "`+tk.Label+`"
  pin_file    = "`+pinFile+`"
  key_label   = "upstream-ca"
  key_id      = "a1:b2:c3"
}
`), serverEnv(now))
	if err != nil {
		t.Fatal(err)
	}
	a := v.(*Authority)
	t.Cleanup(func() { a.Close() })
	if a.cfg.PKCS11 == nil || a.cfg.PKCS11.PIN != tk.PIN || string(a.cfg.PKCS11.KeyID) != string(keyID) {
		t.Fatalf("key_pkcs11 config = %+v", a.cfg.PKCS11)
	}
	resp, r := mint(t, a, time.Hour)
	verifyBoth(t, resp, r, now)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}

	t.Setenv("SIGIL_TEST_UPSTREAM_PIN", tk.PIN)
	v, err = newPlugin(body(t, `
cert_file = "`+f.cert+`"
key_pkcs11 {
  module  = "`+tk.Module+`"
  slot    = `+strconv.Itoa(tk.Slot)+`
  pin_env = "SIGIL_TEST_UPSTREAM_PIN"
  key_id  = "a1b2c3"
}
`), serverEnv(now))
	if err != nil {
		t.Fatal(err)
	}
	if err := v.(*Authority).Close(); err != nil {
		t.Fatal(err)
	}
}

// Configuration mistakes are refused with the attribute named (at its
// line when HCL knows it); secrets are never accepted inline.
func TestPluginErrors(t *testing.T) {
	now := time.Now()
	root := newCert(t, caOpts("Root", now), nil)
	f := writeUpstream(t, root.key, []*x509.Certificate{root.cert}, nil)
	loosePass := writeFile(t, filepath.Join(t.TempDir(), "pass"), []byte("s3cr3t-value"))
	if err := os.Chmod(loosePass, 0o644); err != nil {
		t.Fatal(err)
	}
	pkcs11Block := func(extra string) string {
		return `
cert_file = "` + f.cert + `"
key_pkcs11 {
  module = "/usr/lib/softhsm/libsofthsm2.so"
` + extra + `
}
`
	}
	for _, c := range []struct {
		name, src, want string
	}{
		{"no cert_file", `key_file = "` + f.keyPEM + `"`, `Missing required argument; The argument "cert_file" is required`},
		{"empty cert_file", `
cert_file = ""
key_file = "x"`, "p.hcl:2,13-15: cert_file: must not be empty"},
		{"no key", `cert_file = "` + f.cert + `"`, "key_file: is required (or a key_pkcs11 block)"},
		{"both keys", `
cert_file = "` + f.cert + `"
key_file  = "` + f.keyPEM + `"
key_pkcs11 {
  module = "m"
  token_label = "t"
  pin_env = "X"
  key_label = "k"
}`, "p.hcl:3,13-" + strconv.Itoa(13+len(f.keyPEM)+2) + ": key_file: conflicts with the key_pkcs11 block: keep one"},
		{"inline passphrase", `
cert_file  = "` + f.cert + `"
key_file   = "` + f.keyPEM + `"
passphrase = "hunter2hunter2"`, `An argument named "passphrase" is not expected here`},
		{"both passphrases", `
cert_file       = "` + f.cert + `"
key_file        = "` + f.keyPEM + `"
passphrase_file = "/x"
passphrase_env  = "X"`, "passphrase_env: conflicts with passphrase_file: keep one"},
		{"passphrase_file readable by others", `
cert_file       = "` + f.cert + `"
key_file        = "` + f.keyPEM + `"
passphrase_file = "` + loosePass + `"`, "passphrase_file: " + loosePass + " is accessible by group or others (mode 0644)"},
		{"unset passphrase_env", `
cert_file      = "` + f.cert + `"
key_file       = "` + f.keyPEM + `"
passphrase_env = "SIGIL_TEST_UNSET_VARIABLE"`, "passphrase_env: environment variable SIGIL_TEST_UNSET_VARIABLE is not set or empty"},
		{"empty bundle_file", `
cert_file   = "` + f.cert + `"
bundle_file = ""
key_file    = "` + f.keyPEM + `"`, "bundle_file: must not be empty"},
		{"passphrase with a PKCS#11 key", `
cert_file      = "` + f.cert + `"
passphrase_env = "X"
key_pkcs11 {
  module = "m"
}`, "passphrase_env: is for an encrypted key_file"},
		{"inline PIN", pkcs11Block(`  token_label = "t"
  pin = "1234"
  key_label = "k"`), `An argument named "pin" is not expected here`},
		{"no token", pkcs11Block(`  pin_env = "X"
  key_label = "k"`), "token_label: is required (or slot)"},
		{"token and slot", pkcs11Block(`  token_label = "t"
  slot = 1
  pin_env = "X"`), "slot: conflicts with token_label"},
		{"negative slot", pkcs11Block(`  slot = -1`), "slot: must not be negative"},
		{"no PIN", pkcs11Block(`  token_label = "t"
  key_label = "k"`), "pin_file: is required (or pin_env): the token's user PIN is never written in the configuration"},
		{"both PINs", pkcs11Block(`  token_label = "t"
  pin_file = "/x"
  pin_env = "X"`), "pin_env: conflicts with pin_file"},
		{"no key in the token", pkcs11Block(`  token_label = "t"
  pin_env = "SIGIL_TEST_UPSTREAM_PIN2"`), "key_label: is required (or key_id)"},
		{"bad key_id", pkcs11Block(`  token_label = "t"
  pin_env = "SIGIL_TEST_UPSTREAM_PIN2"
  key_id = "xyz"`), `key_id: "xyz" is not a CKA_ID in hexadecimal`},
		{"two key_pkcs11 blocks", `
cert_file = "` + f.cert + `"
key_pkcs11 {
  module = "m"
}
key_pkcs11 {
  module = "m"
}`, "Duplicate key_pkcs11 block"},
		{"missing files", `
cert_file = "/nonexistent/ca.pem"
key_file  = "/nonexistent/ca.key"`, "ca/upstream/disk: cert_file /nonexistent/ca.pem: no such file or directory"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("SIGIL_TEST_UPSTREAM_PIN2", "1234")
			v, err := newPlugin(body(t, c.src), serverEnv(now))
			if err == nil {
				v.(*Authority).Close()
				t.Fatal("no error")
			}
			msg := err.Error()
			if d, ok := err.(hcl.Diagnostics); ok {
				msg = d.Error()
			}
			if !strings.Contains(msg, c.want) {
				t.Fatalf("error\n  %s\nwant it to contain\n  %s", msg, c.want)
			}
			if strings.Contains(msg, "1234") || strings.Contains(msg, "s3cr3t-value") {
				t.Fatalf("the error shows a secret: %s", msg)
			}
		})
	}
}

// The upstream authority is a server plugin only.
func TestPluginServerOnly(t *testing.T) {
	_, err := plugin.Build([]plugin.Block{{Kind: plugin.KindUpstreamAuthority, Name: PluginName, Body: hcl.EmptyBody()}}, hcl.Range{},
		plugin.Env{Role: plugin.RoleAgent, TrustDomain: td})
	if err == nil || !strings.Contains(err.Error(), `upstream_authority "disk": upstream_authority plugins belong in the server block, not in the agent block`) {
		t.Fatalf("agent: %v", err)
	}
	if got := plugin.Names(plugin.KindUpstreamAuthority); !strings.Contains(","+strings.Join(got, ",")+",", ",disk,") {
		t.Fatalf("registered upstream authorities: %v", got)
	}
}
