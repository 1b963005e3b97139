package server

import (
	"testing"
	"time"
)

// sourceTableTestState is a sourceTable entry whose idleness the test
// sets.
type sourceTableTestState struct{ busy bool }

func (s *sourceTableTestState) idle(time.Time) bool { return !s.busy }

func TestSourceTableBound(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	tab := newSourceTable(2, time.Second, func() *sourceTableTestState { return &sourceTableTestState{} })
	a, _ := tab.add("a", now)
	b, _ := tab.add("b", now)
	a.busy, b.busy = true, true
	if _, ok := tab.add("c", now); ok {
		t.Fatal("a full table of busy sources took a new one")
	}
	if again, ok := tab.add("a", now); !ok || again != a {
		t.Fatal("a full table did not return a tracked source's state")
	}
	// b goes idle, but the table swept less than sweepGap ago: no room.
	b.busy = false
	if _, ok := tab.add("c", now.Add(time.Second/2)); ok {
		t.Fatal("a full table swept twice within sweepGap")
	}
	c, ok := tab.add("c", now.Add(time.Second))
	if !ok || c == b {
		t.Fatal("a full table with an idle source did not make room after sweepGap")
	}
	if _, ok := tab.get("b"); ok || len(tab.m) != 2 {
		t.Fatalf("after the sweep: b tracked %v, %d sources, want b dropped and 2", ok, len(tab.m))
	}

	// forget drops only the same, idle state.
	tab.forget("a", a, now)
	if _, ok := tab.get("a"); !ok {
		t.Fatal("forget dropped a busy source")
	}
	a.busy = false
	tab.forget("a", c, now)
	if _, ok := tab.get("a"); !ok {
		t.Fatal("forget dropped a source given another one's state")
	}
	tab.forget("a", a, now)
	if _, ok := tab.get("a"); ok {
		t.Fatal("forget kept an idle source")
	}
}

func TestSourceTableSweepsEveryTimeWithoutGap(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	tab := newSourceTable(1, 0, func() *sourceTableTestState { return &sourceTableTestState{} })
	for _, k := range []string{"a", "b", "c"} {
		if _, ok := tab.add(k, now); !ok {
			t.Fatalf("source %s refused though the others are idle", k)
		}
	}
	if len(tab.m) != 1 {
		t.Fatalf("%d sources tracked, bound is 1", len(tab.m))
	}
}
