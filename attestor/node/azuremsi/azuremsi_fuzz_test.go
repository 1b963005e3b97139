package azuremsi

import (
	"strings"
	"testing"
)

// FuzzParseToken feeds arbitrary payloads to the payload parser: it never
// panics, and what it accepts is three base64url parts within the bound
// naming a lowercase GUID tenant.
func FuzzParseToken(f *testing.F) {
	for _, s := range []string{"", "a.b.c", "a..c", "a.eyJ0aWQiOiI3MmY5ODhiZi04NmYxLTQxYWYtOTFhYi0yZDdjZDAxMWRiNDcifQ.c",
		"a.e30.c", "a.bnVsbA.c", "a.b.c.d", "é.b.c"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		tok, tid, err := ParseToken(b)
		if err != nil {
			if tok != "" || tid != "" {
				t.Fatal("values returned with an error")
			}
			return
		}
		if tok != string(b) || len(strings.Split(tok, ".")) != 3 || len(b) > MaxTokenLen || !IsGUID(tid) {
			t.Fatalf("accepted %q (tenant %q)", b, tid)
		}
	})
}

// FuzzParseIdentity feeds arbitrary claims to the claims parser: it never
// panics, and what it accepts makes a valid agent ID and valid selectors.
func FuzzParseIdentity(f *testing.F) {
	for _, s := range []string{
		`{"tid":"72f988bf-86f1-41af-91ab-2d7cd011db47","oid":"9a0b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d","xms_mirid":"/subscriptions/11111111-2222-4333-8444-555555555555/resourcegroups/RG/providers/Microsoft.Compute/virtualMachines/VM"}`,
		`{"tid":"72f988bf-86f1-41af-91ab-2d7cd011db47","oid":"9a0b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d"}`,
		`{}`, `null`, `[]`, `{"tid":1}`,
		`{"tid":"72f988bf-86f1-41af-91ab-2d7cd011db47","oid":"9a0b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d","xms_mirid":"/subscriptions/11111111-2222-4333-8444-555555555555/resourcegroups/../providers/Microsoft.Compute/virtualMachines/\u0130"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		id, err := ParseIdentity(b)
		if err != nil {
			return
		}
		segs := strings.Split(id.AgentID(), "/")
		if len(segs) != 2 || !IsGUID(segs[0]) || !IsGUID(segs[1]) {
			t.Fatalf("agent id %q", id.AgentID())
		}
		for _, s := range id.Selectors() {
			if err := ValidateSelector(s.Value); err != nil {
				t.Fatalf("selector %q: %v", s.Value, err)
			}
		}
	})
}
