package server

import (
	"context"
	"fmt"
	"sort"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/sigil-id/sigil/alert"
	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/audit"
)

// DefaultAlertTestTimeout bounds AlertAdmin.Test when the request gives
// no timeout.
const DefaultAlertTestTimeout = 10 * time.Second

// maxAlertTestTimeout caps the timeout a request may ask for.
const maxAlertTestTimeout = 5 * time.Minute

// newDispatcher builds the server's alert dispatcher (Server.alerts)
// from Config.Notifiers: the server's conditions raise and resolve alerts
// through it, Run delivers them, AlertAdmin lists them. Its metrics
// (metrics_alert.go) are registered with reg.
func newDispatcher(cfg Config, log *zap.Logger, reg prometheus.Registerer) (*alert.Dispatcher, error) {
	dcfg := alert.DefaultDispatcherConfig()
	dcfg.Notifiers = cfg.Notifiers
	dcfg.Clock = cfg.Clock
	if cfg.AlertRepeatInterval > 0 {
		dcfg.RepeatInterval = cfg.AlertRepeatInterval
	}
	dcfg.Logger = log.Named("alert")
	meter := newAlertMeter(reg)
	dcfg.Meter = meter
	d, err := alert.NewDispatcher(dcfg)
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	meter.init(d.Notifiers())
	reg.MustRegister(newFiringCollector(d.Active))
	return d, nil
}

// alertAdmin serves AlertAdmin on the admin socket.
type alertAdmin struct {
	sigilv1.UnimplementedAlertAdminServer
	s *Server
}

// Test sends a test alert through every notifier and reports each result.
func (a *alertAdmin) Test(ctx context.Context, req *sigilv1.AlertTestRequest) (*sigilv1.AlertTestResponse, error) {
	sev := alert.Severity(req.Severity)
	if req.Severity == "" {
		sev = alert.Warning
	}
	if sev.Rank() == 0 {
		return nil, status.Errorf(codes.InvalidArgument, "severity %q: must be info, warning or critical", req.Severity)
	}
	if len(req.Summary) > 1024 {
		return nil, status.Error(codes.InvalidArgument, "summary: longer than 1024 bytes")
	}
	timeout := DefaultAlertTestTimeout
	if req.TimeoutSeconds > 0 {
		timeout = min(time.Duration(req.TimeoutSeconds)*time.Second, maxAlertTestTimeout)
	}
	s := a.s
	node := s.cfg.NodeName
	summary := req.Summary
	if summary == "" {
		summary = fmt.Sprintf("Test alert from sigil server %s", node)
	}
	al := alert.Alert{
		Key:      "sigil_test/" + node,
		Name:     "SigilTestAlert",
		Severity: sev,
		Summary:  summary,
		Details: map[string]string{
			"test":        "true",
			"description": "This is a test alert sent by `sigil alert test`; no action is needed.",
			"server_id":   s.id.String(),
		},
		Source:   node,
		StartsAt: s.cfg.Clock.Now(),
	}
	tctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	results := s.alerts.Test(tctx, al)
	resp := &sigilv1.AlertTestResponse{Key: al.Key, Results: make([]*sigilv1.NotifierResult, 0, len(results))}
	var failed []string
	for _, r := range results {
		nr := &sigilv1.NotifierResult{Name: r.Notifier, Ok: r.Err == nil}
		if r.Err != nil {
			nr.Error = r.Err.Error()
			failed = append(failed, r.Notifier)
		}
		resp.Results = append(resp.Results, nr)
	}
	outcome := audit.Success
	if len(failed) > 0 || len(results) == 0 {
		outcome = audit.Failure
	}
	s.auditAdmin(ctx, audit.Event{What: "alert_test_sent", Who: audit.Admin, Subject: al.Key, Outcome: outcome, Message: "test alert sent", Fields: []audit.Field{
		audit.String("severity", string(sev)), audit.Int("notifiers", len(results)), audit.Strings("failed", failed),
	}})
	return resp, nil
}

// List returns the firing alerts, by key: the cluster's, recorded in
// Raft by the leader, and those this server's dispatcher has firing (its
// own, such as ClusterNoLeader; on the leader, the recorded ones too,
// listed once, as recorded).
func (a *alertAdmin) List(context.Context, *sigilv1.AlertListRequest) (*sigilv1.AlertListResponse, error) {
	var all []alert.Alert
	seen := map[string]bool{}
	for _, r := range a.s.store.Read().Alerts() {
		all = append(all, alertOf(r))
		seen[r.Key] = true
	}
	for _, al := range a.s.alerts.Active() {
		if !seen[al.Key] {
			all = append(all, al)
		}
	}
	sort.SliceStable(all, func(i, j int) bool { return all[i].Key < all[j].Key })
	resp := &sigilv1.AlertListResponse{Alerts: make([]*sigilv1.ActiveAlert, 0, len(all))}
	for _, al := range all {
		resp.Alerts = append(resp.Alerts, &sigilv1.ActiveAlert{
			Key: al.Key, Name: al.Name, Severity: string(al.Severity), Summary: al.Summary, Details: al.Details,
			Source: al.Source, StartsAt: al.StartsAt.Unix(), GeneratorUrl: al.GeneratorURL,
		})
	}
	return resp, nil
}
