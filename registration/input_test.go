package registration

import (
	"strings"
	"testing"
	"time"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// idOfLen returns a SPIFFE ID in td of exactly n bytes.
func idOfLen(n int) string {
	prefix := "spiffe://example.org/"
	return prefix + strings.Repeat("a", n-len(prefix))
}

func inputEntry() *sigilv1.Entry {
	e := validEntry()
	e.ParentId = "spiffe://example.org/sigil/agent/join_token/0123456789abcdef0123456789abcdef"
	return e
}

func sels(n int, f func(i int) string) []*sigilv1.Selector {
	out := make([]*sigilv1.Selector, n)
	for i := range out {
		out[i] = &sigilv1.Selector{Type: "unix", Value: f(i)}
	}
	return out
}

// TestValidateInputLimits: every limit, at the limit accepted, beyond it
// refused with a message that names it.
func TestValidateInputLimits(t *testing.T) {
	longPath := "path:/" + strings.Repeat("p", MaxSelectorValueLen-len("path:/"))
	cases := []struct {
		name   string
		mutate func(e *sigilv1.Entry)
		want   string // "" = accepted
	}{
		{"valid", func(e *sigilv1.Entry) {}, ""},
		{"spiffe_id at 2048", func(e *sigilv1.Entry) { e.SpiffeId = idOfLen(MaxSPIFFEIDLen) }, ""},
		{"spiffe_id at 2049", func(e *sigilv1.Entry) { e.SpiffeId = idOfLen(MaxSPIFFEIDLen + 1) }, "spiffe_id is 2049 bytes long; SPIFFE IDs are at most 2048 bytes"},
		{"spiffe_id 70000", func(e *sigilv1.Entry) { e.SpiffeId = idOfLen(70000) }, "SPIFFE IDs are at most 2048 bytes"},
		{"parent_id at 2048", func(e *sigilv1.Entry) { e.ParentId = idOfLen(MaxSPIFFEIDLen) }, ""},
		{"parent_id at 2049", func(e *sigilv1.Entry) { e.ParentId = idOfLen(MaxSPIFFEIDLen + 1) }, "parent_id is 2049 bytes long"},
		{"selector value at limit", func(e *sigilv1.Entry) { e.Selectors[0].Value = longPath }, ""},
		{"selector value over limit", func(e *sigilv1.Entry) { e.Selectors[0].Value = longPath + "p" }, "value of 4097 bytes is too long (at most 4096)"},
		{"selector value 1 MiB", func(e *sigilv1.Entry) { e.Selectors[0].Value = "path:/" + strings.Repeat("p", 1<<20) }, "is too long"},
		{"selector type over limit", func(e *sigilv1.Entry) { e.Selectors[0].Type = strings.Repeat("t", MaxSelectorTypeLen+1) }, "selector type of 65 bytes is too long"},
		{"64 selectors", func(e *sigilv1.Entry) {
			e.Selectors = sels(MaxSelectors, func(i int) string { return "uid:" + itoa(i) })
		}, ""},
		{"65 selectors", func(e *sigilv1.Entry) {
			e.Selectors = sels(MaxSelectors+1, func(i int) string { return "uid:" + itoa(i) })
		}, "65 selectors, at most 64"},
		{"selector bytes at limit", func(e *sigilv1.Entry) {
			// 4 selectors of 4+4096 bytes = 16400 > 16384; 3 of them and a small one fit.
			e.Selectors = sels(4, func(i int) string {
				if i == 3 {
					return "path:/" + strings.Repeat("q", MaxSelectorBytes-3*(4+MaxSelectorValueLen)-4-len("path:/"))
				}
				return "path:/" + strings.Repeat(string(rune('a'+i)), MaxSelectorValueLen-len("path:/"))
			})
		}, ""},
		{"selector bytes over limit", func(e *sigilv1.Entry) {
			e.Selectors = sels(4, func(i int) string {
				return "path:/" + strings.Repeat(string(rune('a'+i)), MaxSelectorValueLen-len("path:/"))
			})
		}, "selectors total 16400 bytes, at most 16384"},
		{"hint at limit", func(e *sigilv1.Entry) { e.Hint = strings.Repeat("h", MaxHintLen) }, ""},
		{"hint over limit", func(e *sigilv1.Entry) { e.Hint = strings.Repeat("h", MaxHintLen+1) }, "hint of 1025 bytes is too long"},
		{"hint control", func(e *sigilv1.Entry) { e.Hint = "a\x1b[2J" }, "hint has control characters"},
		{"x509 ttl 0 (default)", func(e *sigilv1.Entry) { e.X509SvidTtl = 0 }, ""},
		{"x509 ttl at minimum", func(e *sigilv1.Entry) { e.X509SvidTtl = 4 }, ""},
		{"x509 ttl 1s", func(e *sigilv1.Entry) { e.X509SvidTtl = 1 }, "x509_svid_ttl 1s out of range: want 0 (the server default) or 4s"},
		{"x509 ttl 3s", func(e *sigilv1.Entry) { e.X509SvidTtl = 3 }, "x509_svid_ttl 3s out of range"},
		{"x509 ttl at maximum", func(e *sigilv1.Entry) { e.X509SvidTtl = MaxTTLSeconds }, ""},
		{"x509 ttl over maximum", func(e *sigilv1.Entry) { e.X509SvidTtl = MaxTTLSeconds + 1 }, "out of range"},
		{"jwt ttl 1s", func(e *sigilv1.Entry) { e.JwtSvidTtl = 1 }, "jwt_svid_ttl 1s out of range"},
		{"jwt ttl at minimum", func(e *sigilv1.Entry) { e.JwtSvidTtl = 4 }, ""},
		{"reserved path upper case", func(e *sigilv1.Entry) { e.SpiffeId = "spiffe://example.org/SIGIL/agent/x" }, "the path /SIGIL/ is reserved for Sigil"},
		{"reserved path mixed case", func(e *sigilv1.Entry) { e.SpiffeId = "spiffe://example.org/Sigil" }, "reserved for Sigil"},
		{"reserved path exact", func(e *sigilv1.Entry) { e.SpiffeId = "spiffe://example.org/sigil/x" }, "reserved path"},
		{"sigil as later segment", func(e *sigilv1.Entry) { e.SpiffeId = "spiffe://example.org/apps/SIGIL" }, ""},
		{"sigil prefix of segment", func(e *sigilv1.Entry) { e.SpiffeId = "spiffe://example.org/SIGILS/x" }, ""},
		{"parent upper case reserved", func(e *sigilv1.Entry) { e.ParentId = "spiffe://example.org/SIGIL/agent/join_token/x" }, "parent_id"},
		{"unknown selector type", func(e *sigilv1.Entry) { e.Selectors[0] = &sigilv1.Selector{Type: "foo", Value: "bar"} }, `unknown selector type "foo" (known types: `},
		{"unix uid abc", func(e *sigilv1.Entry) { e.Selectors[0].Value = "uid:abc" }, `selector "unix:uid:abc": uid: "abc" is not a numeric id`},
		{"unix uid -1", func(e *sigilv1.Entry) { e.Selectors[0].Value = "uid:-1" }, "is not a numeric id"},
		{"unix uid leading zero", func(e *sigilv1.Entry) { e.Selectors[0].Value = "uid:01000" }, "without sign or leading zeros"},
		{"unix uid 2^32-1", func(e *sigilv1.Entry) { e.Selectors[0].Value = "uid:4294967295" }, "is not a numeric id"},
		{"unix uid 2^32-2", func(e *sigilv1.Entry) { e.Selectors[0].Value = "uid:4294967294" }, ""},
		{"unix uid 0", func(e *sigilv1.Entry) { e.Selectors[0].Value = "uid:0" }, ""},
		{"unix gid", func(e *sigilv1.Entry) { e.Selectors[0].Value = "gid:100" }, ""},
		{"unix gid bad", func(e *sigilv1.Entry) { e.Selectors[0].Value = "gid:x" }, "gid:"},
		{"unix supplementary_gid", func(e *sigilv1.Entry) { e.Selectors[0].Value = "supplementary_gid:27" }, ""},
		{"unix supplementary_gid bad", func(e *sigilv1.Entry) { e.Selectors[0].Value = "supplementary_gid:+27" }, "not a numeric id"},
		{"unix user", func(e *sigilv1.Entry) { e.Selectors[0].Value = "user:www-data" }, ""},
		{"unix user with domain", func(e *sigilv1.Entry) { e.Selectors[0].Value = "user:alice@ad.example.com" }, ""},
		{"unix user colon", func(e *sigilv1.Entry) { e.Selectors[0].Value = "user:a:b" }, "not allowed in user and group names"},
		{"unix group long", func(e *sigilv1.Entry) { e.Selectors[0].Value = "group:" + strings.Repeat("g", 257) }, "want 1 to 256 bytes"},
		{"unix path relative", func(e *sigilv1.Entry) { e.Selectors[0].Value = "path:bin/x" }, "not an absolute path"},
		{"unix path unclean", func(e *sigilv1.Entry) { e.Selectors[0].Value = "path:/usr//bin/../bin/x" }, `not a clean path (the attestor reports "/usr/bin/x")`},
		{"unix path", func(e *sigilv1.Entry) { e.Selectors[0].Value = "path:/usr/bin/x" }, ""},
		{"unix sha256", func(e *sigilv1.Entry) { e.Selectors[0].Value = "sha256:" + strings.Repeat("ab", 32) }, ""},
		{"unix sha256 upper", func(e *sigilv1.Entry) { e.Selectors[0].Value = "sha256:" + strings.Repeat("AB", 32) }, "64 lowercase hex digits"},
		{"unix sha256 short", func(e *sigilv1.Entry) { e.Selectors[0].Value = "sha256:abc" }, "got 3 characters"},
		{"unix unknown key", func(e *sigilv1.Entry) { e.Selectors[0].Value = "pid:1" }, "want unix:<key>:<value> with key one of gid, group, path, sha256, supplementary_gid, uid, user"},
		{"unix no key", func(e *sigilv1.Entry) { e.Selectors[0].Value = "1000" }, "want unix:<key>:<value>"},
		{"join_token node selector", func(e *sigilv1.Entry) {
			e.ParentId = ServersID(td).String()
			e.Selectors[0] = &sigilv1.Selector{Type: "join_token", Value: "0123456789abcdef0123456789abcdef"}
		}, ""},
		{"join_token bad", func(e *sigilv1.Entry) {
			e.ParentId = ServersID(td).String()
			e.Selectors[0] = &sigilv1.Selector{Type: "join_token", Value: "abc"}
		}, "not a join token agent id"},
		{"dns name of 253", func(e *sigilv1.Entry) { e.DnsNames = []string{dnsOfLen(253)} }, ""},
		{"dns name of 254", func(e *sigilv1.Entry) { e.DnsNames = []string{dnsOfLen(254)} }, "invalid DNS name"},
		{"dns label of 63", func(e *sigilv1.Entry) { e.DnsNames = []string{strings.Repeat("l", 63) + ".org"} }, ""},
		{"dns label of 64", func(e *sigilv1.Entry) { e.DnsNames = []string{strings.Repeat("l", 64) + ".org"} }, "invalid DNS name"},
		{"64 dns names", func(e *sigilv1.Entry) { e.DnsNames = dnsNames(MaxDNSNames) }, ""},
		{"65 dns names", func(e *sigilv1.Entry) { e.DnsNames = dnsNames(MaxDNSNames + 1) }, "65 DNS names, at most 64"},
		{"dns syntax", func(e *sigilv1.Entry) { e.DnsNames = []string{"-bad.example.org"} }, "invalid DNS name"},
		// The structural rules still apply.
		{"structural: other trust domain", func(e *sigilv1.Entry) { e.SpiffeId = "spiffe://other.org/web" }, "not in trust domain"},
		{"structural: empty value", func(e *sigilv1.Entry) { e.Selectors[0].Value = "" }, "empty value"},
		{"nil selector", func(e *sigilv1.Entry) { e.Selectors[0] = nil }, "selector is missing"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := inputEntry()
			c.mutate(e)
			err := ValidateInput(td, e)
			if c.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want error containing %q", err, c.want)
			}
			if !strings.HasPrefix(err.Error(), "registration: ") {
				t.Fatalf("error %q lacks the package prefix", err)
			}
		})
	}
	if err := ValidateInput(td, nil); err == nil {
		t.Fatal("nil entry accepted")
	}
}

