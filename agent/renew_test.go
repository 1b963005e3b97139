package agent

import (
	"testing"
	"time"
)

func TestRenewAt(t *testing.T) {
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		name     string
		lifetime time.Duration
		jitter   float64
		want     time.Duration // after notBefore
	}{
		{"no jitter is half-life", time.Hour, 0, 30 * time.Minute},
		{"half jitter", time.Hour, 0.5, 33 * time.Minute},
		{"near-max jitter stays below 60%", time.Hour, 0.99, 35*time.Minute + 56*time.Second + 400*time.Millisecond},
		{"jitter clamped below", time.Hour, -3, 30 * time.Minute},
		{"short lifetime", 10 * time.Second, 0, 5 * time.Second},
		{"zero lifetime", 0, 0.5, 0},
		{"negative lifetime", -time.Hour, 0.5, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := RenewAt(nb, nb.Add(c.lifetime), c.jitter)
			// Float arithmetic may be off by a nanosecond or so.
			if d := got.Sub(nb) - c.want; d < -time.Microsecond || d > time.Microsecond {
				t.Fatalf("RenewAt = notBefore+%v, want +%v", got.Sub(nb), c.want)
			}
		})
	}
	// Any jitter in [0,1) lands in [50%, 60%) of the lifetime.
	for i := 0; i < 1000; i++ {
		got := renewAt(nb, nb.Add(time.Hour)).Sub(nb)
		if got < 30*time.Minute || got >= 36*time.Minute {
			t.Fatalf("renewAt = +%v, outside [30m, 36m)", got)
		}
	}
	if got := RenewAt(nb, nb.Add(time.Hour), 1).Sub(nb); got >= 36*time.Minute {
		t.Fatalf("jitter 1 gives +%v, want < 36m", got)
	}
}

func TestBackoffCapped(t *testing.T) {
	for attempt := 0; attempt < 20; attempt++ {
		d := backoff(100*time.Millisecond, 5*time.Second, attempt)
		if d <= 0 || d > 5*time.Second {
			t.Fatalf("attempt %d: backoff %v out of (0, 5s]", attempt, d)
		}
	}
	if d := backoff(100*time.Millisecond, 5*time.Second, 0); d > 100*time.Millisecond || d < 50*time.Millisecond {
		t.Fatalf("first backoff %v, want in [50ms, 100ms]", d)
	}
}
