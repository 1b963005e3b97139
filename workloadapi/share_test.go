package workloadapi

import (
	"os"
	"testing"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// firstSnapshot subscribes to c with sels and returns the first snapshot.
func firstSnapshot(t *testing.T, c *MemoryCache, sels []*sigilv1.Selector) *X509Snapshot {
	t.Helper()
	sub := c.SubscribeX509(sels)
	defer sub.Close()
	return <-sub.Updates()
}

// TestSnapshotEncodingShared: MemoryCache hands workloads with the same
// selectors one snapshot, encoded once, and workloads with other
// selectors their own; the encoding of each holds exactly its SVIDs.
// After a change (a new SVID for an entry), the next snapshot and its
// encoding carry the new SVID.
func TestSnapshotEncodingShared(t *testing.T) {
	c := NewMemoryCache()
	ca := newCA(t)
	c.SetBundle(ca.bundle())
	a := []*sigilv1.Selector{{Type: "unix", Value: "uid:1"}}
	b := []*sigilv1.Selector{{Type: "unix", Value: "uid:2"}}
	ab := []*sigilv1.Selector{b[0], a[0]}
	c.SetIdentity(a, ca.identity(t, "ea", "/a"))
	c.SetIdentity(b, ca.identity(t, "eb", "/b"))

	ids := func(snap *X509Snapshot) []string {
		t.Helper()
		resp, err := snap.x509SVIDResponse()
		if err != nil {
			t.Fatal(err)
		}
		again, err := snap.x509SVIDResponse()
		if err != nil || again != resp {
			t.Fatalf("response of one snapshot built twice (%v)", err)
		}
		if len(resp.Svids) != len(snap.Identities) {
			t.Fatalf("%d SVIDs encoded for %d identities", len(resp.Svids), len(snap.Identities))
		}
		var out []string
		for i, s := range resp.Svids {
			id := snap.Identities[i]
			if s.SpiffeId != id.SPIFFEID.String() || string(s.X509Svid) != string(id.Chain[0].Raw) {
				t.Fatalf("encoded SVID %d is %s, snapshot holds %s", i, s.SpiffeId, id.SPIFFEID)
			}
			out = append(out, s.SpiffeId)
		}
		return out
	}
	sa1, sa2, sb, sab := firstSnapshot(t, c, a), firstSnapshot(t, c, a), firstSnapshot(t, c, b), firstSnapshot(t, c, ab)
	if sa1 != sa2 {
		t.Error("same selectors, different snapshots")
	}
	if sa1 == sb || sa1 == sab || sb == sab {
		t.Error("different selectors share a snapshot")
	}
	for _, tc := range []struct {
		snap *X509Snapshot
		want string
	}{
		{sa1, "[spiffe://example.org/a]"},
		{sb, "[spiffe://example.org/b]"},
		{sab, "[spiffe://example.org/a spiffe://example.org/b]"},
	} {
		if got := fmtList(ids(tc.snap)); got != tc.want {
			t.Errorf("got %s, want %s", got, tc.want)
		}
	}

	// Rotation of ea: the next snapshot (and encoding) carries the new SVID.
	rotated := ca.identity(t, "ea", "/a")
	c.SetIdentity(a, rotated)
	sa3 := firstSnapshot(t, c, a)
	if sa3 == sa1 {
		t.Fatal("snapshot handed out again after a change")
	}
	resp, err := sa3.x509SVIDResponse()
	if err != nil {
		t.Fatal(err)
	}
	if string(resp.Svids[0].X509Svid) != string(rotated.Chain[0].Raw) {
		t.Fatal("old SVID encoded after rotation")
	}
	if got := fmtList(ids(firstSnapshot(t, c, b))); got != "[spiffe://example.org/b]" {
		t.Fatalf("after rotation, b got %s", got)
	}
}

// TestFetchServesRotation: through the server, a fetch after a rotation
// gets the new SVID although the previous fetches shared an encoding.
func TestFetchServesRotation(t *testing.T) {
	f := start(t, nil)
	me := uidSelector(os.Geteuid())
	first := f.ca.identity(t, "e1", "/workload")
	f.cache.SetIdentity(me, first)
	c := f.client(t)
	for range 2 {
		svid, err := c.FetchX509SVID(testCtx(t))
		if err != nil {
			t.Fatal(err)
		}
		if !svid.Certificates[0].Equal(first.Chain[0]) {
			t.Fatal("not the SVID set")
		}
	}
	second := f.ca.identity(t, "e1", "/workload")
	f.cache.SetIdentity(me, second)
	svid, err := c.FetchX509SVID(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if !svid.Certificates[0].Equal(second.Chain[0]) {
		t.Fatal("old SVID served after rotation")
	}
}

func fmtList(s []string) string {
	out := "["
	for i, v := range s {
		if i > 0 {
			out += " "
		}
		out += v
	}
	return out + "]"
}
