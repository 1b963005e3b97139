package agent

import (
	"crypto"
	"crypto/x509"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/registration"
	"github.com/sigil-id/sigil/workloadapi"
)

// twin is an x509State with its subscriptions, driven as the cache
// drives them (settle), without the cache's lock, clock and logs.
type twin struct {
	st   x509State
	subs subscriptions
	open map[int]*subscription
}

func newTwin(coldOff bool, p cachePolicy) *twin {
	w := &twin{st: newX509State(func() float64 { return 0.5 }), subs: newSubscriptions(), open: map[int]*subscription{}}
	w.st.coldOff = coldOff
	w.st.SetPolicy(p)
	return w
}

// settle is cache.settle without the JWT cache.
func (w *twin) settle(ch changes, now time.Time) changes {
	if ch.notify {
		w.subs.notify(&w.st)
	}
	if len(w.st.released) > 0 {
		w.st.Release(now)
	}
	return ch
}

func (w *twin) subscribe(k int, sels []*sigilv1.Selector, now time.Time) {
	sub := &subscription{sels: registration.NewSelectorSet(sels), ch: make(chan *workloadapi.X509Snapshot, 1)}
	w.open[k] = sub
	w.subs.add(sub, &w.st)
	if len(w.st.released) > 0 {
		w.st.Release(now)
	}
}

func (w *twin) unsubscribe(k int, now time.Time) {
	sub := w.open[k]
	delete(w.open, k)
	w.subs.remove(sub, &w.st)
	w.st.Release(now)
}

// describe is everything observable of the state at now: every entry
// (phase, generation, SVID, cache attributes), the counts, the next
// event, and what each subscription was last sent.
func (w *twin) describe(now time.Time) string {
	var b strings.Builder
	for _, id := range w.st.sortedIDs() {
		st := w.st.peek(id)
		fmt.Fprintf(&b, "%s %s gen=%d spiffe=%s sels=%v parent=%s fp=%v", id, st.phase(now), st.gen, st.entry.GetSpiffeId(), st.entry.sels, st.entry.GetParentId(), st.fp)
		if sv := st.svid; sv != nil {
			fmt.Fprintf(&b, " svid=%x renew=%v", sv.serial, sv.renewAt)
		}
		fmt.Fprintf(&b, " eager=%v active=%v refs=%d denied=%v failures=%d retry=%v error=%q streak=%d spare=%v req=%d attempt=%d\n",
			st.eager, st.active, st.refs, st.denied, st.failures, st.retryAt, st.lastError, st.failStreak, st.q == qSpare, st.lastReq, nanos(st.lastAttempt))
	}
	e, n := w.st.Stats()
	fmt.Fprintf(&b, "entries=%d svids=%d sizes=%+v next=%v\n", e, n, w.st.Sizes(), w.st.NextEvent())
	keys := make([]int, 0, len(w.open))
	for k := range w.open {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		sub := w.open[k]
		fmt.Fprintf(&b, "sub %d delivered=%v last=%x\n", k, sub.delivered, sub.last)
		select {
		case snap := <-sub.ch:
			for _, id := range snap.Identities {
				fmt.Fprintf(&b, "  %s %x\n", id.EntryID, id.ChainDER[:16])
			}
		default:
		}
	}
	return b.String()
}

func describeChanges(ch changes) string {
	var parts []string
	for _, e := range ch.events {
		parts = append(parts, e.kind.String()+":"+e.entryID)
	}
	d := slices.Clone(ch.jwtDrop)
	slices.Sort(d)
	return fmt.Sprintf("events=%v jwtDrop=%v notify=%v wake=%v jwtBundles=%v over=%d", parts, d, ch.notify, ch.wake, ch.jwtBundles, ch.overCapacity)
}

