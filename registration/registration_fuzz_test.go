package registration

import (
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// FuzzSPIFFEID: ParseSPIFFEID never panics, is deterministic, and an
// accepted ID is within the length limit and round-trips.
func FuzzSPIFFEID(f *testing.F) {
	for _, s := range []string{
		"spiffe://example.org/web", "spiffe://example.org", "spiffe://Example.org/x", "spiffe://example.org/SIGIL/agent",
		"spiffe://example.org/a/../b", "https://example.org/x", "", idOfLen(MaxSPIFFEIDLen), idOfLen(MaxSPIFFEIDLen + 1),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseSPIFFEID("spiffe_id", s)
		_, err2 := ParseSPIFFEID("spiffe_id", s)
		if (err == nil) != (err2 == nil) {
			t.Fatal("not deterministic")
		}
		if err != nil {
			if !strings.HasPrefix(err.Error(), "registration: ") {
				t.Fatalf("error without prefix: %v", err)
			}
			return
		}
		if len(s) > MaxSPIFFEIDLen || len(id.String()) > MaxSPIFFEIDLen {
			t.Fatalf("accepted an ID of %d bytes", len(s))
		}
		if id.String() != s {
			t.Fatalf("round trip: %q -> %q", s, id)
		}
	})
}

// FuzzSelector: ParseSelector and ValidateSelectorInput never panic and are
// deterministic; an accepted selector satisfies every limit, formats back
// to its input, and passes the structural rules the FSM applies.
func FuzzSelector(f *testing.F) {
	for _, s := range []string{
		"unix:uid:1000", "unix:uid:abc", "unix:uid:-1", "unix:uid:4294967295", "foo:bar", "unix:path:/usr/bin/x",
		"unix:path:/a//b", "unix:sha256:" + strings.Repeat("0", 64), "unix:user:www-data", "join_token:0123456789abcdef0123456789abcdef",
		"unix", ":x", "unix:", "a b:c", "unix:uid:1\n", strings.Repeat("t", 70) + ":v",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sel, err := ParseSelector(s)
		if err != nil {
			return
		}
		if FormatSelector(sel) != s {
			t.Fatalf("round trip: %q -> %q", s, FormatSelector(sel))
		}
		if len(sel.Type) > MaxSelectorTypeLen || len(sel.Value) > MaxSelectorValueLen {
			t.Fatalf("accepted a selector over the limits: %d/%d bytes", len(sel.Type), len(sel.Value))
		}
		if err := ValidateSelector(sel); err != nil {
			t.Fatalf("parsed selector fails the structural rules: %v", err)
		}
		err1 := ValidateSelectorInput(sel)
		err2 := ValidateSelectorInput(sel)
		if (err1 == nil) != (err2 == nil) || (err1 != nil && err1.Error() != err2.Error()) {
			t.Fatalf("not deterministic: %v / %v", err1, err2)
		}
		if err1 != nil {
			return
		}
		if _, known := lookupSelectorType(sel.Type); !known {
			t.Fatalf("accepted unknown type %q", sel.Type)
		}
		if sel.Type == "unix" {
			if key, _, _ := strings.Cut(sel.Value, ":"); unixKeys[key] == nil {
				t.Fatalf("accepted unknown unix key in %q", s)
			}
		}
	})
}

// FuzzEntry: ValidateInput never panics, is deterministic, does not modify
// the entry, and an accepted entry satisfies every limit and the
// structural rules.
func FuzzEntry(f *testing.F) {
	agent := "spiffe://example.org/sigil/agent/join_token/0123456789abcdef0123456789abcdef"
	f.Add("spiffe://example.org/web", agent, "unix", "uid:1000", "unix", "gid:1", int32(0), int32(0), "web.example.org", "")
	f.Add("spiffe://example.org/SIGIL/x", agent, "unix", "uid:abc", "foo", "bar", int32(1), int32(1), "", "hint")
	f.Add("spiffe://example.org/nodes/db", "spiffe://example.org/sigil/server", "join_token", "0123456789abcdef0123456789abcdef", "unix", "path:/x", int32(3600), int32(300), "*.svc", "")
	f.Add(idOfLen(MaxSPIFFEIDLen+1), agent, "unix", "uid:1", "unix", "uid:1", int32(-1), int32(MaxTTLSeconds+1), "bad_name", "\x00")
	f.Fuzz(func(t *testing.T, id, parent, t1, v1, t2, v2 string, x509TTL, jwtTTL int32, dns, hint string) {
		e := &sigilv1.Entry{
			SpiffeId: id, ParentId: parent,
			Selectors:   []*sigilv1.Selector{{Type: t1, Value: v1}, {Type: t2, Value: v2}},
			X509SvidTtl: x509TTL, JwtSvidTtl: jwtTTL, Hint: hint,
		}
		if dns != "" {
			e.DnsNames = []string{dns}
		}
		before := proto.Clone(e)
		err := ValidateInput(td, e)
		if !proto.Equal(before, e) {
			t.Fatal("ValidateInput modified the entry")
		}
		if err2 := ValidateInput(td, e); (err == nil) != (err2 == nil) {
			t.Fatal("not deterministic")
		}
		if err != nil {
			if !strings.HasPrefix(err.Error(), "registration: ") {
				t.Fatalf("error without prefix: %v", err)
			}
			return
		}
		if err := Validate(td, e); err != nil {
			t.Fatalf("accepted input fails the structural rules: %v", err)
		}
		if len(id) > MaxSPIFFEIDLen || len(parent) > MaxSPIFFEIDLen || len(hint) > MaxHintLen {
			t.Fatal("accepted an entry over the length limits")
		}
		sid := spiffeid.RequireFromString(id)
		if IsReserved(sid) || strings.EqualFold(strings.Split(sid.Path(), "/")[1], "sigil") {
			t.Fatalf("accepted a reserved ID %q", id)
		}
		for _, ttl := range []int32{x509TTL, jwtTTL} {
			if ttl != 0 && (time.Duration(ttl)*time.Second < MinSVIDTTL || ttl > MaxTTLSeconds) {
				t.Fatalf("accepted TTL %d", ttl)
			}
		}
		for _, s := range e.Selectors {
			if err := ValidateSelectorInput(s); err != nil {
				t.Fatalf("accepted entry with a bad selector: %v", err)
			}
		}
	})
}

// FuzzCheckFederatesWith: CheckFederatesWith never panics and accepts a
// name only if it is a trust domain name (its own canonical form, within
// MaxTrustDomainLen bytes) other than the local one; two names are
// refused when they are the same.
func FuzzCheckFederatesWith(f *testing.F) {
	for _, s := range []string{"gcp.example", "example.org", "spiffe://gcp.example", "GCP.example", "", "a_b-c.d", "gcp.example/x", strings.Repeat("a", 256)} {
		f.Add(s, "aws.example")
	}
	f.Add("gcp.example", "gcp.example")
	f.Fuzz(func(t *testing.T, a, b string) {
		if err := CheckFederatesWith(td, []string{a}); err == nil {
			fed, perr := spiffeid.TrustDomainFromString(a)
			if perr != nil || fed.Name() != a || fed == td || len(a) > MaxTrustDomainLen {
				t.Fatalf("accepted %q", a)
			}
		} else if !strings.HasPrefix(err.Error(), "registration: ") {
			t.Fatalf("error without prefix: %v", err)
		}
		if a == b && CheckFederatesWith(td, []string{a, b}) == nil {
			t.Fatalf("accepted %q twice", a)
		}
	})
}
