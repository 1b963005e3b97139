package federation

import (
	"encoding/json"
	"testing"

	"github.com/sigil-id/sigil/mtls/mtlstest"
)

// FuzzDecode: for any input, Decode never panics; what it accepts is a
// bundle of the trust domain with 1 to MaxAuthorities authorities,
// unique key IDs and a non-negative refresh hint, which Encode writes
// back into a document that decodes to an Equal bundle.
func FuzzDecode(f *testing.F) {
	ca := mtlstest.NewCA("a.example")
	valid, err := Encode(testBundle(f, ca, 3, 2))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(valid)
	f.Add([]byte(`{"keys":[]}`))
	f.Add([]byte(`{"keys":[{"use":"jwt-svid","kid":"a","kty":"EC","crv":"P-256","x":"AAAA","y":"AAAA"}]}`))
	f.Add([]byte(`{"keys":[{"use":"jwt-svid","kid":"s","kty":"oct","k":"c2VjcmV0"}],"spiffe_refresh_hint":-1}`))
	f.Add([]byte(`{"keys":[{"use":"x509-svid","kty":"EC","x5c":["AAAA"]}],"spiffe_sequence":18446744073709551615}`))
	f.Add([]byte(`{"keys":null,"spiffe_refresh_hint":9223372036854775807}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, doc []byte) {
		b, err := Decode(tdA, doc)
		if err != nil {
			if b != nil {
				t.Fatal("a bundle with an error")
			}
			return
		}
		n := len(b.X509Authorities) + len(b.JwtAuthorities)
		if b.TrustDomain != "a.example" || n == 0 || n > MaxAuthorities || b.RefreshHint < 0 {
			t.Fatalf("accepted %v", b)
		}
		if !json.Valid(doc) {
			t.Fatal("accepted invalid JSON")
		}
		kids := make(map[string]bool)
		for _, j := range b.JwtAuthorities {
			if j.KeyId == "" || kids[j.KeyId] {
				t.Fatalf("key ID %q empty or repeated", j.KeyId)
			}
			kids[j.KeyId] = true
		}
		if err := CheckUpdate(tdA, nil, b); err != nil {
			t.Fatalf("decoded bundle fails CheckUpdate: %v", err)
		}
		again, err := Encode(b)
		if err != nil {
			t.Fatalf("decoded bundle does not encode: %v", err)
		}
		b2, err := Decode(tdA, again)
		if err != nil {
			t.Fatalf("re-encoded bundle does not decode: %v", err)
		}
		if !Equal(b, b2) {
			t.Fatalf("round trip changed the bundle: %v, then %v", b, b2)
		}
	})
}
