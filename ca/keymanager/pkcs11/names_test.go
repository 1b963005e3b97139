package pkcs11

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/ca"
)

func TestKeyLabel(t *testing.T) {
	label, id := KeyLabel("sigil", td, "s1", ca.KeyScopeAuthorities, "x509-ca-1")
	if label != "sigil/example.org/s1/authorities/x509-ca-1" || len(id) != IDLen {
		t.Fatalf("KeyLabel = %q, %x", label, id)
	}
	label2, id2 := KeyLabel("sigil", td, "s1", ca.KeyScopeAuthorities, "x509-ca-1")
	if label2 != label || !bytes.Equal(id, id2) {
		t.Fatal("KeyLabel is not deterministic")
	}
	// Every part of the name changes the id.
	for name, other := range map[string][]byte{
		"prefix": second(KeyLabel("other", td, "s1", ca.KeyScopeAuthorities, "x509-ca-1")),
		"td":     second(KeyLabel("sigil", spiffeid.RequireTrustDomainFromString("example.com"), "s1", ca.KeyScopeAuthorities, "x509-ca-1")),
		"node":   second(KeyLabel("sigil", td, "s2", ca.KeyScopeAuthorities, "x509-ca-1")),
		"scope":  second(KeyLabel("sigil", td, "s1", ca.KeyScopeClusterIdentity, "x509-ca-1")),
		"id":     second(KeyLabel("sigil", td, "s1", ca.KeyScopeAuthorities, "x509-ca-2")),
	} {
		if bytes.Equal(other, id) {
			t.Errorf("changing the %s keeps the CKA_ID", name)
		}
	}
	// A long name is cut, keeps its start, and stays unique.
	long := spiffeid.RequireTrustDomainFromString(strings.Repeat("d", 60) + ".example.org")
	l1, i1 := KeyLabel("sigil", long, "s1", ca.KeyScopeAuthorities, "x509-ca-1")
	l2, i2 := KeyLabel("sigil", long, "s1", ca.KeyScopeAuthorities, "x509-ca-2")
	if len(l1) != MaxLabelLen || !strings.HasPrefix(l1, "sigil/ddd") || !strings.Contains(l1, "~") || l1 == l2 || bytes.Equal(i1, i2) {
		t.Fatalf("long labels %q %q", l1, l2)
	}
	// A cut never splits a character.
	l3, _ := KeyLabel("sigil", td, strings.Repeat("é", 40), ca.KeyScopeAuthorities, "k")
	if !utf8.ValidString(l3) || len(l3) > MaxLabelLen {
		t.Fatalf("label %q", l3)
	}
}

func second(_ string, b []byte) []byte { return b }

// FuzzKeyLabel: any node name and key id give a label within
// MaxLabelLen that is valid UTF-8 when they are, and a CKA_ID of IDLen
// bytes that differs for another id.
func FuzzKeyLabel(f *testing.F) {
	f.Add("s1", "x509-ca-1")
	f.Add(strings.Repeat("n", 80), "jwt-key-3")
	f.Add("ü", strings.Repeat("é", 70))
	f.Fuzz(func(t *testing.T, node, id string) {
		label, ckaID := KeyLabel("sigil", td, node, ca.KeyScopeAuthorities, id)
		if len(label) > MaxLabelLen || len(ckaID) != IDLen {
			t.Fatalf("label %q (%d bytes), id %x", label, len(label), ckaID)
		}
		if utf8.ValidString(node) && utf8.ValidString(id) && !utf8.ValidString(label) {
			t.Fatalf("label %q is not UTF-8", label)
		}
		if _, other := KeyLabel("sigil", td, node, ca.KeyScopeAuthorities, id+"x"); bytes.Equal(other, ckaID) {
			t.Fatal("two ids share a CKA_ID")
		}
		if checkKeyID(id) == nil && (id == "" || !utf8.ValidString(id)) {
			t.Fatalf("checkKeyID accepted %q", id)
		}
	})
}