// TestValidateStaysLenient: the structural rules the Raft FSM applies do
// not include the input policy, so commands committed before it apply as
// they did.
func TestValidateStaysLenient(t *testing.T) {
	e := inputEntry()
	e.Selectors = []*sigilv1.Selector{{Type: "k8s", Value: "ns:x"}, {Type: "unix", Value: "uid:abc"}}
	e.X509SvidTtl = 1
	e.SpiffeId = idOfLen(6022)
	if err := Validate(td, e); err != nil {
		t.Fatalf("Validate tightened: %v", err)
	}
	if err := ValidateInput(td, e); err == nil {
		t.Fatal("ValidateInput accepted it")
	}
}

func TestValidateSelectorInput(t *testing.T) {
	for _, ok := range []string{"unix:uid:1000", "unix:path:/", "join_token:0123456789abcdef0123456789abcdef"} {
		s, err := ParseSelector(ok)
		if err != nil {
			t.Fatalf("parse %q: %v", ok, err)
		}
		if err := ValidateSelectorInput(s); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for bad, want := range map[string]string{
		"foo:bar":      "unknown selector type",
		"unix:uid:abc": "not a numeric id",
		"unix:uid:-1":  "not a numeric id",
	} {
		s, err := ParseSelector(bad) // the syntax is fine: the type is the server's to judge
		if err != nil {
			t.Fatalf("parse %q: %v", bad, err)
		}
		if err := ValidateSelectorInput(s); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want %q", bad, err, want)
		}
	}
	if err := ValidateSelectorInput(nil); err == nil {
		t.Fatal("nil selector accepted")
	}
}

