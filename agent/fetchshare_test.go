package agent

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/workload"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/registration"
	"github.com/sigil-id/sigil/workloadapi"
)

// labelAttestor is a workload attestor whose selectors ("label:<v>" for
// each v) the test sets between calls: one process standing for callers
// with different entitlements, or for a caller whose selectors change.
type labelAttestor struct{ labels atomic.Pointer[[]string] }

func (a *labelAttestor) Name() string { return "label" }

func (a *labelAttestor) set(labels ...string) { a.labels.Store(&labels) }

func (a *labelAttestor) Attest(context.Context, workload.Caller) ([]*sigilv1.Selector, error) {
	var sels []*sigilv1.Selector
	for _, l := range *a.labels.Load() {
		sels = append(sels, &sigilv1.Selector{Type: "label", Value: l})
	}
	return sels, nil
}

// labelEntry is an entry for SPIFFE ID path that requires the selectors
// label:<l> for each of labels.
func labelEntry(id, path string, createdAt int64, labels ...string) *sigilv1.Entry {
	e := entry(id, path, createdAt)
	for _, l := range labels {
		e.Selectors = append(e.Selectors, &sigilv1.Selector{Type: "label", Value: l})
	}
	return e
}

func labelSels(labels ...string) []*sigilv1.Selector {
	var sels []*sigilv1.Selector
	for _, l := range labels {
		sels = append(sels, &sigilv1.Selector{Type: "label", Value: l})
	}
	return sels
}

// TestSharedSnapshots: the agent hands callers with the same entitled
// SVIDs (even through different selector sets) the same snapshot, and
// callers with different ones different snapshots.
func TestSharedSnapshots(t *testing.T) {
	ca := newTestCA(t, time.Now())
	c := newCache(testTD, zap.NewNop(), clock.NewFake(time.Now()))
	c.SetBundle(x509bundle.FromX509Authorities(testTD, []*x509.Certificate{ca.cert}))
	c.ReplaceEntries([]*sigilv1.Entry{
		labelEntry("a", "a", 1, "a"),
		labelEntry("b", "b", 2, "b"),
		labelEntry("common", "common", 3, "common"),
	})
	mintAll(t, c, ca)
	first := func(labels ...string) []string {
		sub := c.SubscribeX509(labelSels(labels...))
		defer sub.Close()
		snap := <-sub.Updates()
		var ids []string
		for _, id := range snap.Identities {
			ids = append(ids, id.EntryID)
		}
		return append(ids, fmt.Sprintf("%p", snap))
	}
	a1, a2 := first("a", "common"), first("common", "a", "other")
	b := first("b", "common")
	if !slices.Equal(a1[:2], []string{"a", "common"}) || !slices.Equal(b[:2], []string{"b", "common"}) {
		t.Fatalf("entitlements: %v, %v", a1, b)
	}
	if !slices.Equal(a1, a2) {
		t.Errorf("same entitlement, different snapshots: %v and %v", a1, a2)
	}
	if a1[2] == b[2] {
		t.Errorf("different entitlements share snapshot %s", a1[2])
	}

	// A watching workload is pushed a rotation and a hint change: its
	// last snapshot's key does not stand for the new content.
	clk := c.clk.(*clock.Fake)
	sub := c.SubscribeX509(labelSels("a"))
	defer sub.Close()
	old := (<-sub.Updates()).Identities[0]
	clk.Add(40 * time.Minute)
	mintAll(t, c, ca)
	var rotated *workloadapi.X509Snapshot
	select {
	case rotated = <-sub.Updates():
	default:
		t.Fatal("no snapshot pushed on rotation")
	}
	if got := rotated.Identities[0]; leafOf(t, got).Equal(leafOf(t, old)) || bytes.Equal(got.KeyDER, old.KeyDER) {
		t.Fatal("snapshot pushed on rotation holds the old SVID")
	}
	ea := labelEntry("a", "a", 1, "a")
	ea.Hint = "internal"
	c.ApplyDelta([]*sigilv1.Entry{ea}, nil)
	select {
	case snap := <-sub.Updates():
		if snap.Identities[0].Hint != "internal" {
			t.Fatalf("hint %q after change", snap.Identities[0].Hint)
		}
	default:
		t.Fatal("no snapshot pushed on hint change")
	}
}

