package raftstore

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/clock"
)

// waitWaiters waits until the fake clock has n waiters (the feed's trim
// goroutine has run and rescheduled itself, or not).
func waitWaiters(t *testing.T, fake *clock.Fake, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for fake.Waiters() != n {
		if time.Now().After(deadline) {
			t.Fatalf("clock waiters: %d, want %d", fake.Waiters(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitDropped waits until the feed holds no record.
func waitDropped(t *testing.T, tf *testFSM) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		tf.f.feed.mu.RLock()
		n := len(tf.f.feed.recs)
		tf.f.feed.mu.RUnlock()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("feed still holds %d records", n)
		}
		time.Sleep(time.Millisecond)
	}
}

func createN(t *testing.T, tf *testFSM, prefix string, n int) {
	t.Helper()
	var es []*sigilv1.Entry
	for i := range n {
		es = append(es, entry(fmt.Sprintf("%s%d", prefix, i), fmt.Sprintf("spiffe://example.org/%s/%d", prefix, i), "spiffe://example.org/agent"))
	}
	for _, c := range tf.batch(createEntries(es...)) {
		if c != codes.OK {
			t.Fatal(c)
		}
	}
}

// TestEntryFeedDroppedWhenQuiet: the feed keeps its records while changes
// keep coming and drops them all once none came for the quiet time; then
// a reader behind the last change must recompute, a reader at it is
// answered, and later changes are recorded as before.
func TestEntryFeedDroppedWhenQuiet(t *testing.T) {
	tf := newTestFSM(t)
	fake := clock.NewFake(t0)
	tf.f.feed.trim.clock = fake
	dropped := make(chan [2]int, 4)
	tf.f.feed.trim.dropped = func(n, deletions int) { dropped <- [2]int{n, deletions} }

	createN(t, tf, "a", 3)
	if fake.Waiters() != 1 {
		t.Fatalf("no drop scheduled after a change: %d waiters", fake.Waiters())
	}
	fake.Add(20 * time.Second)
	if got := tf.batch(deleteEntries("a0")); got[0] != codes.OK {
		t.Fatal(got)
	}
	last := tf.index
	// 30 s after the first change but 10 s after the last: kept, and
	// scheduled again.
	fake.Add(10 * time.Second)
	waitWaiters(t, fake, 1)
	if got := feedSince(t, tf, 0); len(got) != 4 {
		t.Fatalf("feed before the quiet time: %d records", len(got))
	}
	select {
	case n := <-dropped:
		t.Fatalf("dropped %v records 10 s after the last change", n)
	default:
	}
	fake.Add(20 * time.Second)
	select {
	case n := <-dropped:
		if n != [2]int{4, 1} {
			t.Fatalf("dropped %v records (all, deletions), want 4 and 1", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("feed not dropped after the quiet time")
	}
	waitWaiters(t, fake, 0)
	gen := tf.f.state.Load()
	if _, ok := tf.f.feed.since(gen, 0, tf.index); ok {
		t.Fatal("a reader behind the dropped changes was answered")
	}
	if _, ok := tf.f.feed.since(gen, last-1, tf.index); ok {
		t.Fatal("a reader behind the last change was answered")
	}
	if recs, ok := tf.f.feed.since(gen, last, tf.index); !ok || len(recs) != 0 {
		t.Fatalf("a reader at the last change: %v %v", recs, ok)
	}
	// Recording goes on, and schedules the next drop.
	createN(t, tf, "c", 2)
	if recs := feedSince(t, tf, last); len(recs) != 2 || recs[0].ID != "c0" {
		t.Fatalf("after the drop: %+v", recs)
	}
	if fake.Waiters() != 1 {
		t.Fatalf("no drop scheduled after a later change: %d waiters", fake.Waiters())
	}
}

// TestMemoryReleasedWhenFeedDropped: a drop of at least feedThreshold
// records of deletions returns free memory, even within the minimum
// interval of the last release; a drop of fewer, or of creations only,
// does not.
func TestMemoryReleasedWhenFeedDropped(t *testing.T) {
	tf := newTestFSM(t)
	fake := clock.NewFake(t0)
	tf.f.feed.trim.clock = fake
	released := make(chan struct{}, 4)
	tf.f.release = &memRelease{free: func() { released <- struct{}{} }, threshold: 1 << 30, feedThreshold: 3, minInterval: time.Hour}
	tf.f.release.last.Store(time.Now().UnixNano()) // a release just ran

	noRelease := func(what string) {
		t.Helper()
		select {
		case <-released:
			t.Fatalf("memory released after dropping %s", what)
		case <-time.After(50 * time.Millisecond):
		}
	}
	del := func(ids ...string) {
		t.Helper()
		for _, c := range tf.batch(deleteEntries(ids...)) {
			if c != codes.OK {
				t.Fatal(c)
			}
		}
	}
	createN(t, tf, "a", 5)
	fake.Add(feedQuiet)
	waitDropped(t, tf)
	noRelease("5 records of creations")
	del("a0", "a1")
	fake.Add(feedQuiet)
	waitDropped(t, tf)
	noRelease("2 records of deletions")
	del("a2", "a3", "a4")
	fake.Add(feedQuiet)
	select {
	case <-released:
	case <-time.After(10 * time.Second):
		t.Fatal("memory not released after dropping 3 records of deletions")
	}
}