// The cold tier changes nothing that can be observed: a state with it
// and one that keeps every entry warm, driven through the same random
// run of full syncs, deltas (new, changed and deleted entries, eager
// ones among them), subscriptions, mints (installed, failed, denied),
// bundle changes and the passing of time, report the same changes and
// hold the same entries, SVIDs and snapshots after every step.
func TestColdTierChangesNothingObservable(t *testing.T) {
	for seed := uint64(1); seed <= 6; seed++ {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) { coldTwinRun(t, seed) })
	}
}

func coldTwinRun(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 99))
	now := t0
	ca := newTestCA(t, now)
	p := newCachePolicy(SVIDCacheConfig{MaxSVIDs: 8 + int(seed), EagerSelectors: []string{"unix:grp:eager"}, IdleAfter: 3 * time.Minute})
	ref, cold := newTwin(true, p), newTwin(false, p)
	// full's cold store is made full (coldStore.full) a quarter into
	// the run: the entries it cannot take from then on stay warm.
	full := newTwin(false, p)
	both := []*twin{ref, cold, full}
	names := []string{"warm", "cold", "full"}
	const universe = 120
	mkEntry := func(i int, rev int) *sigilv1.Entry {
		sels := []string{fmt.Sprintf("uid:%d", i%50), fmt.Sprintf("grp:%d", i%7)}
		if i%13 == 0 {
			sels = append(sels, "grp:eager")
		}
		if rev%3 == 2 {
			sels = sels[1:]
		}
		e := entry(fmt.Sprintf("e%03d", i), fmt.Sprintf("w/%d/%d", i, rev%2), int64(i%10), sels...)
		e.Revision = int64(rev)
		if i%17 == 0 {
			e.FederatesWith = []string{"other.org"}
		}
		if i%11 == 0 {
			e.ParentId = fmt.Sprintf("spiffe://example.org/parent/%d", rev%3)
		}
		return e
	}
	rev := make([]int, universe)
	peakCold, fewer := 0, 0
	step := func(what string, f func(w *twin) changes) {
		t.Helper()
		var got [3]string
		for k, w := range both {
			got[k] = describeChanges(f(w))
		}
		for k := 1; k < len(both); k++ {
			if got[0] != got[k] {
				t.Fatalf("%s: changes differ:\nwarm %s\n%s %s", what, got[0], names[k], got[k])
			}
		}
		peakCold = max(peakCold, cold.st.cold.len())
		if full.st.cold.len() < cold.st.cold.len() {
			fewer++
		}
		a := ref.describe(now)
		for k := 1; k < len(both); k++ {
			if b := both[k].describe(now); a != b {
				t.Fatalf("%s: states differ:\nwarm:\n%s\n%s:\n%s", what, a, names[k], b)
			}
		}
	}
	bundle := x509bundle.FromX509Authorities(testTD, []*x509.Certificate{ca.cert})
	step("bundle", func(w *twin) changes {
		_, ch := w.st.SetBundle(bundle, now)
		return w.settle(ch, now)
	})
	nsub := 0
	for i := 0; i < 400; i++ {
		if i == 100 {
			c := &full.st.cold
			c.maxChunks = len(c.chunks) - len(c.freeChunks) + coldChunksSpare
		}
		switch op := rng.IntN(11); op {
		case 0: // full sync of a random subset
			var set []*sigilv1.Entry
			for j := range universe {
				if rng.IntN(4) != 0 {
					if rng.IntN(8) == 0 {
						rev[j]++
					}
					set = append(set, mkEntry(j, rev[j]))
				}
			}
			step("replace", func(w *twin) changes { return w.settle(w.st.ReplaceEntries(set), now) })
		case 1, 2: // delta
			var up []*sigilv1.Entry
			var del []string
			for range rng.IntN(6) {
				j := rng.IntN(universe)
				if rng.IntN(3) == 0 {
					rev[j]++
				}
				up = append(up, mkEntry(j, rev[j]))
			}
			for range rng.IntN(4) {
				del = append(del, fmt.Sprintf("e%03d", rng.IntN(universe+5)))
			}
			step("delta", func(w *twin) changes { return w.settle(w.st.ApplyDelta(up, del), now) })
		case 3: // a workload subscribes
			sels := []*sigilv1.Selector{sel(fmt.Sprintf("uid:%d", rng.IntN(50))), sel(fmt.Sprintf("grp:%d", rng.IntN(7)))}
			nsub++
			k := nsub
			step("subscribe", func(w *twin) changes { w.subscribe(k, sels, now); return changes{} })
		case 4: // a workload leaves
			if len(ref.open) == 0 {
				continue
			}
			keys := make([]int, 0, len(ref.open))
			for k := range ref.open {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			k := keys[rng.IntN(len(keys))]
			step("unsubscribe", func(w *twin) changes { w.unsubscribe(k, now); return changes{} })
		case 5: // time passes
			now = now.Add(time.Duration(1+rng.IntN(40*60)) * time.Second)
			step("tick", func(w *twin) changes { return w.settle(w.st.Tick(now), now) })
		case 6:
			step("reset", func(w *twin) changes { return w.settle(w.st.ResetRetries(), now) })
		case 7: // the operator changes the cache's policy (rarely)
			if rng.IntN(5) != 0 {
				continue
			}
			np := newCachePolicy(SVIDCacheConfig{MaxSVIDs: 4 + rng.IntN(20), EagerSelectors: []string{fmt.Sprintf("unix:grp:%d", rng.IntN(7))}, IdleAfter: time.Minute})
			if rng.IntN(4) == 0 {
				np = newCachePolicy(SVIDCacheConfig{MaxSVIDs: 10, IdleAfter: time.Minute})
			}
			if rng.IntN(8) == 0 {
				np.max = 0 // unbounded: every entry is warm and minted
			}
			step("policy", func(w *twin) changes { return w.settle(w.st.SetPolicy(np), now) })
		default: // a batch is minted
			max := 1 + rng.IntN(12)
			var jobs [3][]*mintJob
			for k, w := range both {
				w.settle(w.st.Tick(now), now)
				jobs[k], _ = w.st.StartMints(now, max, func() map[*entryState]bool { return w.subs.waiting(&w.st) })
			}
			for k := 1; k < len(both); k++ {
				if a, b := jobIDs(jobs[0]), jobIDs(jobs[k]); !slices.Equal(a, b) {
					t.Fatalf("step %d: jobs differ: warm %v %s %v", i, a, names[k], b)
				}
			}
			outs := make([]mintOutcome, len(jobs[0]))
			keys := make([]crypto.Signer, len(jobs[0]))
			for j, job := range jobs[0] {
				switch rng.IntN(8) {
				case 0:
					outs[j] = mintOutcome{err: fmt.Errorf("server unavailable %d", j)}
				case 1:
					outs[j] = mintOutcome{err: fmt.Errorf("denied"), denied: true}
				default:
					key, _, err := newKeyAndCSR()
					if err != nil {
						t.Fatal(err)
					}
					keys[j] = key
					outs[j] = mintOutcome{chain: ca.sign(t, spiffeid.RequireFromString(job.fp.spiffeID), key.Public(), now.Add(-time.Minute), time.Hour)}
				}
			}
			step("mint", func(w *twin) changes {
				k := slices.Index(both, w)
				results := make([]mintResult, len(jobs[k]))
				for j, job := range jobs[k] {
					job.key = keys[j]
					if job.key == nil {
						key, _, _ := newKeyAndCSR()
						job.key = key
					}
					results[j] = checkMint(job, outs[j], w.st.bundle, now)
				}
				_, ch := w.st.MintFinished(results, now)
				return w.settle(ch, now)
			})
		}
	}
	// The run went through the cold tier.
	if peakCold < universe/3 {
		t.Fatalf("cold tier little used: at most %d entries cold", peakCold)
	}
	// The full store kept entries warm that the other sent cold.
	if fewer == 0 {
		t.Fatal("the full cold store always held as many entries as the other")
	}
	if n := len(full.st.cold.chunks); n > full.st.cold.maxChunks {
		t.Fatalf("a full cold store used %d chunk indexes, at most %d", n, full.st.cold.maxChunks)
	}
	t.Logf("%d entries: %d warm, %d cold; at most %d cold; %d steps with fewer cold in a full store", len(ref.st.entries), len(cold.st.entries), cold.st.cold.len(), peakCold, fewer)
}

