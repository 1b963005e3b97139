package server

import (
	"context"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
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
