package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
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
// join secret, joinproto.go) and requires the SVID of a member for
// everything else.
func (c *cluster) authUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
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
		c.log.Warn("cluster call refused", zap.Bool("audit", true), zap.String("method", info.FullMethod), zap.Error(err))
		return nil, status.Error(codes.PermissionDenied, err.Error())
	}
	return handler(context.WithValue(ctx, peerKey{}, name), req)
}

type clusterAPI struct {
	clusterpb.UnimplementedClusterServer
	c *cluster
}

func (a *clusterAPI) store() (*raftstore.Store, error) {
	if st := a.c.store.Load(); st != nil {
		return st, nil
	}
	return nil, status.Error(codes.Unavailable, "server is starting")
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
	a.c.s.metrics.observeCommit(time.Since(start), err)
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
		NodeName:     a.c.s.cfg.NodeName,
		State:        st.State,
		Term:         st.Term,
		AppliedIndex: store.LastIndex(),
		CommitIndex:  st.CommitIndex,
		LeaderId:     leader,
	}, nil
}

// errNoLeader is returned when no leader appears within forwardRetryFor.
var errNoLeader = errors.New("no cluster leader")

// apply commits cmd: locally on the leader, through the leader's Cluster
// service elsewhere. It retries while there is no leader or the leader
// changes, as long as the command cannot have been committed (the leader
// refused it before appending it, or it was never delivered).
func (c *cluster) apply(ctx context.Context, cmd *storepb.Command) (*storepb.CommandResult, error) {
	store := c.store.Load()
	until := time.Now().Add(forwardRetryFor)
	var last error
	for attempt := 0; ; attempt++ {
		if store.IsLeader() {
			res, _, err := store.ApplyIndexed(ctx, cmd)
			if !errors.Is(err, raft.ErrNotLeader) {
				return res, err
			}
			last = err
		} else if addr, _ := store.Leader(); addr != "" {
			res, err, retry := c.forward(ctx, addr, cmd)
			if !retry {
				return res, err
			}
			last = err
		} else {
			last = errNoLeader
		}
		wait := min(time.Duration(attempt+1)*20*time.Millisecond, 250*time.Millisecond)
		if time.Now().Add(wait).After(until) {
			return nil, fmt.Errorf("server: write not accepted: %w", last)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("server: write: %w (%v)", ctx.Err(), last)
		case <-time.After(wait):
		}
	}
}

// forward sends cmd to the leader at addr. retry reports that the
// command was certainly not committed and may be sent again.
func (c *cluster) forward(ctx context.Context, addr string, cmd *storepb.Command) (*storepb.CommandResult, error, bool) {
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(cmd)
	if err != nil {
		return nil, err, false
	}
	cc, err := c.conn(addr)
	if err != nil {
		return nil, err, true
	}
	start := time.Now()
	resp, err := clusterpb.NewClusterClient(cc).Apply(ctx, &clusterpb.ApplyRequest{Command: data})
	c.s.metrics.observeCommit(time.Since(start), err)
	if err != nil {
		switch status.Code(err) {
		case codes.FailedPrecondition, codes.Unavailable:
			// Not the leader (refused before the log), or the request did
			// not reach it.
			return nil, err, true
		case codes.DeadlineExceeded, codes.Canceled:
			return nil, fmt.Errorf("server: forwarded write: %w", context.DeadlineExceeded), false
		default:
			return nil, fmt.Errorf("server: forwarded write: %w", err), false
		}
	}
	if resp.ErrorCode != 0 {
		return nil, &raftstore.CommandError{Code: codes.Code(resp.ErrorCode), Msg: resp.ErrorMessage}, false
	}
	res := &storepb.CommandResult{}
	if err := proto.Unmarshal(resp.Result, res); err != nil {
		return nil, fmt.Errorf("server: forwarded write result: %w", err), false
	}
	// Read-your-writes: the caller reads this server's store next.
	wctx, cancel := context.WithTimeout(ctx, localCatchUp)
	defer cancel()
	if err := c.store.Load().WaitApplied(wctx, resp.Index); err != nil {
		c.log.Debug("forwarded write not applied locally yet", zap.Error(err))
	}
	return res, nil, false
}

// consistentRead makes the reads that follow linearizable: the leader
// confirms its leadership, and this server waits until it has applied
// everything the leader had committed.
func (c *cluster) consistentRead(ctx context.Context) error {
	store := c.store.Load()
	until := time.Now().Add(forwardRetryFor)
	for attempt := 0; ; attempt++ {
		var idx uint64
		var err error
		if store.IsLeader() {
			idx, err = store.ReadIndex(ctx)
		} else if addr, _ := store.Leader(); addr != "" {
			var cc *grpc.ClientConn
			if cc, err = c.conn(addr); err == nil {
				var resp *clusterpb.ReadIndexResponse
				if resp, err = clusterpb.NewClusterClient(cc).ReadIndex(ctx, &clusterpb.ReadIndexRequest{}); err == nil {
					idx = resp.Index
				}
			}
		} else {
			err = errNoLeader
		}
		if err == nil {
			return store.WaitApplied(ctx, idx)
		}
		if time.Now().After(until) || ctx.Err() != nil {
			return fmt.Errorf("server: linearizable read: %w", err)
		}
		time.Sleep(min(time.Duration(attempt+1)*20*time.Millisecond, 250*time.Millisecond))
	}
}

// RemoveMember carries out an admin removal forwarded by another member.
func (a *clusterAPI) RemoveMember(ctx context.Context, req *sigilv1.RemoveMemberRequest) (*sigilv1.RemoveMemberResponse, error) {
	if req.NodeName == "" {
		return nil, status.Error(codes.InvalidArgument, "node name is required")
	}
	return a.c.s.removeMember(ctx, req)
}

// TransferLeadership carries out an admin transfer forwarded by another
// member.
func (a *clusterAPI) TransferLeadership(ctx context.Context, req *sigilv1.TransferLeadershipRequest) (*sigilv1.TransferLeadershipResponse, error) {
	return a.c.s.transferLeadership(ctx, req)
}
