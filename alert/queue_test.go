package alert

import (
	"testing"
	"time"
)

func keysOf(q []Alert) string {
	s := ""
	for _, a := range q {
		s += a.Key + a.Summary + " "
	}
	return s
}

func TestEnqueueDropsSupersededFirst(t *testing.T) {
	mk := func(k, s string) Alert { return Alert{Key: k, Summary: s} }
	q := []Alert{mk("a", "1"), mk("b", "1"), mk("a", "2")}
	got, dropped := enqueue(q, 3, mk("c", "1"))
	if dropped != 1 || keysOf(got) != "b1 a2 c1 " {
		t.Fatalf("got %q dropped %d, want b1 a2 c1 and 1", keysOf(got), dropped)
	}
	got, dropped = enqueue(got, 3, mk("d", "1"))
	if dropped != 1 || keysOf(got) != "a2 c1 d1 " {
		t.Fatalf("got %q dropped %d, want oldest dropped", keysOf(got), dropped)
	}
	got, dropped = enqueue(nil, 2, mk("a", "1"), mk("b", "1"), mk("c", "1"), mk("b", "2"))
	if dropped != 2 || keysOf(got) != "c1 b2 " {
		t.Fatalf("got %q dropped %d", keysOf(got), dropped)
	}
}

func TestLatestByKey(t *testing.T) {
	mk := func(k, s string) Alert { return Alert{Key: k, Summary: s} }
	got := latestByKey([]Alert{mk("a", "1"), mk("b", "1"), mk("a", "2")})
	if keysOf(got) != "b1 a2 " {
		t.Fatalf("got %q", keysOf(got))
	}
}

func TestBackoff(t *testing.T) {
	for _, c := range []struct {
		attempt int
		want    time.Duration
	}{{0, time.Second}, {1, 2 * time.Second}, {3, 8 * time.Second}, {20, time.Minute}, {1000, time.Minute}} {
		if got := backoff(time.Second, time.Minute, c.attempt); got != c.want {
			t.Errorf("backoff(%d) = %s, want %s", c.attempt, got, c.want)
		}
	}
}

func TestChanged(t *testing.T) {
	a := Alert{Key: "k", Severity: Warning, Summary: "s", Details: map[string]string{"x": "1"}}
	b := a
	b.Details = map[string]string{"x": "1"}
	b.StartsAt = time.Unix(1, 0)
	if changed(a, b) {
		t.Error("same content reported changed")
	}
	for _, f := range []func(*Alert){
		func(c *Alert) { c.Severity = Critical },
		func(c *Alert) { c.Summary = "t" },
		func(c *Alert) { c.Details = map[string]string{"x": "2"} },
		func(c *Alert) { c.Details = map[string]string{"y": "1"} },
		func(c *Alert) { c.Details = nil },
	} {
		c := a
		f(&c)
		if !changed(a, c) {
			t.Errorf("change %+v not seen", c)
		}
	}
}
