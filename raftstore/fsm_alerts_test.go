package raftstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/hashicorp/go-memdb"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/storepb"
)

func alertRec(key, summary string) *storepb.AlertRecord {
	return &storepb.AlertRecord{
		Key: key, Name: "SigilSVIDNotRenewed", Severity: "warning", Summary: summary,
		Details: map[string]string{"agent_id": "spiffe://example.org/sigil/agent/join_token/a1", "count": "2"},
		Source:  "s1", StartsAt: t0.Unix(), GeneratorUrl: "https://s1.example/alerts",
	}
}

func updateAlerts(fired []*storepb.AlertRecord, resolved ...string) *storepb.Command {
	return &storepb.Command{Op: &storepb.Command_UpdateAlerts{UpdateAlerts: &storepb.UpdateAlerts{Fired: fired, Resolved: resolved}}}
}

func alertKeys(rs []*storepb.AlertRecord) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.Key
	}
	return out
}

// TestUpdateAlerts: fired alerts are stored by key with the command's
// index, listed in key order, replaced when changed, left alone (no index
// move, no wake-up) when fired again unchanged, and removed when
// resolved; resolving an unknown key changes nothing.
func TestUpdateAlerts(t *testing.T) {
	tf := newTestFSM(t)
	tf.ok(updateAlerts([]*storepb.AlertRecord{alertRec("svid_not_renewed/b", "b"), alertRec("svid_not_renewed/a", "a")}))
	first := tf.index
	r := tf.f.reader()
	got := r.Alerts()
	if keys := alertKeys(got); strings.Join(keys, ",") != "svid_not_renewed/a,svid_not_renewed/b" {
		t.Fatalf("alerts %v", keys)
	}
	want := alertRec("svid_not_renewed/a", "a")
	want.ModifyIndex = first
	if !proto.Equal(got[0], want) {
		t.Fatalf("stored %v, want %v", got[0], want)
	}

	// The same record again: nothing moves, watchers stay asleep.
	ws := r.WatchSet()
	changed := tf.f.changedCh()
	before := snapshotBytes(t, tf.f)
	tf.ok(updateAlerts([]*storepb.AlertRecord{alertRec("svid_not_renewed/a", "a")}))
	if !bytes.Equal(snapshotBytes(t, tf.f), before) {
		t.Fatal("an unchanged alert changed the state")
	}
	select {
	case <-changed:
		t.Fatal("an unchanged alert woke watchers")
	default:
	}
	// Resolving a key that does not fire changes nothing either.
	tf.ok(updateAlerts(nil, "svid_not_renewed/none"))
	if !bytes.Equal(snapshotBytes(t, tf.f), before) {
		t.Fatal("resolving an unknown key changed the state")
	}

	// A changed summary replaces the record with the new index.
	tf.ok(updateAlerts([]*storepb.AlertRecord{alertRec("svid_not_renewed/a", "a, worse")}))
	if !watchFired(ws) {
		t.Fatal("changing an alert did not fire the list's watch")
	}
	got = tf.f.reader().Alerts()
	if got[0].Summary != "a, worse" || got[0].ModifyIndex != tf.index || got[1].ModifyIndex != first {
		t.Fatalf("after change: %v", got)
	}

	// Fire one and resolve another in one command.
	tf.ok(updateAlerts([]*storepb.AlertRecord{alertRec("cluster_member_unreachable/s2", "s2")}, "svid_not_renewed/a"))
	if keys := alertKeys(tf.f.reader().Alerts()); strings.Join(keys, ",") != "cluster_member_unreachable/s2,svid_not_renewed/b" {
		t.Fatalf("alerts %v", keys)
	}
	tf.ok(updateAlerts(nil, "cluster_member_unreachable/s2", "svid_not_renewed/b"))
	if got := tf.f.reader().Alerts(); len(got) != 0 {
		t.Fatalf("alerts after resolving all: %v", got)
	}
}

// watchFired reports whether a channel of ws is closed.
func watchFired(ws memdb.WatchSet) bool {
	for ch := range ws {
		select {
		case <-ch:
			return true
		default:
		}
	}
	return false
}

