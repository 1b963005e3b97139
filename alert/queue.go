package alert

import "time"

// enqueue appends add to q and, while q holds more than size entries,
// drops one: first the oldest entry whose key has a newer entry in q (its
// news is stale), then, when every key is unique, the oldest entry. It
// returns the new queue and how many entries it dropped. It is pure: q is
// not modified in place when entries are dropped from its front.
func enqueue(q []Alert, size int, add ...Alert) ([]Alert, int) {
	q = append(q, add...)
	dropped := 0
	for len(q) > size {
		i := supersededIndex(q)
		if i < 0 {
			i = 0
		}
		q = append(q[:i:i], q[i+1:]...)
		dropped++
	}
	return q, dropped
}

// supersededIndex is the index of the oldest entry of q whose key has a
// newer entry in q, or -1.
func supersededIndex(q []Alert) int {
	last := make(map[string]int, len(q))
	for i, a := range q {
		last[a.Key] = i
	}
	for i, a := range q {
		if last[a.Key] != i {
			return i
		}
	}
	return -1
}

// latestByKey keeps the newest entry of each key in batch, in the order
// of those newest entries: a notifier is told an alert's current state
// once per send.
func latestByKey(batch []Alert) []Alert {
	last := make(map[string]int, len(batch))
	for i, a := range batch {
		last[a.Key] = i
	}
	out := make([]Alert, 0, len(last))
	for i, a := range batch {
		if last[a.Key] == i {
			out = append(out, a)
		}
	}
	return out
}

// backoff is the wait before retry number attempt (0 for the first
// retry): min doubled attempt times, at most max.
func backoff(min, max time.Duration, attempt int) time.Duration {
	d := min
	for i := 0; i < attempt && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	return d
}

// changed reports whether next tells a notifier something prev did not:
// another severity, summary or details.
func changed(prev, next Alert) bool {
	if prev.Severity != next.Severity || prev.Summary != next.Summary || len(prev.Details) != len(next.Details) {
		return true
	}
	for k, v := range next.Details {
		if pv, ok := prev.Details[k]; !ok || pv != v {
			return true
		}
	}
	return false
}

// routed reports whether a notifier whose minimum severity is min takes
// an alert of severity s.
func routed(min, s Severity) bool { return s.Rank() >= min.Rank() }
