package alert

import (
	"testing"
	"time"

	"github.com/sigil-id/sigil/clock"
)

// TestDispatcherForget: a forgotten alert is no longer active, is not
// repeated and sends no resolve; Resolve of it is then a no-op, and a
// new Fire of its key starts it again.
func TestDispatcherForget(t *testing.T) {
	clk := clock.NewFake(t0)
	m := &memNotifier{name: "m"}
	d := start(t, DispatcherConfig{Notifiers: []Notifier{m}, Clock: clk, RepeatInterval: time.Hour})
	d.Fire(alertN("a", Critical))
	d.Fire(alertN("b", Critical))
	count := func(key string) (fired, resolved int) {
		for _, b := range m.sent() {
			for _, a := range b {
				if a.Key != key {
					continue
				}
				if a.Resolved() {
					resolved++
				} else {
					fired++
				}
			}
		}
		return
	}
	eventually(t, "a and b sent", func() bool {
		fa, _ := count("a")
		fb, _ := count("b")
		return fa == 1 && fb == 1
	})
	d.Forget("a")
	d.Forget("unknown")
	if act := d.Active(); len(act) != 1 || act[0].Key != "b" {
		t.Fatalf("Active after Forget = %v", act)
	}
	d.Resolve("a", time.Time{})
	// An hour on, b repeats and a does not.
	eventually(t, "repeat timer", func() bool { return clk.Waiters() == 1 })
	clk.Add(time.Hour)
	eventually(t, "b repeated", func() bool { fb, _ := count("b"); return fb == 2 })
	if fa, ra := count("a"); fa != 1 || ra != 0 {
		t.Fatalf("forgotten alert: sent %d times, resolved %d times; want 1, 0", fa, ra)
	}
	// Fired again, it is new: sent at once with a new start.
	clk.Add(time.Minute)
	d.Fire(alertN("a", Critical))
	eventually(t, "a sent again", func() bool { fa, _ := count("a"); return fa == 2 })
	for _, a := range d.Active() {
		if a.Key == "a" && !a.StartsAt.Equal(clk.Now()) {
			t.Errorf("refired alert starts at %v, want %v", a.StartsAt, clk.Now())
		}
	}
}
