package agent

import (
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"testing"
	"time"

	"go.uber.org/zap"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/clock"
)

// svidStatsWalk is svidStats as it was before the scrape walked only the
// top of the expiry heap: one pass over every entry of the heap. It is
// the reference TestSVIDStatsMatchesFullWalk checks the walk against.
func (c *cache) svidStatsWalk(now time.Time) svidStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	var s svidStats
	s.max, s.over = c.st.policy.max, c.st.overCapacity()
	for _, st := range c.st.expiry.items {
		v := st.svid
		if v == nil || !now.Before(v.notAfter) {
			continue
		}
		s.cached++
		if !now.Before(v.renewAt) {
			s.late++
		}
		if s.earliest.IsZero() || v.notAfter.Before(s.earliest) {
			s.earliest = v.notAfter
		}
	}
	return s
}

// TestSVIDStatsMatchesFullWalk drives a cache's entries through random
// SVIDs (installed, replaced, dropped, with renewal leads of their own),
// held SVIDs and deletions, and checks at random times, before, between
// and after every renewal time and expiry, that the walk over the top of
// the expiry heap gives exactly what the full walk gives.
func TestSVIDStatsMatchesFullWalk(t *testing.T) {
	for seed := range uint64(40) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 15))
			f := newCacheFixture(t)
			c := f.c
			n := 1 + rng.IntN(300)
			entries := make([]*sigilv1.Entry, n)
			for i := range entries {
				id := fmt.Sprintf("e%04d", i)
				entries[i] = entry(id, "w/"+id, int64(i), fmt.Sprintf("uid:%d", i%7))
			}
			c.ReplaceEntries(entries)
			// Times are on a grid of seconds so that ties (equal
			// NotAfters, now exactly at a renewal time or an expiry)
			// happen often.
			at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
			deleted := map[string]bool{}
			checks := 0
			for round := range 30 {
				c.mu.Lock()
				for range 1 + rng.IntN(n) {
					id := entries[rng.IntN(n)].Id
					st := c.st.entries[id]
					if st == nil || deleted[id] {
						continue
					}
					switch k := rng.IntN(10); {
					case k < 5: // a new SVID
						nb := rng.IntN(200)
						na := nb + 1 + rng.IntN(400)
						ren := nb + rng.IntN(na-nb+1)
						if rng.IntN(8) == 0 { // a renewal time past NotAfter
							ren = na + rng.IntN(50)
						}
						c.st.setSVID(st, &svid{notBefore: at(nb), notAfter: at(na), renewAt: at(ren)})
					case k < 7: // dropped
						c.st.setSVID(st, nil)
					case k < 9: // held for its CA, or no longer
						if st.pending == nil {
							st.pending = &svid{notAfter: at(rng.IntN(600))}
							st.pendingSince = at(rng.IntN(400))
						} else {
							st.pending = nil
						}
					default:
						if rng.IntN(4) == 0 {
							deleted[id] = true
							var ch changes
							c.st.deleted(id, st, &ch)
							continue
						}
					}
					c.st.resched(st)
				}
				held := c.st.svids
				c.mu.Unlock()
				for range 40 {
					now := at(rng.IntN(700) - 50)
					if rng.IntN(3) == 0 {
						now = now.Add(time.Duration(rng.IntN(3)-1) * time.Nanosecond)
					}
					got, want := c.svidStats(now), c.svidStatsWalk(now)
					if got.cached != want.cached || got.late != want.late || !got.earliest.Equal(want.earliest) ||
						got.max != want.max || got.over != want.over {
						t.Fatalf("round %d, %d SVIDs held, at %v: walk over the top %+v, full walk %+v",
							round, held, now.Sub(t0), got, want)
					}
					checks++
				}
			}
			if checks == 0 {
				t.Fatal("nothing compared")
			}
		})
	}
}

// BenchmarkSVIDStats measures a scrape's pass over 10,000 SVIDs held,
// minted over the last minute with an hour of lifetime (none late): the
// walk over the top of the expiry heap, the full walk it replaced, both
// again when every SVID is late, and the whole scrape of the agent's
// metrics as Prometheus would make it.
func BenchmarkSVIDStats(b *testing.B) {
	const n = 10000
	clk := clock.NewFake(t0)
	c := newCache(testTD, zap.NewNop(), clk)
	entries := make([]*sigilv1.Entry, n)
	for i := range entries {
		id := fmt.Sprintf("e%05d", i)
		entries[i] = entry(id, "w/"+id, int64(i), fmt.Sprintf("uid:%d", i%100))
	}
	c.ReplaceEntries(entries)
	c.mu.Lock()
	i := 0
	for _, st := range c.st.entries {
		nb := t0.Add(-time.Minute + time.Duration(i)*time.Millisecond*6)
		c.st.setSVID(st, &svid{notBefore: nb, notAfter: nb.Add(time.Hour), renewAt: RenewAt(nb, nb.Add(time.Hour), rand.Float64())})
		c.st.resched(st)
		i++
	}
	c.mu.Unlock()
	if s := c.svidStats(t0); s.cached != n || s.late != 0 {
		b.Fatalf("stats %+v", s)
	}
	b.Run("top", func(b *testing.B) {
		for b.Loop() {
			c.svidStats(t0)
		}
	})
	b.Run("full-walk", func(b *testing.B) {
		for b.Loop() {
			c.svidStatsWalk(t0)
		}
	})
	// The worst case: 45 minutes on, every SVID is past its renewal
	// time (none was renewed), so every one is visited.
	late := t0.Add(45 * time.Minute)
	if s := c.svidStats(late); s.late != n {
		b.Fatalf("stats %+v", s)
	}
	b.Run("top-all-late", func(b *testing.B) {
		for b.Loop() {
			c.svidStats(late)
		}
	})
	b.Run("full-walk-all-late", func(b *testing.B) {
		for b.Loop() {
			c.svidStatsWalk(late)
		}
	})
	a := &Agent{clk: clk, cache: c}
	m, err := newAgentMetrics(a)
	if err != nil {
		b.Fatal(err)
	}
	a.metrics = m
	h := a.MetricsHandler()
	b.Run("scrape", func(b *testing.B) {
		for b.Loop() {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
			if rec.Code != 200 {
				b.Fatal(rec.Code)
			}
		}
	})
}
