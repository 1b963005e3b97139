package ca

import (
	"reflect"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// TestRendersOnce: a template is rendered once only when it uses no data
// and calls only functions whose result depends on their arguments; a
// template rendered once renders the same for any SVID.
func TestRendersOnce(t *testing.T) {
	for _, tt := range []struct {
		text string
		once bool
	}{
		{`{"subject": "web"}`, true},
		{`{"subject": {{ "web" | upper | toJson }}, "extensions": [{"id": "1.2.3", "value": {{ asn1Enc "int:5" | toJson }} }]}`, true},
		{`{{ $o := "Example" }}{"subject": {"organization": {{ toJson $o }} }}`, true},
		{`{{ define "o" }}"Example"{{ end }}{"subject": {"organization": {{ template "o" }} }}`, true},
		{`{"subject": {{ toJson .Subject }} }`, false},
		{`{"subject": {{ toJson $.Path }} }`, false},
		{`{{ with .DNSNames }}{"dnsNames": {{ toJson . }} }{{ else }}{}{{ end }}`, false},
		{`{{ range $i, $s := .PathSegments }}{{ end }}{}`, false},
		{`{{ define "o" }}{{ toJson .EntryID }}{{ end }}{"subject": {{ template "o" . }} }`, false},
		{`{"subject": {{ now | date "2006" | toJson }} }`, false},
		{`{"subject": {{ uuidv4 | toJson }} }`, false},
	} {
		x, err := ParseX509SVIDTemplate(tt.text)
		if err != nil {
			t.Errorf("%s: %v", tt.text, err)
			continue
		}
		if x.RendersOnce() != tt.once {
			t.Errorf("%s: RendersOnce = %v, want %v", tt.text, x.RendersOnce(), tt.once)
		}
		if !x.RendersOnce() {
			continue
		}
		other, err := x.render(spiffeid.RequireFromString("spiffe://other.org/a"), []string{"a.other.org"}, "e2")
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(other, x.static) {
			t.Errorf("%s: renders differently for other data: %+v, %+v", tt.text, other, x.static)
		}
	}
}
