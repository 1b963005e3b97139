package awskms

import (
	"encoding/hex"
	"strings"
	"testing"
)

// unescapeElement reverses escapeElement, or reports false for text
// escapeElement cannot produce.
func unescapeElement(s string) (string, bool) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '_':
			if i+2 >= len(s) {
				return "", false
			}
			h := s[i+1 : i+3]
			if strings.ToLower(h) != h {
				return "", false
			}
			v, err := hex.DecodeString(h)
			if err != nil {
				return "", false
			}
			if v[0] >= 'a' && v[0] <= 'z' || v[0] >= 'A' && v[0] <= 'Z' || v[0] >= '0' && v[0] <= '9' || v[0] == '-' {
				return "", false // never escaped
			}
			b.WriteByte(v[0])
			i += 2
		case c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-':
			b.WriteByte(c)
		default:
			return "", false
		}
	}
	return b.String(), true
}

func TestAliasName(t *testing.T) {
	for _, tc := range []struct {
		td, node, scope, id, want string
	}{
		{"example.org", "server-1", "authorities", "x509-ca", "alias/sigil/example_2eorg/server-1/authorities/x509-ca"},
		{"example.org", "node_a/b", "cluster_identity", "jwt.2", "alias/sigil/example_2eorg/node_5fa_2fb/cluster_5fidentity/jwt_2e2"},
		{"td", "nöde", "authorities", "k", "alias/sigil/td/n_c3_b6de/authorities/k"},
	} {
		if got := AliasName(DefaultAliasPrefix, tc.td, tc.node, tc.scope, tc.id); got != tc.want {
			t.Errorf("AliasName(%q, %q, %q, %q) = %q, want %q", tc.td, tc.node, tc.scope, tc.id, got, tc.want)
		}
	}
	// Names that differ only in characters outside the charset stay apart.
	if AliasName("alias/s", "a.b", "n", "s", "i") == AliasName("alias/s", "a_b", "n", "s", "i") {
		t.Error("a.b and a_b share an alias")
	}
	// Too long: hashed, within the limit, still deterministic and distinct.
	long := strings.Repeat("x", 300)
	a1 := AliasName(DefaultAliasPrefix, "example.org", long, "authorities", "k1")
	a2 := AliasName(DefaultAliasPrefix, "example.org", long, "authorities", "k2")
	if len(a1) > MaxAliasLength || !strings.HasPrefix(a1, "alias/sigil/_h/") || a1 == a2 || a1 != AliasName(DefaultAliasPrefix, "example.org", long, "authorities", "k1") {
		t.Errorf("long names: %q, %q", a1, a2)
	}
	prefix := "alias/" + strings.Repeat("p", maxPrefixLength-len("alias/"))
	if err := checkAliasPrefix(prefix); err != nil {
		t.Fatal(err)
	}
	if a := AliasName(prefix, long, long, long, long); len(a) > MaxAliasLength {
		t.Errorf("alias of %d characters under the longest prefix", len(a))
	}
}

func TestCheckAliasPrefix(t *testing.T) {
	for p, ok := range map[string]bool{
		"alias/sigil":          true,
		"alias/team_a/sigil-1": true,
		"alias/":               false,
		"sigil":                false,
		"alias/sigil/":         false,
		"alias/a//b":           false,
		"alias/aws":            false,
		"alias/aws/x":          false,
		"alias/sig il":         false,
		"alias/sigil.prod":     false,
		"alias/" + strings.Repeat("a", maxPrefixLength): false,
	} {
		if err := checkAliasPrefix(p); (err == nil) != ok {
			t.Errorf("checkAliasPrefix(%q) = %v, want ok=%v", p, err, ok)
		}
	}
}

// FuzzAliasName checks that every alias is in the KMS alias charset,
// at most 256 characters, deterministic, and (when not hashed) decodes back
// to exactly the four elements it was made from.
func FuzzAliasName(f *testing.F) {
	f.Add("example.org", "server-1", "authorities", "x509-ca")
	f.Add("a_b", "n/o/d/e", "cluster_identity", "_2e")
	f.Add("", "", "", "")
	f.Add(strings.Repeat("z", 200), "n", "s", "\x00\xff")
	f.Fuzz(func(t *testing.T, td, node, scope, id string) {
		a := AliasName(DefaultAliasPrefix, td, node, scope, id)
		if !aliasCharset.MatchString(a) {
			t.Fatalf("alias %q is outside the charset", a)
		}
		if len(a) > MaxAliasLength {
			t.Fatalf("alias of %d characters", len(a))
		}
		if a != AliasName(DefaultAliasPrefix, td, node, scope, id) {
			t.Fatal("not deterministic")
		}
		rest, ok := strings.CutPrefix(a, DefaultAliasPrefix+"/")
		if !ok {
			t.Fatalf("alias %q does not start with the prefix", a)
		}
		if h, hashed := strings.CutPrefix(rest, "_h/"); hashed {
			if len(h) != 64 || strings.Trim(h, "0123456789abcdef") != "" {
				t.Fatalf("hashed alias %q", a)
			}
			return
		}
		parts := strings.Split(rest, "/")
		if len(parts) != 4 {
			t.Fatalf("alias %q has %d elements", a, len(parts))
		}
		for i, want := range []string{td, node, scope, id} {
			got, ok := unescapeElement(parts[i])
			if !ok || got != want {
				t.Fatalf("element %d of %q decodes to %q (%v), want %q", i, a, got, ok, want)
			}
		}
	})
}
