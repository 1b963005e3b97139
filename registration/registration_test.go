package registration

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func validEntry() *sigilv1.Entry {
	return &sigilv1.Entry{
		SpiffeId:  "spiffe://example.org/web",
		ParentId:  "spiffe://example.org/sigil/agent/join_token/abc",
		Selectors: []*sigilv1.Selector{{Type: "unix", Value: "uid:1000"}},
		DnsNames:  []string{"web.example.org", "*.svc.example.org"},
	}
}

func TestValidate(t *testing.T) {
	if err := Validate(td, validEntry()); err != nil {
		t.Fatalf("valid entry refused: %v", err)
	}
	cases := []struct {
		name   string
		mutate func(e *sigilv1.Entry)
		want   string
	}{
		{"malformed id", func(e *sigilv1.Entry) { e.SpiffeId = "spiffe://Example.org/web" }, "invalid spiffe_id"},
		{"not spiffe scheme", func(e *sigilv1.Entry) { e.SpiffeId = "https://example.org/web" }, "invalid spiffe_id"},
		{"other trust domain", func(e *sigilv1.Entry) { e.SpiffeId = "spiffe://other.org/web" }, "not in trust domain"},
		{"no path", func(e *sigilv1.Entry) { e.SpiffeId = "spiffe://example.org" }, "has no path"},
		{"reserved", func(e *sigilv1.Entry) { e.SpiffeId = "spiffe://example.org/sigil/agent/x" }, "reserved"},
		{"reserved root", func(e *sigilv1.Entry) { e.SpiffeId = "spiffe://example.org/sigil" }, "reserved"},
		{"bad parent", func(e *sigilv1.Entry) { e.ParentId = "nope" }, "invalid parent_id"},
		{"no selectors", func(e *sigilv1.Entry) { e.Selectors = nil }, "at least one selector"},
		{"empty selector type", func(e *sigilv1.Entry) { e.Selectors[0].Type = "" }, "type is empty"},
		{"empty selector value", func(e *sigilv1.Entry) { e.Selectors[0].Value = "" }, "empty value"},
		{"bad selector type", func(e *sigilv1.Entry) { e.Selectors[0].Type = "un ix" }, "colons or whitespace"},
		{"dup selector", func(e *sigilv1.Entry) { e.Selectors = append(e.Selectors, e.Selectors[0]) }, "duplicate selector"},
		{"negative ttl", func(e *sigilv1.Entry) { e.X509SvidTtl = -1 }, "out of range"},
		{"bad dns", func(e *sigilv1.Entry) { e.DnsNames = []string{"bad_name.org"} }, "invalid DNS name"},
		{"parent is self", func(e *sigilv1.Entry) { e.ParentId = e.SpiffeId }, "parent_id equals"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := validEntry()
			c.mutate(e)
			err := Validate(td, e)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want error containing %q", err, c.want)
			}
		})
	}
}

func TestParseSelector(t *testing.T) {
	s, err := ParseSelector("unix:uid:1000")
	if err != nil || s.Type != "unix" || s.Value != "uid:1000" {
		t.Fatalf("got %v %v", s, err)
	}
	if FormatSelector(s) != "unix:uid:1000" {
		t.Fatalf("round trip: %s", FormatSelector(s))
	}
	for _, bad := range []string{"", "unix", ":x", "unix:", "a b:c"} {
		if _, err := ParseSelector(bad); err == nil {
			t.Errorf("ParseSelector(%q) accepted", bad)
		}
	}
}

func TestSelectorSetContains(t *testing.T) {
	set := NewSelectorSet([]*sigilv1.Selector{{Type: "unix", Value: "uid:1"}, {Type: "unix", Value: "gid:2"}})
	if !set.Contains([]*sigilv1.Selector{{Type: "unix", Value: "uid:1"}}) {
		t.Fatal("subset not matched")
	}
	if set.Contains([]*sigilv1.Selector{{Type: "unix", Value: "uid:1"}, {Type: "unix", Value: "gid:3"}}) {
		t.Fatal("non-subset matched")
	}
	if set.Contains(nil) {
		t.Fatal("empty selector list must match nothing")
	}
}

func TestIDs(t *testing.T) {
	a, err := AgentID(td, "join_token", "abc")
	if err != nil || a.String() != "spiffe://example.org/sigil/agent/join_token/abc" || !IsAgentID(a) || !IsReserved(a) {
		t.Fatalf("agent id %v %v", a, err)
	}
	s, err := ServerID(td, "n1")
	if err != nil || !IsServerID(s) || IsAgentID(s) {
		t.Fatalf("server id %v %v", s, err)
	}
	// An id of several segments (node attestors such as aws_iid name an
	// agent "<account>/<region>/<instance>"): each segment is validated.
	if a, err := AgentID(td, "aws_iid", "123456789012/us-east-1/i-0abc"); err != nil || a.String() != "spiffe://example.org/sigil/agent/aws_iid/123456789012/us-east-1/i-0abc" {
		t.Fatalf("multi-segment agent id %v %v", a, err)
	}
	for _, bad := range []string{"a//b", "a/", "/a", "a/b c", "a/..", "a/./b", ""} {
		if _, err := AgentID(td, "join_token", bad); err == nil {
			t.Errorf("agent id %q accepted", bad)
		}
	}
}

func TestKeyIgnoresSelectorOrder(t *testing.T) {
	a := validEntry()
	a.Selectors = append(a.Selectors, &sigilv1.Selector{Type: "unix", Value: "gid:1"})
	b := validEntry()
	b.Selectors = append([]*sigilv1.Selector{{Type: "unix", Value: "gid:1"}}, b.Selectors...)
	if Key(a) != Key(b) {
		t.Fatal("key depends on selector order")
	}
}