func TestParseSelectorLimits(t *testing.T) {
	atLimit := "unix:path:/" + strings.Repeat("p", MaxSelectorValueLen-len("path:/"))
	if _, err := ParseSelector(atLimit); err != nil {
		t.Fatalf("value at the limit refused: %v", err)
	}
	for _, s := range []string{atLimit + "p", "unix:" + strings.Repeat("v", 1<<20), strings.Repeat("t", MaxSelectorTypeLen+1) + ":v"} {
		if _, err := ParseSelector(s); err == nil || !strings.Contains(err.Error(), "too long") {
			t.Errorf("selector of %d bytes: got %v", len(s), err)
		}
	}
}

func TestRegisterSelectorType(t *testing.T) {
	e := inputEntry()
	e.Selectors = []*sigilv1.Selector{{Type: "test-plugin", Value: "ok"}}
	if err := ValidateInput(td, e); err == nil || !strings.Contains(err.Error(), "unknown selector type") {
		t.Fatalf("unregistered type: %v", err)
	}
	RegisterSelectorType("test-plugin", func(v string) error {
		if v != "ok" {
			return errorString("want ok")
		}
		return nil
	})
	if err := ValidateInput(td, e); err != nil {
		t.Fatalf("registered type refused: %v", err)
	}
	e.Selectors[0].Value = "nope"
	if err := ValidateInput(td, e); err == nil || !strings.Contains(err.Error(), `selector "test-plugin:nope": want ok`) {
		t.Fatalf("plugin validator not applied: %v", err)
	}
	found := false
	for _, n := range SelectorTypes() {
		found = found || n == "test-plugin"
	}
	if !found {
		t.Fatal("SelectorTypes does not list the new type")
	}
	for _, bad := range []string{"test-plugin", "", "a:b", "a b", strings.Repeat("x", MaxSelectorTypeLen+1)} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("RegisterSelectorType(%q) did not panic", bad)
				}
			}()
			RegisterSelectorType(bad, nil)
		}()
	}
}