// TestUpdateAlertsRefusesBadInput: every bound is checked before anything
// is written; a refused command changes nothing.
func TestUpdateAlertsRefusesBadInput(t *testing.T) {
	tf := newTestFSM(t)
	tf.ok(updateAlerts([]*storepb.AlertRecord{alertRec("k/stored", "x")}))
	mut := func(f func(r *storepb.AlertRecord)) []*storepb.AlertRecord {
		r := alertRec("k/new", "x")
		f(r)
		return []*storepb.AlertRecord{alertRec("k/ok", "fine"), r}
	}
	manyDetails := map[string]string{}
	for i := range MaxAlertDetails + 1 {
		manyDetails[fmt.Sprintf("d%d", i)] = "v"
	}
	for name, cmd := range map[string]*storepb.Command{
		"nil record":         updateAlerts([]*storepb.AlertRecord{nil}),
		"empty key":          updateAlerts(mut(func(r *storepb.AlertRecord) { r.Key = "" })),
		"long key":           updateAlerts(mut(func(r *storepb.AlertRecord) { r.Key = strings.Repeat("k", MaxAlertKeyLen+1) })),
		"bad severity":       updateAlerts(mut(func(r *storepb.AlertRecord) { r.Severity = "urgent" })),
		"no severity":        updateAlerts(mut(func(r *storepb.AlertRecord) { r.Severity = "" })),
		"no name":            updateAlerts(mut(func(r *storepb.AlertRecord) { r.Name = "" })),
		"long name":          updateAlerts(mut(func(r *storepb.AlertRecord) { r.Name = strings.Repeat("n", MaxAlertNameLen+1) })),
		"long summary":       updateAlerts(mut(func(r *storepb.AlertRecord) { r.Summary = strings.Repeat("s", MaxAlertSummaryLen+1) })),
		"too many details":   updateAlerts(mut(func(r *storepb.AlertRecord) { r.Details = manyDetails })),
		"long detail key":    updateAlerts(mut(func(r *storepb.AlertRecord) { r.Details[strings.Repeat("k", MaxAlertDetailKeyLen+1)] = "v" })),
		"empty detail key":   updateAlerts(mut(func(r *storepb.AlertRecord) { r.Details[""] = "v" })),
		"long detail value":  updateAlerts(mut(func(r *storepb.AlertRecord) { r.Details["x"] = strings.Repeat("v", MaxAlertDetailValueLen+1) })),
		"negative start":     updateAlerts(mut(func(r *storepb.AlertRecord) { r.StartsAt = -1 })),
		"long source":        updateAlerts(mut(func(r *storepb.AlertRecord) { r.Source = strings.Repeat("s", MaxAlertSourceLen+1) })),
		"fired twice":        updateAlerts([]*storepb.AlertRecord{alertRec("k/a", "1"), alertRec("k/a", "2")}),
		"resolved twice":     updateAlerts(nil, "k/stored", "k/stored"),
		"fired and resolved": updateAlerts([]*storepb.AlertRecord{alertRec("k/a", "1")}, "k/a"),
		"empty resolved key": updateAlerts(nil, "k/stored", ""),
	} {
		tf.refused(name, cmd, codes.InvalidArgument)
	}
	if got := tf.f.reader().Alerts(); len(got) != 1 || got[0].Key != "k/stored" {
		t.Fatalf("alerts after refusals: %v", alertKeys(got))
	}
}

// TestUpdateAlertsLimit: the store keeps at most MaxAlerts firing alerts;
// an update past it is refused whole (ResourceExhausted), one that
// resolves as many as it adds is not.
func TestUpdateAlertsLimit(t *testing.T) {
	tf := newTestFSM(t)
	var all []*storepb.AlertRecord
	for i := range MaxAlerts {
		all = append(all, alertRec(fmt.Sprintf("k/%04d", i), "x"))
	}
	tf.ok(updateAlerts(all))
	tf.refused("one more", updateAlerts([]*storepb.AlertRecord{alertRec("k/extra", "x")}), codes.ResourceExhausted)
	// Changing a stored one does not add one.
	tf.ok(updateAlerts([]*storepb.AlertRecord{alertRec("k/0000", "changed")}))
	tf.ok(updateAlerts([]*storepb.AlertRecord{alertRec("k/extra", "x")}, "k/0001"))
	if n := len(tf.f.reader().Alerts()); n != MaxAlerts {
		t.Fatalf("%d alerts, want %d", n, MaxAlerts)
	}
	tf.refused("too many fired at once", updateAlerts(append(all, alertRec("k/more", "x"))), codes.InvalidArgument)
}

