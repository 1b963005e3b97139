package ca_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/ca/keymanager/memory"
	"github.com/sigil-id/sigil/clock"
)

// TestAdoptTaintAndForget: a key tainted cluster-wide is tainted in the
// slots (persisted, not published again) and an active one is succeeded;
// a key revoked cluster-wide is forgotten and, when it was active, the
// next Tick activates a new key at once; unknown IDs are refused.
func TestAdoptTaintAndForget(t *testing.T) {
	ctx := context.Background()
	clk := clock.NewFake(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	bundle := &fakeBundle{entries: map[string]string{}}
	state := filepath.Join(t.TempDir(), "slots.json")
	cfg := ca.DefaultConfig()
	cfg.TrustDomain = spiffeid.RequireTrustDomainFromString("example.org")
	cfg.ServerID = "s1"
	cfg.KeyManager = memory.New()
	cfg.CATTL = 24 * time.Hour
	cfg.X509SVIDTTL = time.Hour
	cfg.Clock = clk
	mcfg := ca.ManagerConfig{Kind: ca.KindX509, CA: cfg, Propagation: time.Hour, StatePath: state, Publisher: bundle}
	m, err := ca.NewManager(ctx, mcfg)
	if err != nil {
		t.Fatal(err)
	}
	m.Tick(ctx)
	act, ok := m.Active()
	if !ok {
		t.Fatal("no active key")
	}
	if _, _, err := m.AdoptTaint("nosuch"); !errors.Is(err, ca.ErrSlotNotFound) {
		t.Fatalf("unknown id: %v", err)
	}
	if _, err := m.Forget(ctx, "nosuch"); !errors.Is(err, ca.ErrSlotNotFound) {
		t.Fatalf("unknown id: %v", err)
	}
	// A slot number is not an authority ID here.
	if _, _, err := m.AdoptTaint("1"); !errors.Is(err, ca.ErrSlotNotFound) {
		t.Fatalf("slot number accepted as an authority ID: %v", err)
	}

	sl, changed, err := m.AdoptTaint(act.ID)
	if err != nil || !changed || !sl.Tainted || sl.State != ca.StateActive {
		t.Fatalf("AdoptTaint: %+v %v %v", sl, changed, err)
	}
	if bundle.entries["x509#1"] != "" {
		t.Fatal("AdoptTaint published")
	}
	if _, changed, _ := m.AdoptTaint(act.ID); changed {
		t.Fatal("second AdoptTaint changed the slot")
	}
	// Persisted: a restart keeps the taint.
	m2, err := ca.NewManager(ctx, mcfg)
	if err != nil {
		t.Fatal(err)
	}
	if a2, _ := m2.Active(); !a2.Tainted {
		t.Fatal("taint not persisted")
	}
	// A tainted active key is succeeded: a new key is prepared at once.
	m.Tick(ctx)
	if n := len(m.Slots()); n != 2 {
		t.Fatalf("%d slots after a tick with a tainted active key, want a prepared successor", n)
	}

	if _, err := m.Forget(ctx, act.ID); err != nil {
		t.Fatal(err)
	}
	for _, s := range m.Slots() {
		if s.ID == act.ID {
			t.Fatal("forgotten key still in the slots")
		}
	}
	if m.X509CA() == nil {
		t.Fatal("no signer between Forget and Tick")
	}
	m.Tick(ctx)
	now, ok := m.Active()
	if !ok || now.ID == act.ID || now.Tainted {
		t.Fatalf("after Forget and Tick the active key is %+v", now)
	}
	if got := m.X509CA().Certificate(); got == nil || string(got.Raw) == string(act.Certificate) {
		t.Fatal("the forgotten key still signs")
	}
	if _, ok := bundle.entries["x509#1"]; !ok {
		t.Fatal("Forget unpublished the key (the bundle had dropped it already)")
	}
}