func TestCheckJoinTokenTTL(t *testing.T) {
	for _, c := range []struct {
		ttl time.Duration
		ok  bool
	}{
		{time.Second, true}, {10 * time.Minute, true}, {24 * time.Hour, true},
		{24*time.Hour + time.Second, false}, {10 * 365 * 24 * time.Hour, false}, {0, false}, {-time.Second, false}, {time.Millisecond, false},
	} {
		err := CheckJoinTokenTTL(c.ttl)
		if (err == nil) != c.ok {
			t.Errorf("ttl %v: got %v, want ok=%v", c.ttl, err, c.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "want 1s to 24h0m0s") {
			t.Errorf("ttl %v: unclear error %v", c.ttl, err)
		}
	}
}

func TestAgentIDLength(t *testing.T) {
	if _, err := AgentID(td, "join_token", strings.Repeat("a", 3000)); err == nil || !strings.Contains(err.Error(), "at most 2048 bytes") {
		t.Fatalf("long agent id: %v", err)
	}
	prefix := len("spiffe://example.org/sigil/agent/x/")
	id, err := AgentID(td, "x", strings.Repeat("a", MaxSPIFFEIDLen-prefix))
	if err != nil || len(id.String()) != MaxSPIFFEIDLen {
		t.Fatalf("agent id at the limit: %v", err)
	}
	if _, err := AgentID(td, "x", strings.Repeat("a", MaxSPIFFEIDLen-prefix+1)); err == nil {
		t.Fatal("agent id one over the limit accepted")
	}
	if _, err := ServerID(td, strings.Repeat("n", MaxSPIFFEIDLen)); err == nil {
		t.Fatal("long server id accepted")
	}
}

func TestParseSPIFFEID(t *testing.T) {
	if _, err := ParseSPIFFEID("spiffe_id", idOfLen(MaxSPIFFEIDLen)); err != nil {
		t.Fatal(err)
	}
	if _, err := ParseSPIFFEID("spiffe_id", idOfLen(MaxSPIFFEIDLen+1)); err == nil {
		t.Fatal("long id accepted")
	}
	if _, err := ParseSPIFFEID("spiffe_id", "nope"); err == nil || !strings.Contains(err.Error(), `invalid spiffe_id "nope"`) {
		t.Fatalf("bad id: %v", err)
	}
}

type errorString string

func (e errorString) Error() string { return string(e) }

func itoa(i int) string {
	const digits = "0123456789"
	if i < 10 {
		return digits[i : i+1]
	}
	return itoa(i/10) + digits[i%10:i%10+1]
}

// dnsOfLen returns a valid DNS name of n bytes (labels of up to 63).
func dnsOfLen(n int) string {
	var labels []string
	for n > 0 {
		l := min(63, n)
		if n-l == 1 { // no room for a dot and a label of one
			l--
		}
		labels = append(labels, strings.Repeat("d", l))
		n -= l + 1
	}
	return strings.Join(labels, ".")
}

func dnsNames(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = "h" + itoa(i) + ".example.org"
	}
	return out
}

