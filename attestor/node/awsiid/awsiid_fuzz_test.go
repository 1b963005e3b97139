package awsiid

import (
	"context"
	"crypto/x509"
	"testing"
	"time"

	"github.com/sigil-id/sigil/attestor/node/awsiid/awsiidtest"
)

// FuzzVerify feeds arbitrary payloads to the server half: it must never
// panic, and must never accept evidence the test certificate did not sign
// (the seeds include one valid payload; mutations of it must not verify
// unless only insignificant bytes, such as base64 line breaks, changed).
func FuzzVerify(f *testing.F) {
	signer := awsiidtest.NewSigner(f, "fuzz")
	doc := awsiidtest.NewDocument(account, region, instance, now.Add(-time.Hour)).JSON()
	valid := mustJSONF(f, Payload{Document: string(doc), RSA2048: signer.Sign(f, doc)})
	f.Add(valid)
	f.Add([]byte(`{"document":"{}","rsa2048":"MA=="}`))
	f.Add([]byte(`{}`))
	v, err := NewVerifier(Config{Regions: map[string][]*x509.Certificate{region: {signer.Cert}}, Accounts: []string{account}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		res, err := v.Verify(context.Background(), &state{}, exchange(payload))
		if err == nil {
			p, perr := ParsePayload(payload)
			if perr != nil || p.Document != string(doc) || res.ID != account+"/"+region+"/"+instance {
				t.Fatalf("accepted %q as %+v", payload, res)
			}
		}
	})
}

// FuzzParseDocument: the document parser never panics, and what it
// accepts yields selectors its own validator accepts.
func FuzzParseDocument(f *testing.F) {
	f.Add(awsiidtest.NewDocument(account, region, instance, now).JSON())
	f.Add([]byte(`{"accountId":"1"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := ParseDocument(b)
		if err != nil {
			return
		}
		for _, s := range d.Selectors() {
			if err := ValidateSelector(s.Value); err != nil {
				t.Fatalf("parsed document gives invalid selector: %v", err)
			}
		}
	})
}

func mustJSONF(f *testing.F, p Payload) []byte {
	b, err := jsonMarshal(p)
	if err != nil {
		f.Fatal(err)
	}
	return b
}
