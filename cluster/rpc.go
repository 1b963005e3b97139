package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/audit"
	"github.com/sigil-id/sigil/internal/clusterpb"
	"github.com/sigil-id/sigil/internal/storepb"
	"github.com/sigil-id/sigil/raftstore"
)

// muxCredentials hands gRPC the TLS connections the cluster mux has
// already authenticated.
type muxCredentials struct{}

func (muxCredentials) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("muxCredentials: server side only")
}

func (muxCredentials) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return nil, nil, errors.New("cluster connection is not TLS")
	}
	return c, credentials.TLSInfo{
		State:          tc.ConnectionState(),
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
	}, nil
}

func (muxCredentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls", SecurityVersion: "1.3"}
}
func (m muxCredentials) Clone() credentials.TransportCredentials { return m }
func (muxCredentials) OverrideServerName(string) error           { return nil }

type peerKey struct{}

func tlsState(ctx context.Context) (*tls.ConnectionState, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, false
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return nil, false
	}
	return &ti.State, true
}

// authUnary lets JoinChallenge and Join through (they authenticate by the
// join secret, join.go) and requires the SVID of a member for everything
// else.
func (c *Cluster) authUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	switch info.FullMethod {
	case clusterpb.Cluster_Join_FullMethodName, clusterpb.Cluster_JoinChallenge_FullMethodName:
		return handler(ctx, req)
	}
	st, ok := tlsState(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "no TLS peer")
	}
	name, err := c.verifyPeer(st.PeerCertificates, true)
	if err != nil {
		c.audit.Audit(audit.Event{What: "cluster_call_refused", Outcome: audit.Denied, Message: "cluster call refused",
			Fields: []audit.Field{audit.String("method", info.FullMethod), audit.Err(err)}})
		return nil, status.Error(codes.PermissionDenied, err.Error())
	}
	return handler(context.WithValue(ctx, peerKey{}, name), req)
}

// clusterAPI serves the Cluster service.
type clusterAPI struct {
	clusterpb.UnimplementedClusterServer
	c *Cluster
}

func (a *clusterAPI) store() (*raftstore.Store, error) {
	if st := a.c.store.Load(); st != nil {
		return st, nil
	}
	return nil, status.Error(codes.Unavailable, "server is starting")
}

// storeStatus maps a store error to a gRPC status.
func storeStatus(err error) error {
	var ce *raftstore.CommandError
	switch {
	case errors.As(err, &ce):
		return status.Error(ce.Code, ce.Msg)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return status.Error(codes.DeadlineExceeded, err.Error())
	default:
		return status.Errorf(codes.Unavailable, "store: %v", err)
	}
}

func (a *clusterAPI) Apply(ctx context.Context, req *clusterpb.ApplyRequest) (*clusterpb.ApplyResponse, error) {
	store, err := a.store()
	if err != nil {
		return nil, err
	}
	cmd := &storepb.Command{}
	if err := proto.Unmarshal(req.Command, cmd); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "command: %v", err)
	}
	if !store.IsLeader() {
		return nil, status.Error(codes.FailedPrecondition, "not the leader")
	}
	start := time.Now()
	res, idx, err := store.ApplyIndexed(ctx, cmd)
	a.c.metrics.ObserveCommit(time.Since(start), err)
	var ce *raftstore.CommandError
	switch {
	case errors.As(err, &ce):
		return &clusterpb.ApplyResponse{ErrorCode: int32(ce.Code), ErrorMessage: ce.Msg, Index: idx}, nil
	case errors.Is(err, raft.ErrNotLeader):
		return nil, status.Error(codes.FailedPrecondition, "not the leader")
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return nil, status.Error(codes.DeadlineExceeded, err.Error())
	case err != nil:
		// Leadership lost, shutdown: the command may or may not commit.
		return nil, status.Error(codes.Aborted, err.Error())
	}
	data, err := proto.Marshal(res)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "result: %v", err)
	}
	return &clusterpb.ApplyResponse{Result: data, Index: idx}, nil
}

func (a *clusterAPI) ReadIndex(ctx context.Context, _ *clusterpb.ReadIndexRequest) (*clusterpb.ReadIndexResponse, error) {
	store, err := a.store()
	if err != nil {
		return nil, err
	}
	if !store.IsLeader() {
		return nil, status.Error(codes.FailedPrecondition, "not the leader")
	}
	idx, err := store.ReadIndex(ctx)
	if err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	return &clusterpb.ReadIndexResponse{Index: idx}, nil
}

func (a *clusterAPI) Status(context.Context, *clusterpb.StatusRequest) (*clusterpb.StatusResponse, error) {
	store, err := a.store()
	if err != nil {
		return nil, err
	}
	st := store.Stats()
	_, leader := store.Leader()
	return &clusterpb.StatusResponse{
		NodeName:     a.c.cfg.NodeName,
		State:        st.State,
		Term:         st.Term,
		AppliedIndex: store.LastIndex(),
		CommitIndex:  st.CommitIndex,
		LeaderId:     leader,
	}, nil
}

// RemoveMember carries out an admin removal forwarded by another member.
func (a *clusterAPI) RemoveMember(ctx context.Context, req *sigilv1.RemoveMemberRequest) (*sigilv1.RemoveMemberResponse, error) {
	if req.NodeName == "" {
		return nil, status.Error(codes.InvalidArgument, "node name is required")
	}
	return a.c.cfg.Admin.RemoveMember(ctx, req)
}

// TransferLeadership carries out an admin transfer forwarded by another
// member.
func (a *clusterAPI) TransferLeadership(ctx context.Context, req *sigilv1.TransferLeadershipRequest) (*sigilv1.TransferLeadershipResponse, error) {
	return a.c.cfg.Admin.TransferLeadership(ctx, req)
}

// AgentReports answers with this server's agent reports through
// Config.AgentReports; the cluster holds none of that logic.
func (a *clusterAPI) AgentReports(ctx context.Context, req *clusterpb.AgentReportsRequest) (*clusterpb.AgentReportsResponse, error) {
	if a.c.cfg.AgentReports == nil {
		return nil, status.Error(codes.Unimplemented, "this server keeps no agent reports")
	}
	return a.c.cfg.AgentReports(ctx, req)
}
