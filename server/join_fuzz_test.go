package server

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"
)

// FuzzJoinSecret: ParseJoinSecret never panics, never accepts a secret
// that is not exactly the canonical encoding of 32 bytes under the
// prefix, and every refusal says how to make a good secret.
func FuzzJoinSecret(f *testing.F) {
	good, err := GenerateJoinSecret(nil)
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{
		good, " " + good + "\n", "", "password", JoinSecretPrefix,
		JoinSecretPrefix + strings.Repeat("A", 43),
		JoinSecretPrefix + strings.Repeat("_", 43),
		good[:len(good)-1] + "B", good + "=", strings.ToUpper(good),
		"sigil-join-v1-pBgSqrWfKbR9dIF6n4rb1u1c5CRA8_yKovjYuT2lN3w",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		key, err := ParseJoinSecret(s)
		if err != nil {
			if key != nil {
				t.Fatal("a key with an error")
			}
			if !strings.Contains(err.Error(), "sigil cluster secret generate") {
				t.Fatalf("refusal without advice: %v", err)
			}
			return
		}
		if len(key) != JoinSecretBytes {
			t.Fatalf("accepted a key of %d bytes", len(key))
		}
		if enc := JoinSecretPrefix + base64.RawURLEncoding.EncodeToString(key); enc != strings.TrimSpace(s) {
			t.Fatalf("accepted %q, whose canonical form is %q", s, enc)
		}
		again, err := ParseJoinSecret(JoinSecretPrefix + base64.RawURLEncoding.EncodeToString(key))
		if err != nil || !bytes.Equal(again, key) {
			t.Fatalf("round trip: %v", err)
		}
	})
}
