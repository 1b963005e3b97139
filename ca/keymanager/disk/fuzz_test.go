package disk

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"strings"
	"testing"
)

// FuzzDecodeKey feeds arbitrary key file content to the parser a server
// runs on every key file: it never panics, and fails with an error naming
// the file or returns a signing key.
func FuzzDecodeKey(f *testing.F) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	clearPEM, err := encodeKey(k, nil)
	if err != nil {
		f.Fatal(err)
	}
	encPEM, err := encodeKey(k, []byte("pass"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(clearPEM, true)
	f.Add(encPEM, true)
	f.Add(encPEM, false)
	f.Add([]byte("-----BEGIN ENCRYPTED PRIVATE KEY-----\nMAA=\n-----END ENCRYPTED PRIVATE KEY-----\n"), true)
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), false)
	f.Add([]byte("junk"), false)
	f.Fuzz(func(t *testing.T, data []byte, withPass bool) {
		var pass []byte
		if withPass {
			pass = []byte("pass")
		}
		s, err := decodeKey("/k/f.key.pem", data, pass)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "ca/keymanager/disk: ") || !strings.Contains(err.Error(), "/k/f.key.pem") {
				t.Fatalf("error without prefix or path: %v", err)
			}
			return
		}
		if s == nil || s.Public() == nil {
			t.Fatal("no error and no key")
		}
	})
}
