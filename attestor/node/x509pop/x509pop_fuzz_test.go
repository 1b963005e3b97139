package x509pop

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/sigil-id/sigil/attestor/node"
)

// FuzzX509popPayload feeds arbitrary payloads to the verifier (the JSON
// envelope, then the DER certificates) with an honest agent answering any
// challenge. Invariants: no panic; the payload is not modified; a
// challenge is sent only for a chain that verified; only the real chain is
// accepted; a result always carries an id and selectors that validate.
func FuzzX509popPayload(f *testing.F) {
	ca := newTestCA(f, "fuzz")
	_, key, chain := ca.issue(f, leafOpts{cn: "fuzz", dns: []string{"a.example"}})
	v := newVerifierFor(f, DefaultServerConfig(), ca)
	good, _ := encodePayload(chain)
	for _, s := range [][]byte{good, nil, []byte(`{"chain":[]}`), []byte(`{"chain":["AAAA"]}`), []byte(`{"chain":null}`),
		[]byte(`{"chain":[""]}`), good[:len(good)/2], append(bytes.Clone(good), ' ')} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		in := bytes.Clone(p)
		ex := &exchange{payload: p, answer: func(_ context.Context, nonce []byte) ([]byte, error) {
			ders, err := decodePayload(p)
			if err != nil {
				t.Fatalf("a challenge for a payload that does not parse: %v", err)
			}
			a, err := sign(key, SignedMessage(testTD, nonce, ders))
			if err != nil {
				return nil, err
			}
			return json.Marshal(a)
		}}
		res, err := v.Verify(context.Background(), newState(), ex)
		if !bytes.Equal(in, p) {
			t.Fatal("Verify modified its payload")
		}
		if err != nil {
			if res != nil {
				t.Fatal("a result with an error")
			}
			return
		}
		ders, _ := decodePayload(p)
		if !bytes.Equal(ders[0], chain[0]) {
			t.Fatalf("accepted a payload whose leaf is not the issued one")
		}
		if res.ID != fingerprint(chain[0]) || len(res.Selectors) == 0 {
			t.Fatalf("result %+v", res)
		}
		for _, s := range res.Selectors {
			if ValidateSelector(s.GetValue()) != nil {
				t.Fatalf("selector %v does not validate", s)
			}
		}
	})
}

// FuzzX509popAnswer feeds arbitrary answers to a valid chain's challenge.
// Invariants: no panic; nothing but a real signature over this
// attestation's nonce is accepted (the fuzzer cannot forge one); every
// refusal of a well-formed answer is a RefusedError.
func FuzzX509popAnswer(f *testing.F) {
	ca := newTestCA(f, "fuzz")
	_, key, chain := ca.issue(f, leafOpts{cn: "fuzz"})
	v := newVerifierFor(f, DefaultServerConfig(), ca)
	p, _ := encodePayload(chain)
	stale, _ := sign(key, SignedMessage(testTD, make([]byte, NonceSize), chain))
	staleJSON, _ := json.Marshal(stale)
	for _, s := range [][]byte{staleJSON, nil, []byte(`{}`), []byte(`{"scheme":"ed25519","signature":"AAAA"}`),
		[]byte(`{"scheme":"rsa-pss-sha256","signature":"AAAA"}`), []byte(`{"scheme":"x","signature":"AA=="}`)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, ans []byte) {
		ex := &exchange{payload: p, answer: func(context.Context, []byte) ([]byte, error) { return ans, nil }}
		res, err := v.Verify(context.Background(), newState(), ex)
		if err == nil || res != nil {
			t.Fatalf("a made-up answer was accepted: %q", ans)
		}
		var r *node.RefusedError
		if _, perr := decodeAnswer(ans); perr == nil && !errors.As(err, &r) {
			t.Fatalf("a well-formed answer refused with %v, want a RefusedError", err)
		}
	})
}

// FuzzX509popTemplate feeds arbitrary agent_id templates to the parser.
// Invariants: no panic; an accepted template renders, for a leaf with a
// plain common name, an id that registration accepts in an agent's
// SPIFFE ID.
func FuzzX509popTemplate(f *testing.F) {
	ca := newTestCA(f, "fuzz")
	leaf, _, _ := ca.issue(f, leafOpts{cn: "web-01"})
	for _, s := range []string{DefaultAgentIDTemplate, "a/{{.Subject.CN}}", "{{", "}}", "{{ .X }}", "{{.SerialNumber}}/../x", "{{ call . }}"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tmpl, err := parseIDTemplate(s)
		if err != nil {
			return
		}
		id, err := tmpl.render(leaf)
		if err != nil {
			return // a literal "." or ".." segment or an empty one
		}
		if id == "" {
			t.Fatalf("%q rendered an empty id", s)
		}
		for _, r := range id {
			if !pathChar(r) && r != '/' {
				t.Fatalf("%q rendered %q", s, id)
			}
		}
	})
}
