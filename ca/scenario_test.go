package ca_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/ca/keymanager/memory"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/golden"
)

// fakeBundle is a Publisher that keeps the bundle in memory and can be
// made to fail.
type fakeBundle struct {
	fail    bool
	entries map[string]string // seq -> flags
}

func (b *fakeBundle) Publish(_ context.Context, s ca.Slot) error {
	if b.fail {
		return errors.New("raft unavailable")
	}
	f := ""
	if s.Tainted {
		f = " tainted"
	}
	b.entries[fmt.Sprintf("%s#%d", s.Kind, s.Seq)] = f
	return nil
}

func (b *fakeBundle) Unpublish(_ context.Context, s ca.Slot) error {
	if b.fail {
		return errors.New("raft unavailable")
	}
	delete(b.entries, fmt.Sprintf("%s#%d", s.Kind, s.Seq))
	return nil
}

// TestRotationScenarios runs the scripts in testdata/rotation against a
// Manager on a fake clock and compares the printed states with the golden
// files (go test ./ca -run Scenarios -update rewrites them).
//
// Commands: kind x509|jwt, config ttl=D propagation=D, tick, advance D,
// prepare, activate [SEQ], taint SEQ, revoke SEQ, fail-publish on|off,
// restart (reload from the state file, as after a crash).
func TestRotationScenarios(t *testing.T) {
	golden.Scripts(t, "testdata/rotation/*.script", runScenario)
}

func runScenario(t *testing.T, path string) string {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := clock.NewFake(start)
	km := memory.New()
	bundle := &fakeBundle{entries: map[string]string{}}
	state := filepath.Join(t.TempDir(), "slots.json")
	kind := ca.KindX509
	ttl, prop := 24*time.Hour, 4*time.Hour
	var m *ca.Manager
	open := func() {
		cfg := ca.DefaultConfig()
		cfg.TrustDomain = spiffeid.RequireTrustDomainFromString("example.org")
		cfg.ServerID = "s1"
		cfg.KeyManager = km
		cfg.CATTL = ttl
		cfg.X509SVIDTTL = time.Hour
		cfg.Clock = clk
		m, err = ca.NewManager(context.Background(), ca.ManagerConfig{
			Kind: kind, CA: cfg, Propagation: prop, StatePath: state, Publisher: bundle,
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	rel := func(tm time.Time) string {
		if tm.IsZero() {
			return "-"
		}
		return "+" + tm.Sub(start).String()
	}
	var out strings.Builder
	show := func() {
		for _, s := range m.Slots() {
			fl := ""
			if s.Tainted {
				fl = " tainted"
			}
			fmt.Fprintf(&out, "  %s#%d %-8s valid %s..%s published %s activated %s retired %s%s\n",
				s.Kind, s.Seq, s.State, rel(s.NotBefore), rel(s.NotAfter), rel(s.PublishedAt), rel(s.ActivatedAt), rel(s.RetiredAt), fl)
		}
		var keys []string
		for k, v := range bundle.entries {
			keys = append(keys, k+v)
		}
		sort.Strings(keys)
		fmt.Fprintf(&out, "  bundle: [%s]\n", strings.Join(keys, ", "))
		if a, ok := m.Active(); ok {
			fmt.Fprintf(&out, "  signing with %s#%d\n", a.Kind, a.Seq)
		}
	}
	sc := bufio.NewScanner(f)
	ctx := context.Background()
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			out.WriteString(line + "\n")
			continue
		}
		fields := strings.Fields(line)
		arg := ""
		if len(fields) > 1 {
			arg = fields[1]
		}
		fmt.Fprintf(&out, "> %s   (now %s)\n", line, rel(clk.Now()))
		var res string
		var opErr error
		switch fields[0] {
		case "kind":
			kind = ca.SlotKind(arg)
			continue
		case "config":
			for _, kv := range fields[1:] {
				k, v, _ := strings.Cut(kv, "=")
				d, err := time.ParseDuration(v)
				if err != nil {
					t.Fatalf("%s: %v", line, err)
				}
				switch k {
				case "ttl":
					ttl = d
				case "propagation":
					prop = d
				}
			}
			open()
			continue
		case "advance":
			d, err := time.ParseDuration(arg)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			clk.Add(d)
			continue
		case "tick":
			evs, next := m.Tick(ctx)
			for _, e := range evs {
				fmt.Fprintf(&out, "  %s %s#%d", e.Action, e.Slot.Kind, e.Slot.Seq)
				if e.Err != nil {
					fmt.Fprintf(&out, " failed: %s", strings.ReplaceAll(e.Err.Error(), e.Slot.ID, fmt.Sprintf("#%d", e.Slot.Seq)))
				}
				out.WriteString("\n")
			}
			res = "next " + rel(next)
		case "prepare":
			var s ca.Slot
			s, opErr = m.Prepare(ctx)
			res = fmt.Sprintf("prepared %s#%d", s.Kind, s.Seq)
		case "activate":
			var s ca.Slot
			var early time.Duration
			s, early, opErr = m.Activate(ctx, arg)
			res = fmt.Sprintf("activated %s#%d (%v early)", s.Kind, s.Seq, early)
		case "taint":
			var s ca.Slot
			s, opErr = m.Taint(ctx, arg)
			res = fmt.Sprintf("tainted %s#%d", s.Kind, s.Seq)
		case "revoke":
			var s ca.Slot
			s, opErr = m.Revoke(ctx, arg)
			res = fmt.Sprintf("revoked %s#%d", s.Kind, s.Seq)
		case "fail-publish":
			bundle.fail = arg == "on"
			continue
		case "restart":
			open()
			for _, n := range m.LoadNotes() {
				fmt.Fprintf(&out, "  note: %s\n", n)
			}
		default:
			t.Fatalf("unknown command %q", line)
		}
		if opErr != nil {
			// Key IDs are random: keep the golden stable.
			msg := opErr.Error()
			for _, s := range m.Slots() {
				msg = strings.ReplaceAll(msg, s.ID, fmt.Sprintf("#%d", s.Seq))
			}
			fmt.Fprintf(&out, "  error: %s\n", msg)
		} else if res != "" {
			fmt.Fprintf(&out, "  %s\n", res)
		}
		show()
	}
	return out.String()
}
