package ca_test

import (
	"testing"
	"time"

	"github.com/sigil-id/sigil/ca"
)

var t0 = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

func TestPrepareAt(t *testing.T) {
	for _, tc := range []struct {
		name     string
		from, to time.Duration
		want     time.Duration
	}{
		{"day", 0, 24 * time.Hour, 12 * time.Hour},
		{"backdated", -10 * time.Second, 40 * time.Second, 15 * time.Second},
		{"empty", 0, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := ca.PrepareAt(ca.Slot{NotBefore: at(tc.from), NotAfter: at(tc.to)})
			if !got.Equal(at(tc.want)) {
				t.Errorf("PrepareAt = %v, want %v", got.Sub(t0), tc.want)
			}
		})
	}
}

func TestActivateAt(t *testing.T) {
	p := ca.Policy{TTL: 24 * time.Hour, Propagation: 4 * time.Hour}
	active := &ca.Slot{NotBefore: at(0), NotAfter: at(24 * time.Hour)}
	for _, tc := range []struct {
		name      string
		published time.Duration // -1: not published
		active    *ca.Slot
		want      time.Duration // -1: zero
	}{
		{"not published", -1, active, -1},
		{"on schedule", 12 * time.Hour, active, 16 * time.Hour},
		{"published late", 13 * time.Hour, active, 17 * time.Hour},
		{"prepared early waits for the schedule", 1 * time.Hour, active, 16 * time.Hour},
		{"never after the active key expires", 22 * time.Hour, active, 24 * time.Hour},
		{"no active key: after propagation", 5 * time.Hour, nil, 9 * time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prep := ca.Slot{State: ca.StatePrepared}
			if tc.published >= 0 {
				prep.PublishedAt = at(tc.published)
			}
			got := ca.ActivateAt(prep, tc.active, p)
			if tc.want < 0 {
				if !got.IsZero() {
					t.Errorf("ActivateAt = %v, want zero", got.Sub(t0))
				}
				return
			}
			if !got.Equal(at(tc.want)) {
				t.Errorf("ActivateAt = %v, want %v", got.Sub(t0), tc.want)
			}
		})
	}
}

func TestPlan(t *testing.T) {
	p := ca.Policy{TTL: 24 * time.Hour, Propagation: 4 * time.Hour}
	h := time.Hour
	active := ca.Slot{Seq: 1, State: ca.StateActive, NotBefore: at(0), NotAfter: at(24 * h), PublishedAt: at(0)}
	prepared := ca.Slot{Seq: 2, State: ca.StatePrepared, NotBefore: at(12 * h), NotAfter: at(36 * h), PublishedAt: at(12 * h)}
	retired := ca.Slot{Seq: 1, State: ca.StateRetired, NotBefore: at(0), NotAfter: at(24 * h), PublishedAt: at(0)}
	active2 := prepared
	active2.State = ca.StateActive
	unpublished := prepared
	unpublished.PublishedAt = time.Time{}
	tainted := prepared
	tainted.Tainted = true
	taintedActive := active
	taintedActive.Tainted = true
	for _, tc := range []struct {
		name  string
		slots []ca.Slot
		now   time.Duration
		want  []ca.Action
		next  time.Duration // -1: zero
	}{
		{"empty: prepare", nil, 0, []ca.Action{{ca.ActPrepare, 0}}, -1},
		{"fresh prepared: activate at once", []ca.Slot{{Seq: 1, State: ca.StatePrepared, NotAfter: at(24 * h), PublishedAt: at(0)}}, 0, []ca.Action{{ca.ActActivate, 1}}, 24 * h},
		{"unpublished: publish, no activation", []ca.Slot{{Seq: 1, State: ca.StatePrepared, NotAfter: at(24 * h)}}, 0, []ca.Action{{ca.ActPublish, 1}}, 24 * h},
		{"active: wait for half-life", []ca.Slot{active}, 1 * h, nil, 12 * h},
		{"active at half-life: prepare", []ca.Slot{active}, 12 * h, []ca.Action{{ca.ActPrepare, 0}}, 24 * h},
		{"tainted active: prepare at once", []ca.Slot{taintedActive}, 1 * h, []ca.Action{{ca.ActPrepare, 0}}, 24 * h},
		{"prepared: wait for propagation", []ca.Slot{active, prepared}, 13 * h, nil, 16 * h},
		{"prepared and propagated: activate", []ca.Slot{active, prepared}, 16 * h, []ca.Action{{ca.ActActivate, 2}}, 24 * h},
		{"unpublished successor: publish, wait", []ca.Slot{active, unpublished}, 20 * h, []ca.Action{{ca.ActPublish, 2}}, 24 * h},
		{"tainted prepared: discard", []ca.Slot{active, tainted}, 13 * h, []ca.Action{{ca.ActPrune, 2}, {ca.ActPrepare, 0}}, 24 * h},
		{"retired: wait for expiry", []ca.Slot{retired, active2}, 17 * h, nil, 24 * h},
		{"retired expired: prune, and successor due", []ca.Slot{retired, active2}, 24 * h, []ca.Action{{ca.ActPrune, 1}, {ca.ActPrepare, 0}}, 36 * h},
		{"active expired, nothing prepared", []ca.Slot{active}, 25 * h, []ca.Action{{ca.ActPrune, 1}, {ca.ActPrepare, 0}}, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, next := ca.Plan(tc.slots, p, at(tc.now))
			if len(got) != len(tc.want) {
				t.Fatalf("Plan = %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("Plan = %v, want %v", got, tc.want)
				}
			}
			if tc.next < 0 {
				if !next.IsZero() {
					t.Errorf("next = %v, want zero", next.Sub(t0))
				}
			} else if !next.Equal(at(tc.next)) {
				t.Errorf("next = %v, want %v", next.Sub(t0), tc.next)
			}
		})
	}
}