// A workload that asks again for an entry that went cold since the last
// workload with the same selectors left gets it: the subscriptions' memo
// of matched entries does not hand out the entry's old state.
func TestColdTierResubscribeAfterCooling(t *testing.T) {
	f := boundedFixture(t, 2, 10)
	if got := f.mintJobs(f.c.takeDue(f.clk.Now(), 500)); !equalStrings(got, []string{"e00000", "e00001"}) {
		t.Fatalf("minted ahead of requests: %v", got)
	}
	sub := f.c.SubscribeX509([]*sigilv1.Selector{sel("uid:5")})
	f.mintJobs(f.c.takeDue(f.clk.Now(), 500))
	if got := ids(recv(t, sub)); !equalStrings(got, []string{"e00005"}) {
		t.Fatalf("first workload got %v", got)
	}
	sub.Close()
	// After idle_after, two other workloads push e00005's SVID out of
	// the cache (e00000 and e00001 went first): it goes cold.
	f.clk.Add(2 * time.Minute)
	for _, uid := range []string{"uid:7", "uid:8", "uid:9"} {
		s := f.c.SubscribeX509([]*sigilv1.Selector{sel(uid)})
		defer s.Close()
		f.mintJobs(f.c.takeDue(f.clk.Now(), 500))
		recv(t, s)
	}
	f.c.mu.Lock()
	_, warm := f.c.st.entries["e00005"]
	_, cold := f.c.st.cold.get("e00005")
	f.c.mu.Unlock()
	if warm || !cold {
		t.Fatalf("e00005 warm %v, cold %v; want it cold", warm, cold)
	}
	again := f.c.SubscribeX509([]*sigilv1.Selector{sel("uid:5")})
	defer again.Close()
	if got := f.mintJobs(f.c.takeDue(f.clk.Now(), 500)); !equalStrings(got, []string{"e00005"}) {
		t.Fatalf("for the returning workload the agent minted %v", got)
	}
	if got := ids(recv(t, again)); !equalStrings(got, []string{"e00005"}) {
		t.Fatalf("returning workload got %v", got)
	}
}

