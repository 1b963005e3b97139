package agent

import (
	"fmt"
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// A packed entry decodes to the entry it was packed from, and its getters
// answer as the message's do.
func TestPackedEntryRoundTrip(t *testing.T) {
	entries := []*sigilv1.Entry{
		{Id: "a", SpiffeId: "spiffe://example.org/a"},
		{
			Id: "b", SpiffeId: "spiffe://example.org/b", ParentId: "spiffe://example.org/sigil/agent/x",
			Selectors:   []*sigilv1.Selector{{Type: "unix", Value: "uid:1"}, {Type: "k8s", Value: "ns:a:b"}, {Type: "unix", Value: "uid:1"}},
			X509SvidTtl: 600, JwtSvidTtl: 300, DnsNames: []string{"b.example.org", "c.example.org"},
			Admin: true, Downstream: true, Hint: "backend", CreatedAt: 1700000000, Revision: 7, ModifyIndex: 99,
			FederatesWith: []string{"partner.test", "other.test"},
		},
	}
	for i := 0; i < 50; i++ {
		e := entry(fmt.Sprintf("r%d", i), fmt.Sprintf("w/%d", i), int64(i), fmt.Sprintf("uid:%d", i), "gid:5")
		e.Hint = fmt.Sprint("h", i%3)
		if i%4 == 0 {
			e.DnsNames = []string{fmt.Sprintf("d%d.example.org", i)}
		}
		entries = append(entries, e)
	}
	interned := map[string]string{}
	intern := func(s string) string {
		if v, ok := interned[s]; ok {
			return v
		}
		interned[s] = s
		return s
	}
	for _, e := range entries {
		p := packEntry(e, intern)
		if got := p.decode(); !proto.Equal(got, e) {
			t.Fatalf("%s: decoded %v, want %v", e.Id, got, e)
		}
		if p.GetId() != e.GetId() || p.GetSpiffeId() != e.GetSpiffeId() || p.GetParentId() != e.GetParentId() ||
			p.GetCreatedAt() != e.GetCreatedAt() || p.GetHint() != e.GetHint() ||
			!slices.Equal(p.GetDnsNames(), e.GetDnsNames()) || !slices.Equal(p.GetFederatesWith(), e.GetFederatesWith()) {
			t.Fatalf("%s: getters differ from the message's", e.Id)
		}
		if id := p.identity(); !proto.Equal(id, &sigilv1.Entry{Id: e.Id, SpiffeId: e.SpiffeId, ParentId: e.ParentId, Selectors: e.Selectors}) {
			t.Fatalf("%s: identity %v", e.Id, id)
		}
		fp := fingerprintOf(&p)
		if fp.revision != e.GetRevision() || fp.ttl != e.GetX509SvidTtl() || fp.spiffeID != e.GetSpiffeId() {
			t.Fatalf("%s: fingerprint %+v", e.Id, fp)
		}
		q := packEntry(proto.Clone(e).(*sigilv1.Entry), intern)
		if !p.equal(&q) {
			t.Fatalf("%s: equal entries pack differently", e.Id)
		}
		c := proto.Clone(e).(*sigilv1.Entry)
		c.Selectors = append(c.Selectors, &sigilv1.Selector{Type: "unix", Value: "gid:9"})
		if q := packEntry(c, intern); p.equal(&q) {
			t.Fatalf("%s: a selector more packs equal", e.Id)
		}
		c = proto.Clone(e).(*sigilv1.Entry)
		c.ModifyIndex++
		if q := packEntry(c, intern); p.equal(&q) {
			t.Fatalf("%s: another modify index packs equal", e.Id)
		}
	}
}
