package sourcelimit

import (
	"testing"
	"time"
)

type fakeAddr string

func (a fakeAddr) Network() string { return "tcp" }
func (a fakeAddr) String() string  { return string(a) }

func TestKey(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:5000":             "127.0.0.1",
		"[::ffff:10.1.2.3]:1":        "10.1.2.3",
		"[2001:db8:1:2:3:4:5:6]:443": "2001:db8:1:2::/64",
		"[2001:db8:1:3::1]:443":      "2001:db8:1:3::/64",
		"[fe80::1%eth0]:80":          "fe80::/64",
		"host:80":                    "host",
		"not an address":             "not an address",
	} {
		if got := Key(fakeAddr(in)); got != want {
			t.Errorf("Key(%q) = %q, want %q", in, got, want)
		}
	}
	if got := Key(nil); got != "" {
		t.Errorf("Key(nil) = %q", got)
	}
}

type state struct{ busy bool }

func (s *state) Idle(time.Time) bool { return !s.busy }

func TestTableBound(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	tab := NewTable(2, time.Second, func() *state { return &state{} })
	a, _ := tab.Add("a", now)
	b, _ := tab.Add("b", now)
	a.busy, b.busy = true, true
	if _, ok := tab.Add("c", now); ok {
		t.Fatal("a full table of busy sources took a new one")
	}
	if again, ok := tab.Add("a", now); !ok || again != a {
		t.Fatal("a full table did not return a tracked source's state")
	}
	b.busy = false
	if _, ok := tab.Add("c", now.Add(time.Second/2)); ok {
		t.Fatal("a full table swept twice within sweepGap")
	}
	if c, ok := tab.Add("c", now.Add(time.Second)); !ok || c == b {
		t.Fatal("no room made for a new source after sweepGap")
	}
	if _, ok := tab.Get("b"); ok || tab.Len() != 2 {
		t.Fatalf("after the sweep: b tracked %v, %d sources", ok, tab.Len())
	}
}

func TestBuckets(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	b := NewBucket(1, 2)
	if !BucketFull(b, now) {
		t.Fatal("a new bucket is not full")
	}
	b.AllowN(now, 1)
	if BucketFull(b, now) {
		t.Fatal("a bucket a token short is full")
	}
	if !BucketFull(b, now.Add(time.Second)) {
		t.Fatal("the bucket did not refill")
	}
}

// Forget drops only the same, idle state (moved from server's
// TestSourceTableBound).
func TestTableForget(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	tab := NewTable(2, time.Second, func() *state { return &state{} })
	a, _ := tab.Add("a", now)
	c := &state{}
	a.busy = true
	tab.Forget("a", a, now)
	if _, ok := tab.Get("a"); !ok {
		t.Fatal("Forget dropped a busy source")
	}
	a.busy = false
	tab.Forget("a", c, now)
	if _, ok := tab.Get("a"); !ok {
		t.Fatal("Forget dropped a source given another one's state")
	}
	tab.Forget("a", a, now)
	if _, ok := tab.Get("a"); ok {
		t.Fatal("Forget kept an idle source")
	}
	b, _ := tab.Add("b", now)
	b.busy = true
	tab.Clear()
	if _, ok := tab.Get("b"); ok || tab.Len() != 0 {
		t.Fatal("Clear kept a source")
	}
}

// A table without a sweep gap sweeps whenever a new source finds it full
// (moved from server's TestSourceTableSweepsEveryTimeWithoutGap).
func TestTableSweepsEveryTimeWithoutGap(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	tab := NewTable(1, 0, func() *state { return &state{} })
	for _, k := range []string{"a", "b", "c"} {
		if _, ok := tab.Add(k, now); !ok {
			t.Fatalf("source %s refused though the others are idle", k)
		}
	}
	if tab.Len() != 1 {
		t.Fatalf("%d sources tracked, bound is 1", tab.Len())
	}
}
