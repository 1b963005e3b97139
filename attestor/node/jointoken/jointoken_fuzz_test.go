package jointoken_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/attestor/node/jointoken"
)

// wellFormed is the specification Validate implements: 64 lowercase hex
// characters.
func wellFormed(b []byte) bool {
	if len(b) != 64 {
		return false
	}
	for _, c := range b {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// FuzzJoinTokenParse feeds arbitrary bytes to the token parser (Validate)
// and to the verifier backed by an in-memory store holding one live and
// one expired token. Invariants: no panic; Validate accepts exactly the
// well-formed tokens; only a well-formed token costs a store lookup; only
// the live token is accepted, with the ID and hash derived from it;
// every refusal of a well-formed token is a RefusedError with the one
// public message; no error echoes the input; the agent attestor's
// payload round-trips.
func FuzzJoinTokenParse(f *testing.F) {
	expired := strings.Repeat("ab", 32)
	for _, s := range []string{known, expired, strings.Repeat("cd", 32), "", "not-a-token", strings.ToUpper(known),
		known + "\n", " " + known, known[:63] + "\x00", strings.Repeat("é", 32), strings.Repeat("0", 65)} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		st := newMemState(known)
		st.tokens[jointoken.Hash(expired)] = t0
		st.clk.Set(t0.Add(time.Minute))
		v := jointoken.NewVerifier()
		ok := wellFormed(payload)

		if err := jointoken.Validate(string(payload)); (err == nil) != ok {
			t.Fatalf("Validate(%q) = %v, well-formed %v", payload, err, ok)
		} else if err != nil && !errors.Is(err, jointoken.ErrMalformed) {
			t.Fatalf("Validate error %v does not wrap ErrMalformed", err)
		}

		in := bytes.Clone(payload)
		res, err := verify(t, context.Background(), v, st, payload)
		if !bytes.Equal(in, payload) {
			t.Fatal("Verify modified its payload")
		}
		if !ok && st.count() != 0 {
			t.Fatalf("a malformed payload cost %d store lookups", st.count())
		}
		if err != nil {
			if res != nil {
				t.Fatal("Verify returned a result with an error")
			}
			if len(payload) >= 8 && strings.Contains(err.Error(), string(payload)) {
				t.Fatalf("error echoes the payload: %v", err)
			}
			var refused *node.RefusedError
			if ok && (!errors.As(err, &refused) || refused.Public != jointoken.RefusedMessage) {
				t.Fatalf("well-formed token refused with %v, want a RefusedError", err)
			}
			if ok && string(payload) == known {
				t.Fatalf("the live token was refused: %v", err)
			}
			return
		}
		tok := string(payload)
		if tok != known {
			t.Fatalf("Verify accepted %q, which the store does not hold live", payload)
		}
		if len(res.Consume) != 1 || res.Consume[0] != (node.Credential{Kind: node.CredentialJoinToken, ID: jointoken.Hash(tok)}) || res.ID != jointoken.AgentIDSegment(tok) ||
			len(res.Selectors) != 1 || res.Selectors[0].GetValue() != res.ID {
			t.Fatalf("result %+v does not derive from the token", res)
		}
		p, err := jointoken.NewAttestor(tok).Payload(context.Background())
		if err != nil || string(p) != tok {
			t.Fatalf("attestor payload round trip: %q, %v", p, err)
		}
	})
}
