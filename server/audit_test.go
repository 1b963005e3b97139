package server

import (
	"context"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/audit"
)

// Admin actions leave typed audit records in the server's log: the
// message and detail fields as before, plus the stable "audit" name,
// who acted, on what, and the outcome.
func TestAdminActionsAreAudited(t *testing.T) {
	h := startServer(t)
	e := h.createEntry("spiffe://example.org/web", "spiffe://example.org/sigil/agent/x", "unix:uid:1000")
	if _, err := h.admin.BatchDeleteEntry(context.Background(), &sigilv1.BatchDeleteEntryRequest{Ids: []string{e.Id}}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		msg, what string
		fields    []zap.Field
	}{
		{"entry created", "entry_created", []zap.Field{zap.String("spiffe_id", "spiffe://example.org/web"), zap.Strings("selectors", []string{"unix:uid:1000"})}},
		{"entry deleted", "entry_deleted", nil},
	} {
		recs := h.logs.FilterMessage(c.msg).FilterField(zap.String("audit", c.what)).
			FilterField(zap.String("who", "admin")).FilterField(zap.String("subject", e.Id)).
			FilterField(zap.String("outcome", "success")).FilterField(zap.String("entry_id", e.Id))
		for _, f := range c.fields {
			recs = recs.FilterField(f)
		}
		if recs.Len() != 1 {
			t.Errorf("%d %q audit records with the expected fields, want 1; all: %v", recs.Len(), c.msg, h.logs.FilterMessage(c.msg).All())
			continue
		}
		if lvl := recs.All()[0].Level; lvl != zapcore.InfoLevel {
			t.Errorf("%q logged at %v, want info", c.msg, lvl)
		}
	}
}

// Config.AuditSink receives every audit event in place of the log; nil
// keeps the log.
func TestConfigAuditSink(t *testing.T) {
	var got []audit.Event
	cfg := DefaultConfig()
	cfg.TrustDomain = testTD
	cfg.NodeName = "s1"
	cfg.DataDir = t.TempDir()
	core, logs := observer.New(zap.DebugLevel)
	cfg.Logger = zap.New(core)
	cfg.AuditSink = audit.SinkFunc(func(ev audit.Event) { got = append(got, ev) })
	withPlugins(t, &cfg, "memory")
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.audit(audit.Event{What: "x509_svid_issued", Subject: "spiffe://example.org/web"})
	if len(got) != 1 || got[0].What != "x509_svid_issued" {
		t.Fatalf("sink got %+v, want the one event", got)
	}
	if logs.Len() != 0 {
		t.Errorf("a configured sink replaces the log sink; the log got %v", logs.All())
	}
	cfg.AuditSink = nil
	if s, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	s.audit(audit.Event{What: "x509_svid_issued"})
	if logs.FilterField(zap.String("audit", "x509_svid_issued")).Len() != 1 {
		t.Errorf("without a sink the event goes to the log; log: %v", logs.All())
	}
}
