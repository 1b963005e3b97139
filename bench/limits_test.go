package main

import (
	"context"
	"testing"
	"time"
)

// TestMeasureLimitsSmoke runs the raw-limit measurement briefly (50 ms
// per figure) and checks that every limit is positive and sane.
func TestMeasureLimitsSmoke(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	l, err := measureLimits(ctx, 50*time.Millisecond, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("measurement took %v, want < 2 s with 50 ms per figure", d)
	}
	for name, v := range map[string]float64{"sign": l.Sign, "verify": l.Verify, "verify+sign": l.VerifySign, "fsync": l.Fsync, "TLS": l.TLS} {
		// At least one operation in 50 ms, and no more than 10 million a
		// second (a rate that high means nothing was measured).
		if v < 20 || v > 1e7 {
			t.Errorf("%s: %.0f /s, not a plausible rate", name, v)
		}
	}
	// A verify plus a sign cannot be much faster than either alone (the
	// slack allows for a loaded machine's noise).
	if l.VerifySign > 1.5*l.Sign || l.VerifySign > 1.5*l.Verify {
		t.Errorf("verify+sign %.0f /s against sign %.0f /s and verify %.0f /s", l.VerifySign, l.Sign, l.Verify)
	}
}
