package raftstore

import (
	"bytes"
	"testing"

	"github.com/hashicorp/go-memdb"
)

// TestEntryIndexesMatchMemdbReflection: the typed entry indexers produce
// byte for byte the keys of the reflection-based memdb indexers they
// replaced, for values, empty values and selectors with empty members, so
// lookups by FromArgs and PrefixFromArgs (which they keep) still find rows.
func TestEntryIndexesMatchMemdbReflection(t *testing.T) {
	rows := []*entryRow{
		{ID: "0123abcd", SPIFFEID: "spiffe://example.org/w", ParentID: "spiffe://example.org/sigil/agent/x", Key: "k\x01v", Selectors: []string{"unix:uid:1", "", "k8s:ns:a"}},
		{ID: "", SPIFFEID: "", ParentID: "", Key: "", Selectors: nil},
		{ID: "x", Selectors: []string{""}},
	}
	fields := map[string]func(*entryRow) string{
		"ID": func(r *entryRow) string { return r.ID }, "SPIFFEID": func(r *entryRow) string { return r.SPIFFEID },
		"ParentID": func(r *entryRow) string { return r.ParentID }, "Key": func(r *entryRow) string { return r.Key },
	}
	for _, r := range rows {
		for name, f := range fields {
			wantOK, want, wantErr := (&memdb.StringFieldIndex{Field: name}).FromObject(r)
			gotOK, got, gotErr := entryIndex(f).FromObject(r)
			if gotOK != wantOK || !bytes.Equal(got, want) || (gotErr == nil) != (wantErr == nil) {
				t.Fatalf("%s of %+v: got %v %q %v, memdb %v %q %v", name, r, gotOK, got, gotErr, wantOK, want, wantErr)
			}
		}
		wantOK, want, _ := (&memdb.StringSliceFieldIndex{Field: "Selectors"}).FromObject(r)
		gotOK, got, _ := (&entrySelectorIndex{}).FromObject(r)
		if gotOK != wantOK || len(got) != len(want) {
			t.Fatalf("selectors of %+v: got %v %q, memdb %v %q", r, gotOK, got, wantOK, want)
		}
		for i := range want {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("selector key %d of %+v: got %q, memdb %q", i, r, got[i], want[i])
			}
		}
	}
	if _, _, err := entryIndex(fields["ID"]).FromObject("not a row"); err == nil {
		t.Fatal("a non-row object was indexed")
	}
	if _, _, err := (&entrySelectorIndex{}).FromObject(struct{}{}); err == nil {
		t.Fatal("a non-row object was indexed by selectors")
	}
	got, err := entryIndex(fields["ID"]).FromArgs("abc")
	if err != nil || string(got) != "abc\x00" {
		t.Fatalf("FromArgs: %q %v", got, err)
	}
}
