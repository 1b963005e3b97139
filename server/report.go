package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/health"
	"github.com/sigil-id/sigil/internal/clusterpb"
	"github.com/sigil-id/sigil/raftstore"
)

// This file holds the agents' rotation reports on the server side: the
// Node.Report handler, which keeps each agent's merged report in this
// server's memory (reportstore.go), and the Cluster.AgentReports answer
// through which the leader gathers every server's reports, failure
// counters and key manager state (health_gather.go).

// Bounds of Config.AgentReportInterval (when not 0).
const (
	MinAgentReportInterval = 5 * time.Second
	MaxAgentReportInterval = 10 * time.Minute
)

// newInstanceID names this server process (AgentReportsResponse.instance).
func newInstanceID() string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("server: random instance ID: " + err.Error()) // crypto/rand does not fail
	}
	return hex.EncodeToString(b[:])
}

// Report records the calling agent's report. The agent is the one of the
// connection's agent SVID (the auth interceptor checked it, and that the
// agent is attested and not banned); no ID in the message is trusted,
// and a report holds none. The report is never logged.
func (n *nodeAPI) Report(ctx context.Context, req *sigilv1.AgentReport) (*sigilv1.ReportResponse, error) {
	s := n.s
	agentID, ok := agentFrom(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "an agent SVID is required")
	}
	needFull, err := s.reports.apply(agentID.String(), req, s.cfg.Clock.Now())
	if err != nil {
		s.log.Debug("agent report refused", zap.String("agent_id", agentID.String()), zap.Error(err))
		return nil, err
	}
	return &sigilv1.ReportResponse{NeedFull: needFull, IntervalSeconds: uint32(s.cfg.AgentReportInterval / time.Second)}, nil
}

// failures are this server's failure counters since it started.
func (s *Server) failures() health.Failures {
	return health.Failures{Attestation: s.metrics.attestFailures.Load(), Signing: s.metrics.signFailures.Load()}
}

// evictReports drops the reports older than the store's MaxAge and those
// of agents this server's store no longer holds or holds banned.
func (s *Server) evictReports() {
	r := s.store.Read()
	s.reports.evict(s.cfg.Clock.Now(), func(id string) bool {
		n, err := r.Node(id)
		if errors.Is(err, raftstore.ErrNotFound) {
			return false
		}
		return err != nil || !n.Banned // a read error keeps the report
	})
}

// agentReports answers another member's Cluster.AgentReports call (the
// cluster package authenticated it as a member).
func (s *Server) agentReports(ctx context.Context, req *clusterpb.AgentReportsRequest) (*clusterpb.AgentReportsResponse, error) {
	if !s.isReady() {
		return nil, status.Error(codes.Unavailable, "server is starting")
	}
	s.evictReports()
	resp := s.reports.list(req.Since)
	f := s.failures()
	resp.AttestationFailures, resp.SigningFailures, resp.Instance = f.Attestation, f.Signing, s.instance
	since, lastErr := s.keys.state()
	resp.KeyManagerError = lastErr
	if !since.IsZero() {
		resp.KeyManagerFailingSince = since.Unix()
	}
	if since, lastErr := s.upstream.state(); !since.IsZero() {
		resp.UpstreamFailingSince, resp.UpstreamError = since.Unix(), lastErr
	}
	return resp, nil
}
