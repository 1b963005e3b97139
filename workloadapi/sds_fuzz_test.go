package workloadapi

import (
	"strings"
	"testing"
)

// FuzzParseSDSName: any resource name parses or is refused with an error,
// never a panic; a name that parses is of one kind and means what it
// says (an SVID's ID and a trust domain print back as the name).
func FuzzParseSDSName(f *testing.F) {
	for _, s := range []string{"default", "ROOTCA", "ALL", "example.org", "spiffe://example.org",
		"spiffe://example.org/envoy", "spiffe://example.org/", "", "spiffe://", "Example.org", "spiffe://a/b/../c", "*"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		n, err := parseSDSName(name)
		if err != nil {
			if n.kind != 0 {
				t.Fatalf("%q: error %v with kind %d", name, err, n.kind)
			}
			return
		}
		switch n.kind {
		case sdsDefault, sdsRootCA, sdsAll:
			if name != SDSDefaultSVID && name != SDSRootCA && name != SDSAllBundles {
				t.Fatalf("%q parsed as fixed name %d", name, n.kind)
			}
		case sdsSVID:
			if n.id.String() != name {
				t.Fatalf("%q parsed as SVID %q", name, n.id)
			}
		case sdsTrustDomain:
			if n.td.Name() != strings.TrimPrefix(name, "spiffe://") {
				t.Fatalf("%q parsed as trust domain %q", name, n.td.Name())
			}
		default:
			t.Fatalf("%q: kind %d", name, n.kind)
		}
		if len(name) > maxSDSNameLen {
			t.Fatalf("%q: %d bytes accepted", name, len(name))
		}
	})
}
