package disk

import (
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// FuzzParseCerts feeds arbitrary content to the parser of cert_file and
// bundle_file: it never panics, and fails with an error naming the file
// or returns at least one and at most max certificates.
func FuzzParseCerts(f *testing.F) {
	now := time.Now()
	root := newCert(f, caOpts("Root", now), nil)
	inter := newCert(f, caOpts("Intermediate", now), root)
	f.Add(pemCerts(inter.cert, root.cert))
	f.Add(append([]byte("subject=CN=Root\n"), pemCerts(root.cert)...))
	f.Add(pemCerts(root.cert)[:100])
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n"))
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n"))
	f.Add([]byte("junk"))
	f.Fuzz(func(t *testing.T, data []byte) {
		const max = 3
		certs, err := parseCerts("cert_file", "/u/ca.pem", data, max)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "ca/upstream/disk: cert_file /u/ca.pem") {
				t.Fatalf("error without prefix or file: %v", err)
			}
			return
		}
		if len(certs) == 0 || len(certs) > max {
			t.Fatalf("%d certificates", len(certs))
		}
		for _, c := range certs {
			selfSigned(c)
			describe(c)
		}
	})
}

// FuzzParseKey feeds arbitrary content to the parser of key_file, with
// and without a passphrase: it never panics, and fails with an error
// naming the file (never showing the passphrase) or returns a signing
// key.
func FuzzParseKey(f *testing.F) {
	now := time.Now()
	root := newCert(f, caOpts("Root", now), nil)
	f.Add(pemKey(f, root.key), false)
	f.Add(encryptedKey(f, root, "fuzz-passphrase"), true)
	f.Add(encryptedKey(f, root, "fuzz-passphrase"), false)
	f.Add([]byte("-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"), false)
	f.Add([]byte("-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,00000000000000000000000000000000\n\nMAA=\n-----END RSA PRIVATE KEY-----\n"), true)
	f.Add([]byte("junk"), false)
	f.Fuzz(func(t *testing.T, data []byte, withPass bool) {
		var pass []byte
		if withPass {
			pass = []byte("fuzz-passphrase")
		}
		s, err := parseKey("/u/ca.key", data, pass)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "ca/upstream/disk: ") || !strings.Contains(err.Error(), "key_file /u/ca.key") || strings.Contains(err.Error(), "fuzz-passphrase") {
				t.Fatalf("error without prefix or file, or with the passphrase: %v", err)
			}
			return
		}
		if s == nil || s.Public() == nil {
			t.Fatal("no error and no key")
		}
	})
}

// FuzzPluginConfig feeds arbitrary blocks to the plugin's constructor
// (files that do not exist, so nothing is opened): it never panics and
// never returns a nil authority without an error.
func FuzzPluginConfig(f *testing.F) {
	f.Add(`cert_file = "/nonexistent/ca.pem"
key_file = "/nonexistent/ca.key"`)
	f.Add(`cert_file = "/nonexistent/ca.pem"
bundle_file = ""
key_file = "/nonexistent/ca.key"
passphrase_env = "1BAD"`)
	f.Add(`cert_file = "/nonexistent/ca.pem"
key_pkcs11 {
  module = "/nonexistent/lib.so"
  slot = 3
  pin_env = "SIGIL_FUZZ_UNSET"
  key_id = "a1:b2"
}`)
	f.Add(`cert_file = 3`)
	f.Add(`key_pkcs11 {}`)
	f.Fuzz(func(t *testing.T, src string) {
		file, diags := hclsyntax.ParseConfig([]byte(src), "f.hcl", hcl.Pos{Line: 1, Column: 1})
		if diags.HasErrors() {
			return
		}
		v, err := newPlugin(file.Body, serverEnv(time.Now()))
		if err == nil {
			// Only real files could make it succeed.
			if a, ok := v.(*Authority); ok {
				a.Close()
			}
			t.Fatalf("a configuration of nonexistent files was accepted: %q", src)
		}
		if v != nil {
			t.Fatalf("a value with an error: %T", v)
		}
	})
}
