package server

import (
	"context"
	"fmt"
	"net"
	"path/filepath"

	"github.com/hashicorp/raft"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/cluster"
)

// startCluster builds this server's part in a cluster (package cluster)
// on the cluster port's listener ln, mints the first server SVID with
// the cluster identity CA, and opens the port. It returns the Raft
// transport.
func (s *Server) startCluster(ctx context.Context, ln net.Listener) (raft.Transport, error) {
	km, certPath, err := s.identityKeyManager(ctx)
	if err != nil {
		return nil, err
	}
	cfg := cluster.DefaultConfig()
	cfg.TrustDomain = s.td
	cfg.NodeName = s.cfg.NodeName
	cfg.Dir = filepath.Join(s.cfg.DataDir, "cluster")
	cfg.Listener = ln
	cfg.AdvertiseAddress = s.cfg.AdvertiseAddress
	cfg.RaftTransport = s.raftTransport
	cfg.JoinAddresses = s.cfg.JoinAddresses
	cfg.JoinKey = joinKey(s.cfg.JoinSecret)
	cfg.IdentityKeyManager = km
	cfg.IdentityCertPath = certPath
	cfg.IdentityCATTL = s.cfg.CATTL
	cfg.IdentitySVIDTTL = s.cfg.X509SVIDTTL
	cfg.KeyObserver = s.keys
	cfg.SVID = s.svid.Load
	cfg.Admin = clusterAdmin{s}
	cfg.Metrics = s.metrics
	cfg.AgentReports = s.agentReports
	cfg.Logger = s.log.Named("cluster")
	cfg.AuditSink = s.auditSink
	cfg.Clock = s.cfg.Clock
	if s.clusterTuning != nil {
		s.clusterTuning(&cfg)
	}
	c, err := cluster.New(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	s.cluster = c
	if err := s.mintServerSVID(ctx, c.IdentityCA()); err != nil {
		return nil, err
	}
	trans, err := c.Start()
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	return trans, nil
}

// clusterAdmin carries out the admin operations other members forward to
// this server over the Cluster service.
type clusterAdmin struct{ s *Server }

func (a clusterAdmin) RemoveMember(ctx context.Context, req *sigilv1.RemoveMemberRequest) (*sigilv1.RemoveMemberResponse, error) {
	return a.s.removeMember(ctx, req)
}

func (a clusterAdmin) TransferLeadership(ctx context.Context, req *sigilv1.TransferLeadershipRequest) (*sigilv1.TransferLeadershipResponse, error) {
	return a.s.transferLeadership(ctx, req)
}
