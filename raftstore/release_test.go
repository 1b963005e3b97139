package raftstore

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// TestMemoryReleasedAfterLargeDeletions: deleting entries past the
// threshold (and only deleting: creating and updating do not count)
// returns free memory once, after the command that crossed it.
func TestMemoryReleasedAfterLargeDeletions(t *testing.T) {
	tf := newTestFSM(t)
	released := make(chan struct{}, 10)
	tf.f.release = &memRelease{free: func() { released <- struct{}{} }, threshold: 30, minInterval: time.Hour}
	tf.single(attestNode(agent, ""))
	var es []*sigilv1.Entry
	for i := range 100 {
		es = append(es, entry(fmt.Sprintf("e%03d", i), fmt.Sprintf("spiffe://example.org/w%d", i), agent))
	}
	for _, c := range tf.batch(createEntries(es...)) {
		if c != codes.OK {
			t.Fatal(c)
		}
	}
	for _, e := range es[:20] {
		e.Hint = "updated"
	}
	tf.batch(updateEntries(es[:20]...))
	del := func(from, to int) {
		t.Helper()
		var ids []string
		for _, e := range es[from:to] {
			ids = append(ids, e.Id)
		}
		for _, c := range tf.batch(deleteEntries(ids...)) {
			if c != codes.OK {
				t.Fatal(c)
			}
		}
	}
	noRelease := func(what string) {
		t.Helper()
		select {
		case <-released:
			t.Fatalf("memory released %s", what)
		case <-time.After(50 * time.Millisecond):
		}
	}
	noRelease("after creating and updating entries")
	del(0, 20)
	noRelease("after 20 of 30 deletions")
	// A delete of an absent entry deletes nothing.
	tf.batch(deleteEntries("no-such-entry"))
	noRelease("after a delete that deleted nothing")
	del(20, 35)
	select {
	case <-released:
	case <-time.After(10 * time.Second):
		t.Fatal("memory not released after 35 deletions")
	}
	// Within the minimum interval, another 30 deletions wait.
	del(35, 70)
	noRelease("twice within the minimum interval")
}
