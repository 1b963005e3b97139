package raftstore

import (
	"bytes"
	"slices"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/registration"
)

// checkRec fails unless everything read in place from the record of e is
// e's: the keys, the modify index, the selectors, the trust domains,
// what signing reads, the filter and the duplicate key, and the entry it
// decodes to.
func checkRec(t *testing.T, e *sigilv1.Entry) {
	t.Helper()
	rec, err := encodeEntry(e)
	if err != nil {
		t.Fatalf("encode %v: %v", e, err)
	}
	if want, _ := (proto.MarshalOptions{Deterministic: true}).Marshal(e); len(want) > 0 && !bytes.Equal(rec.bytes(), want) {
		t.Fatalf("record %x, deterministic encoding %x", rec.bytes(), want)
	}
	if rec.id() != e.Id || rec.spiffeID() != e.SpiffeId || rec.parentID() != e.ParentId {
		t.Fatalf("keys %q %q %q, entry %q %q %q", rec.id(), rec.spiffeID(), rec.parentID(), e.Id, e.SpiffeId, e.ParentId)
	}
	for _, num := range []protowire.Number{entryFieldID, entryFieldSPIFFEID, entryFieldParentID} {
		if rec.key(num) != rec.keyAny(num) {
			t.Fatalf("key %d: fast %q, any %q", num, rec.key(num), rec.keyAny(num))
		}
	}
	if rec.modifyIndex() != e.ModifyIndex || !slices.Equal(rec.federatesWith(), e.FederatesWith) {
		t.Fatalf("modify index %d, federates with %q; entry %d, %q", rec.modifyIndex(), rec.federatesWith(), e.ModifyIndex, e.FederatesWith)
	}
	var sels []string
	rec.eachSelector(func(typ, value string) bool { sels = append(sels, typ+":"+value); return true })
	want := make([]string, len(e.Selectors))
	for i, s := range e.Selectors {
		want[i] = registration.FormatSelector(s)
	}
	if !slices.Equal(sels, want) {
		t.Fatalf("selectors %q, entry %q", sels, want)
	}
	se := rec.signingEntry()
	if se.ID != e.Id || se.SPIFFEID != e.SpiffeId || !slices.Equal(se.DNSNames, e.DnsNames) || se.X509TTL != e.X509SvidTtl || se.JWTTTL != e.JwtSvidTtl {
		t.Fatalf("signing entry %+v, entry %v", se, e)
	}
	if len(e.Selectors) > 0 && !rec.selectorsIn(registration.NewSelectorSet(e.Selectors)) {
		t.Fatalf("selectors of %v not in their own set", e)
	}
	if !(EntryFilter{SPIFFEID: e.SpiffeId, ParentID: e.ParentId, Selectors: e.Selectors}).matches(rec) && e.SpiffeId != "" && e.ParentId != "" {
		t.Fatalf("%v does not match a filter of its own fields", e)
	}
	if !sameRecKey(rec, e) || !sameRecKeys(rec, rec) {
		t.Fatalf("%v is not the same key as itself", e)
	}
	if back := rec.entry(); !proto.Equal(back, e) {
		t.Fatalf("record decodes to %v, entry %v", back, e)
	}
}

// TestEntryRecord: records of entries of every shape, long fields
// (lengths of two bytes and more), negative TTLs, and fields of a later
// version (unknown to this one, kept and sent as they are).
func TestEntryRecord(t *testing.T) {
	long := string(bytes.Repeat([]byte("x"), 20000))
	unknown := protowire.AppendTag(nil, 99, protowire.BytesType)
	unknown = protowire.AppendString(unknown, "later")
	unknown = protowire.AppendTag(unknown, 3, protowire.VarintType) // parent_id's number, another type
	unknown = protowire.AppendVarint(unknown, 7)
	withUnknown := &sigilv1.Entry{Id: "u", SpiffeId: "spiffe://example.org/u", ParentId: "spiffe://example.org/p"}
	withUnknown.ProtoReflect().SetUnknown(unknown)
	for _, e := range []*sigilv1.Entry{
		{Id: "a"},
		{SpiffeId: "spiffe://example.org/only"},
		{Id: "b", SpiffeId: "spiffe://example.org/b", ParentId: "spiffe://example.org/p", ModifyIndex: 1 << 40,
			Selectors: []*sigilv1.Selector{{Type: "unix", Value: "uid:1"}, {Type: "k8s", Value: ""}},
			DnsNames:  []string{"b.example", ""}, X509SvidTtl: -1, JwtSvidTtl: 1 << 30, FederatesWith: []string{"x.test", "y.test"},
			Admin: true, Downstream: true, Hint: "h", CreatedAt: -5, Revision: 3},
		{Id: long, SpiffeId: "spiffe://example.org/" + long[:200], ParentId: long[:130]},
		withUnknown,
	} {
		checkRec(t, e)
	}
}

// FuzzEntryRecord: any entry proto accepts (its encoding is the fuzzed
// input, unknown fields included) gives a record whose fields read in
// place are the entry's, and which decodes back to it.
func FuzzEntryRecord(f *testing.F) {
	for _, e := range []*sigilv1.Entry{
		realisticEntry(7), realisticEntry(10),
		{Id: "b", SpiffeId: "spiffe://example.org/b", ParentId: "p", DnsNames: []string{"d"}, X509SvidTtl: -3, FederatesWith: []string{"t"}},
	} {
		b, _ := proto.Marshal(e)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 1<<16 {
			return
		}
		var e sigilv1.Entry
		if proto.Unmarshal(data, &e) != nil {
			return
		}
		checkRec(t, &e)
	})
}
