package gcpiit

import (
	"strings"
	"testing"
)

// FuzzParseToken feeds arbitrary payloads to the payload parser: it never
// panics, accepts only three non-empty base64url parts within the bound,
// and returns what it accepted unchanged.
func FuzzParseToken(f *testing.F) {
	for _, s := range []string{"", "a.b.c", "a..c", "eyJhbGciOiJSUzI1NiJ9.eyJ9.c2ln", ".", "a.b.c.d", "a.b.c\n", "é.b.c"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		tok, err := ParseToken(b)
		if err != nil {
			if tok != "" {
				t.Fatal("token returned with an error")
			}
			return
		}
		parts := strings.Split(tok, ".")
		if tok != string(b) || len(parts) != 3 || len(b) > MaxTokenLen {
			t.Fatalf("accepted %q", b)
		}
		for _, p := range parts {
			if p == "" || strings.Trim(p, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_") != "" {
				t.Fatalf("accepted part %q", p)
			}
		}
	})
}

// FuzzParseInstance feeds arbitrary claims to the claims parser: it never
// panics, and what it accepts makes a valid agent ID and valid selectors.
func FuzzParseInstance(f *testing.F) {
	for _, s := range []string{
		`{"google":{"compute_engine":{"project_id":"p-1","zone":"us-central1-a","instance_id":"1","instance_name":"n","project_number":1}}}`,
		`{"google":{}}`, `{}`, `null`, `[]`, `{"google":{"compute_engine":{"project_id":"a:b"}}}`,
		`{"google":{"compute_engine":{"project_id":"..","zone":"z","instance_id":"1","instance_name":"n"}}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		in, err := ParseInstance(b)
		if err != nil {
			return
		}
		for _, seg := range strings.Split(in.AgentID(), "/") {
			if !isSegment(seg, 128) {
				t.Fatalf("agent id %q has a bad segment", in.AgentID())
			}
		}
		for _, s := range in.Selectors() {
			if err := ValidateSelector(s.Value); err != nil {
				t.Fatalf("selector %q: %v", s.Value, err)
			}
		}
	})
}