// Entries that arrive while the cache has room to mint them stay warm
// (they are taken at once, so sending them cold would decode them twice);
// those beyond the room arrive cold, and an entry whose SVID is dropped
// goes cold only while the spare queue has more entries than the room.
func TestColdTierSpareWithinRoomStaysWarm(t *testing.T) {
	f := boundedFixture(t, 4, 10)
	f.c.mu.Lock()
	warm, cold := len(f.c.st.entries), f.c.st.cold.len()
	f.c.mu.Unlock()
	if warm != 4 || cold != 6 {
		t.Fatalf("max_svids 4, 10 entries: %d warm, %d cold; want 4 warm, 6 cold", warm, cold)
	}
	// The spare entries are minted in order of ID across both tiers,
	// as before.
	if got := f.mintJobs(f.c.takeDue(f.clk.Now(), 500)); !equalStrings(got, []string{"e00000", "e00001", "e00002", "e00003"}) {
		t.Fatalf("minted ahead of requests: %v", got)
	}
	// No room left: a new entry arrives cold.
	f.c.ApplyDelta([]*sigilv1.Entry{entry("e00010", "w/e00010", 10, "uid:10")}, nil)
	f.c.mu.Lock()
	warm, cold = len(f.c.st.entries), f.c.st.cold.len()
	f.c.mu.Unlock()
	if warm != 4 || cold != 7 {
		t.Fatalf("cache full, one more entry: %d warm, %d cold; want 4 warm (with SVIDs), 7 cold", warm, cold)
	}
}