// TestFetchSharedEncodingExact drives the agent's cache through the
// Workload API with go-spiffe's client, switching the caller's selectors
// between fetches: callers entitled to different SVIDs never get each
// other's from the shared snapshots and encodings, and every change (a
// rotation, a hint change, an entry's selectors, a deletion, a bundle
// change, the caller's own selectors) is served on the next fetch.
func TestFetchSharedEncodingExact(t *testing.T) {
	ca := newTestCA(t, time.Now())
	clk := clock.NewFake(time.Now())
	c := newCache(testTD, zap.NewNop(), clk)
	c.SetBundle(x509bundle.FromX509Authorities(testTD, []*x509.Certificate{ca.cert}))
	entries := map[string]*sigilv1.Entry{
		"a":      labelEntry("a", "a", 1, "a"),
		"b":      labelEntry("b", "b", 2, "b"),
		"common": labelEntry("common", "common", 3, "common"),
	}
	c.ReplaceEntries(slices.Collect(func(yield func(*sigilv1.Entry) bool) {
		for _, e := range entries {
			if !yield(e) {
				return
			}
		}
	}))
	mintAll(t, c, ca)
	att := &labelAttestor{}
	att.set()
	client := serveCache(t, c, att)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// fetch fetches as a caller with labels and checks that it gets
	// exactly the SVIDs of want (entry IDs, in order), each the one the
	// cache holds now, with the entry's hint.
	fetch := func(step string, want []string, labels ...string) {
		t.Helper()
		att.set(labels...)
		svids, err := client.FetchX509SVIDs(ctx)
		if len(want) == 0 {
			if status.Code(err) != codes.PermissionDenied {
				t.Fatalf("%s: caller %v: got %d SVIDs, err %v; want PermissionDenied", step, labels, len(svids), err)
			}
			return
		}
		if err != nil {
			t.Fatalf("%s: caller %v: %v", step, labels, err)
		}
		var got []string
		for _, s := range svids {
			got = append(got, strings.TrimPrefix(s.ID.Path(), "/"))
		}
		if !slices.Equal(got, want) {
			t.Fatalf("%s: caller %v got %v, want %v", step, labels, got, want)
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		for i, s := range svids {
			st := c.st.entries[want[i]]
			held := st.servable()
			if held == nil || held.serialText() != s.Certificates[0].SerialNumber.Text(16) {
				t.Fatalf("%s: caller %v got serial %v for %s, the cache serves %v", step, labels, s.Certificates[0].SerialNumber.Text(16), want[i], held)
			}
			if s.Hint != st.entry.GetHint() {
				t.Fatalf("%s: %s hint %q, want %q", step, want[i], s.Hint, st.entry.GetHint())
			}
			if !publicKeyEqual(s.PrivateKey.Public(), held.certs(t)[0].PublicKey) {
				t.Fatalf("%s: %s: key is not the held SVID's", step, want[i])
			}
		}
	}
	serials := func(ids ...string) []string {
		c.mu.Lock()
		defer c.mu.Unlock()
		var out []string
		for _, id := range ids {
			out = append(out, c.st.entries[id].svid.certs(t)[0].SerialNumber.String())
		}
		return out
	}

	for i := range 3 { // interleaved, so that each finds the other's memos
		step := fmt.Sprintf("round %d", i)
		fetch(step, []string{"a", "common"}, "a", "common")
		fetch(step, []string{"b", "common"}, "b", "common")
		fetch(step, []string{"a", "common"}, "common", "a", "x")
		fetch(step, []string{"common"}, "common")
		fetch(step, nil, "nothing")
	}

	// Rotation: every SVID is renewed; the next fetch serves the new one.
	before := serials("a", "b", "common")
	clk.Add(40 * time.Minute)
	mintAll(t, c, ca)
	after := serials("a", "b", "common")
	for i := range before {
		if before[i] == after[i] {
			t.Fatalf("SVID %d not renewed: serial %s", i, before[i])
		}
	}
	fetch("after rotation", []string{"a", "common"}, "a", "common")
	fetch("after rotation", []string{"b", "common"}, "b", "common")

	// A hint change (no new SVID) and an entry whose selectors change.
	ea := labelEntry("a", "a", 1, "a")
	ea.Hint = "internal"
	eb := labelEntry("b", "b", 2, "b", "common")
	c.ApplyDelta([]*sigilv1.Entry{ea, eb}, nil)
	fetch("after entry change", []string{"a", "common"}, "a", "common")
	fetch("after entry change", []string{"b", "common"}, "b", "common")
	fetch("after entry change", []string{"common"}, "common")
	fetch("after entry change", nil, "b")

	// A bundle change reaches the next fetch.
	ca2 := newTestCA(t, time.Now())
	c.SetBundle(x509bundle.FromX509Authorities(testTD, []*x509.Certificate{ca.cert, ca2.cert}))
	att.set("a", "common")
	x509ctx, err := client.FetchX509Context(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := x509ctx.Bundles.GetX509BundleForTrustDomain(testTD); err != nil || !b.HasX509Authority(ca2.cert) {
		t.Fatalf("bundle after change: %v", err)
	}

	// Deletions.
	c.ApplyDelta(nil, []string{"common"})
	fetch("after deletion", []string{"a"}, "a", "common")
	fetch("after deletion", []string{"b"}, "b", "common")
	c.ApplyDelta(nil, []string{"a"})
	fetch("after deletion", nil, "a", "common")
	fetch("after deletion", []string{"b"}, "b", "common")
	if err := ctx.Err(); errors.Is(err, context.DeadlineExceeded) {
		t.Fatal(err)
	}
}

// TestSharedMemosFreeDeleted: once an entry is deleted, the memos of
// the subscriptions (views and shared snapshots) no longer hold it or
// its SVID, even when no workload is subscribed any more.
func TestSharedMemosFreeDeleted(t *testing.T) {
	ca := newTestCA(t, time.Now())
	c := newCache(testTD, zap.NewNop(), clock.NewFake(time.Now()))
	c.SetBundle(x509bundle.FromX509Authorities(testTD, []*x509.Certificate{ca.cert}))
	c.ReplaceEntries([]*sigilv1.Entry{labelEntry("a", "a", 1, "a"), labelEntry("b", "b", 2, "b")})
	mintAll(t, c, ca)
	for _, l := range []string{"a", "b"} {
		sub := c.SubscribeX509(labelSels(l))
		<-sub.Updates()
		sub.Close()
	}
	c.mu.Lock()
	gone := c.st.entries["a"]
	c.mu.Unlock()
	holds := func() (views, shared bool) {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, v := range c.subs.views {
			views = views || slices.Contains(v, gone)
		}
		for _, sh := range c.subs.shared {
			for _, id := range sh.snap.Identities {
				shared = shared || (len(id.KeyDER) > 0 && &id.KeyDER[0] == &gone.svid.keyDER[0])
			}
		}
		return views, shared
	}
	if v, s := holds(); !v || !s {
		t.Fatalf("memos before deletion: views %v, shared %v; want both", v, s)
	}
	c.ApplyDelta(nil, []string{"a"})
	if v, s := holds(); v || s {
		t.Fatalf("memos after deletion: views %v, shared %v; want neither", v, s)
	}
}

// TestSelectorKeyFromSlice: the key built from a workload's selectors as
// attested is the key of their set, whatever their order and repeats,
// including selectors whose "type:value" forms collide.
func TestSelectorKeyFromSlice(t *testing.T) {
	cases := [][]*sigilv1.Selector{
		nil,
		{sel("uid:0")},
		{sel("uid:0"), sel("gid:0"), sel("uid:0")},
		{{Type: "a", Value: "b:c"}, {Type: "a:b", Value: "c"}},
		{{Type: "k8s", Value: "ns:default"}, sel("uid:1000"), {Type: "k8s", Value: "sa:" + strings.Repeat("x", 600)}, sel("path:/bin/sh")},
	}
	// Many selectors, in every rotation, past the stack scratch space.
	var many []*sigilv1.Selector
	for i := range 40 {
		many = append(many, sel(fmt.Sprintf("supplementary_gid:%d", (i*7)%40)))
	}
	for r := range len(many) {
		cases = append(cases, append(slices.Clone(many[r:]), many[:r]...))
	}
	for i, sels := range cases {
		want := selectorKey(registration.NewSelectorSet(sels))
		got, _ := appendSelectorKey([]byte("prefix"), nil, sels)
		if string(got) != "prefix"+want {
			t.Errorf("case %d: key %q, want %q", i, got, "prefix"+want)
		}
	}
}

// TestSubscribeReusesSelectorSet: a workload that subscribes again with
// the same selectors (in any order) reuses the set and key of the first
// subscription and allocates no more than its subscription; other
// selectors get their own set, and the memo is bounded.
func TestSubscribeReusesSelectorSet(t *testing.T) {
	ca := newTestCA(t, time.Now())
	c := newCache(testTD, zap.NewNop(), clock.NewFake(time.Now()))
	c.SetBundle(x509bundle.FromX509Authorities(testTD, []*x509.Certificate{ca.cert}))
	c.ReplaceEntries([]*sigilv1.Entry{labelEntry("a", "a", 1, "a")})
	mintAll(t, c, ca)
	subscribe := func(labels ...string) *subscription {
		t.Helper()
		sub := c.SubscribeX509(labelSels(labels...)).(*subscription)
		t.Cleanup(sub.Close)
		return sub
	}
	first := subscribe("a", "b")
	again := subscribe("b", "a", "b")
	if reflect.ValueOf(first.sels).UnsafePointer() != reflect.ValueOf(again.sels).UnsafePointer() || first.selKey != again.selKey {
		t.Fatal("the same selectors got a new set")
	}
	if unsafe.StringData(first.selKey) != unsafe.StringData(again.selKey) {
		t.Fatal("the same selectors got a new key string")
	}
	other := subscribe("a")
	if other.selKey == first.selKey || len(other.sels) != 1 {
		t.Fatalf("other selectors: key %q, set %v", other.selKey, other.sels)
	}
	if ids := snapshotIDs(<-other.Updates()); !slices.Equal(ids, []string{"a"}) {
		t.Fatalf("other selectors were served %v, want [a]", ids)
	}
	sels := labelSels("a", "b")
	allocs := testing.AllocsPerRun(100, func() { c.SubscribeX509(sels).Close() })
	if allocs > 3 {
		t.Errorf("subscribing again allocates %v times, want at most 3 (the subscription, its channel and the channel's buffer)", allocs)
	}
	for i := range 2 * maxMemo {
		c.SubscribeX509(labelSels(fmt.Sprint(i))).Close()
	}
	c.mu.Lock()
	n := len(c.subs.sets)
	c.mu.Unlock()
	if n > maxMemo {
		t.Fatalf("%d selector sets memoized, want at most %d", n, maxMemo)
	}
}

func snapshotIDs(snap *workloadapi.X509Snapshot) []string {
	var ids []string
	for _, id := range snap.Identities {
		ids = append(ids, id.EntryID)
	}
	return ids
}