// alertState is a state with alerts besides the federation tables.
func alertState(t *testing.T) *testFSM {
	tf := federatedState(t)
	tf.ok(updateAlerts([]*storepb.AlertRecord{alertRec("svid_not_renewed/a", "a"), alertRec("cluster_member_unreachable/s2", "s2")}))
	return tf
}

func TestSnapshotAlertsRoundTrip(t *testing.T) {
	src := alertState(t)
	data := persist(t, src.f)
	dst := newTestFSM(t)
	if err := dst.f.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(snapshotBytes(t, dst.f), snapshotBytes(t, src.f)) {
		t.Fatal("restored state differs")
	}
	got, want := dst.f.reader().Alerts(), src.f.reader().Alerts()
	if len(got) != 2 || !proto.Equal(got[0], want[0]) || !proto.Equal(got[1], want[1]) {
		t.Fatalf("restored alerts %v, want %v", got, want)
	}
}

func TestSnapshotAlertsRefusesCorrupt(t *testing.T) {
	src := alertState(t)
	data := persist(t, src.f)
	var snap storepb.Snapshot
	if err := proto.Unmarshal(data[snapshotHeaderLen:len(data)-4], &snap); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(s *storepb.Snapshot){
		"nil alert":    func(s *storepb.Snapshot) { s.Alerts = append(s.Alerts, nil) },
		"dup alert":    func(s *storepb.Snapshot) { s.Alerts = append(s.Alerts, s.Alerts[0]) },
		"empty key":    func(s *storepb.Snapshot) { s.Alerts[0].Key = "" },
		"bad severity": func(s *storepb.Snapshot) { s.Alerts[0].Severity = "page" },
		"long summary": func(s *storepb.Snapshot) { s.Alerts[0].Summary = strings.Repeat("s", MaxAlertSummaryLen+1) },
		"too many": func(s *storepb.Snapshot) {
			for i := range MaxAlerts {
				s.Alerts = append(s.Alerts, alertRec(fmt.Sprintf("z/%d", i), "x"))
			}
		},
	} {
		s := proto.Clone(&snap).(*storepb.Snapshot)
		mut(s)
		body, err := proto.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		dst := alertState(t)
		before := persist(t, dst.f)
		if err := dst.f.Restore(io.NopCloser(bytes.NewReader(frameSnapshot(9, body)))); err == nil {
			t.Errorf("%s: corrupt snapshot restored", name)
			continue
		}
		if !bytes.Equal(persist(t, dst.f), before) {
			t.Errorf("%s: refused snapshot changed the state", name)
		}
	}
}

// TestStoreAlertsThroughRaft: UpdateAlerts goes through a real Raft log
// on disk, a refusal reaches the caller as a CommandError with its code,
// and the alerts survive a restart from a snapshot.
func TestStoreAlertsThroughRaft(t *testing.T) {
	dir := t.TempDir()
	s := openDisk(t, dir, func(c *Config) { c.Clock = clock.NewFake(t0) })
	ctx := context.Background()
	if _, err := s.Apply(ctx, updateAlerts([]*storepb.AlertRecord{alertRec("svid_expiring/a", "a")})); err != nil {
		t.Fatal(err)
	}
	var ce *CommandError
	if _, err := s.Apply(ctx, updateAlerts([]*storepb.AlertRecord{alertRec("k", "x")}, "k")); !errors.As(err, &ce) || ce.Code != codes.InvalidArgument {
		t.Fatalf("fired and resolved: %v", err)
	}
	want := s.Read().Alerts()
	if len(want) != 1 || want[0].ModifyIndex == 0 {
		t.Fatalf("alerts %v", want)
	}
	if err := s.Raft().Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openDisk(t, dir)
	defer s.Close()
	if got := s.Read().Alerts(); len(got) != 1 || !proto.Equal(got[0], want[0]) {
		t.Fatalf("alerts after restart: %v, want %v", got, want)
	}
}