func TestCheckEntryID(t *testing.T) {
	if err := CheckEntryID(strings.Repeat("i", MaxEntryIDLen)); err != nil {
		t.Fatalf("id at the limit: %v", err)
	}
	for id, want := range map[string]string{
		"":                                   "entry id is required",
		strings.Repeat("i", MaxEntryIDLen+1): "entry id of 256 bytes is too long (at most 255)",
		"a\x00b":                             "control characters",
	} {
		if err := CheckEntryID(id); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("id of %d bytes: got %v, want %q", len(id), err, want)
		}
	}
}

// TestCheckFederatesWith: federates_with holds at most MaxFederatesWith
// distinct foreign trust domain names; ValidateInput applies it.
func TestCheckFederatesWith(t *testing.T) {
	tds := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = "td" + itoa(i) + ".example"
		}
		return out
	}
	cases := []struct {
		name  string
		names []string
		want  string // "" = accepted
	}{
		{"none", nil, ""},
		{"one", []string{"gcp.example"}, ""},
		{"at limit", tds(MaxFederatesWith), ""},
		{"over limit", tds(MaxFederatesWith + 1), "federates with 33 trust domains, at most 32 allowed"},
		{"local", []string{"gcp.example", "example.org"}, `federates_with: "example.org" is the local trust domain`},
		{"duplicate", []string{"gcp.example", "aws.example", "gcp.example"}, `duplicate trust domain "gcp.example"`},
		{"empty", []string{""}, "federates_with: invalid trust domain"},
		{"upper case", []string{"GCP.example"}, "federates_with: invalid trust domain"},
		{"spiffe id", []string{"spiffe://gcp.example"}, `"spiffe://gcp.example" is not a trust domain name (write "gcp.example")`},
		{"spiffe id with path", []string{"spiffe://gcp.example/x"}, "is not a trust domain name"},
		{"long", []string{strings.Repeat("a", MaxTrustDomainLen+1)}, "trust domain name of 256 bytes is too long (at most 255)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, check := range []func() error{
				func() error { return CheckFederatesWith(td, c.names) },
				func() error { e := inputEntry(); e.FederatesWith = c.names; return ValidateInput(td, e) },
			} {
				err := check()
				if c.want == "" {
					if err != nil {
						t.Fatalf("refused: %v", err)
					}
					continue
				}
				if err == nil || !strings.Contains(err.Error(), c.want) {
					t.Fatalf("got %v, want error containing %q", err, c.want)
				}
				if !strings.HasPrefix(err.Error(), "registration: ") || strings.Contains(err.Error(), "registration: registration:") {
					t.Fatalf("error %q: want one package prefix", err)
				}
			}
		})
	}
	// Validate (the rules the Raft store applies to every committed
	// entry) does not look at federates_with.
	e := inputEntry()
	e.FederatesWith = []string{"example.org"}
	if err := Validate(td, e); err != nil {
		t.Fatalf("Validate: %v", err)
	}
}
