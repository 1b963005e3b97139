package raftstore

import (
	"bytes"
	"testing"

	"github.com/hashicorp/go-memdb"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/registration"
)

// TestEntryIndexesMatchMemdbReflection: the typed entry indexers produce
// byte for byte the keys of the reflection-based memdb indexers they
// replaced, for values, empty values and selectors with empty members, so
// lookups by FromArgs and PrefixFromArgs (which they keep) still find rows.
// The selector index has the keys of the formatted selectors for node
// aliases and none for other entries.
func TestEntryIndexesMatchMemdbReflection(t *testing.T) {
	rows := []*sigilv1.Entry{
		{Id: "0123abcd", SpiffeId: "spiffe://example.org/w", ParentId: "spiffe://example.org/sigil/agent/x",
			Selectors: []*sigilv1.Selector{sel("unix", "uid:1"), {}, sel("k8s", "ns:a")}},
		{Id: "", SpiffeId: "", ParentId: "", Selectors: nil},
		{Id: "x", Selectors: []*sigilv1.Selector{{}}},
		{Id: "al", SpiffeId: "spiffe://example.org/node", ParentId: alias,
			Selectors: []*sigilv1.Selector{sel("unix", "uid:1"), {}, sel("k8s", "ns:a")}},
		{Id: "al2", SpiffeId: "spiffe://example.org/node", ParentId: alias},
	}
	fields := map[string]func(*sigilv1.Entry) string{
		"Id": func(e *sigilv1.Entry) string { return e.Id }, "SpiffeId": func(e *sigilv1.Entry) string { return e.SpiffeId },
		"ParentId": func(e *sigilv1.Entry) string { return e.ParentId },
	}
	selIndex := &aliasSelectorIndex{serversID: alias}
	for _, r := range rows {
		for name, f := range fields {
			wantOK, want, wantErr := (&memdb.StringFieldIndex{Field: name}).FromObject(r)
			for _, room := range []bool{false, true} {
				gotOK, got, gotErr := entryIndex(f, room).FromObject(r)
				if gotOK != wantOK || !bytes.Equal(got, want) || (gotErr == nil) != (wantErr == nil) {
					t.Fatalf("%s of %+v: got %v %q %v, memdb %v %q %v", name, r, gotOK, got, gotErr, wantOK, want, wantErr)
				}
			}
		}
		formatted := struct{ Selectors []string }{}
		for _, s := range r.Selectors {
			formatted.Selectors = append(formatted.Selectors, registration.FormatSelector(s))
		}
		wantOK, want, _ := (&memdb.StringSliceFieldIndex{Field: "Selectors"}).FromObject(&formatted)
		if r.ParentId != alias {
			wantOK, want = false, nil
		}
		gotOK, got, _ := selIndex.FromObject(r)
		if gotOK != wantOK || len(got) != len(want) {
			t.Fatalf("selectors of %+v: got %v %q, memdb %v %q", r, gotOK, got, wantOK, want)
		}
		for i := range want {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("selector key %d of %+v: got %q, memdb %q", i, r, got[i], want[i])
			}
		}
	}
	if _, _, err := entryIndex(fields["Id"], false).FromObject("not a row"); err == nil {
		t.Fatal("a non-row object was indexed")
	}
	if _, _, err := selIndex.FromObject(struct{}{}); err == nil {
		t.Fatal("a non-row object was indexed by selectors")
	}
	got, err := entryIndex(fields["Id"], false).FromArgs("abc")
	if err != nil || string(got) != "abc\x00" {
		t.Fatalf("FromArgs: %q %v", got, err)
	}
}
