package server

import (
	"bufio"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/audit"
	"github.com/sigil-id/sigil/cluster"
	"github.com/sigil-id/sigil/internal/clusterpb"
	"github.com/sigil-id/sigil/internal/storepb"
	"github.com/sigil-id/sigil/raftstore"
)

// ConsistencyHeader is the gRPC metadata key an admin client sets to
// "linearizable" to have a read reflect every write acknowledged before
// it, wherever it was made (the default reads this server's replica).
const ConsistencyHeader = "sigil-consistency"

// snapshotChunk is the size of SnapshotChunk messages.
const snapshotChunk = 1 << 20

type clusterAdminAPI struct {
	sigilv1.UnimplementedClusterAdminServer
	s *Server
}

func (a *clusterAdminAPI) notLeader() error {
	_, id := a.s.store.Leader()
	if id == "" {
		return status.Error(codes.Unavailable, "the cluster has no leader")
	}
	return status.Errorf(codes.FailedPrecondition, "this server is not the leader; run this on %s", id)
}

func (a *clusterAdminAPI) Members(ctx context.Context, req *sigilv1.MembersRequest) (*sigilv1.MembersResponse, error) {
	s := a.s
	if req.Consistent {
		if err := s.consistentRead(ctx); err != nil {
			return nil, status.Error(codes.Unavailable, err.Error())
		}
	}
	ms, err := s.store.Members()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	st := s.store.Stats()
	_, leader := s.store.Leader()
	out := &sigilv1.MembersResponse{LeaderId: leader, Term: st.Term, AppliedIndex: s.store.LastIndex()}
	for _, m := range ms {
		pm := &sigilv1.Member{NodeName: m.ID, Address: m.Address, Suffrage: m.Suffrage, Leader: m.Leader}
		if m.ID == s.cfg.NodeName {
			pm.Healthy, pm.AppliedIndex, pm.State = true, s.store.LastIndex(), st.State
		} else if s.cluster != nil {
			if h, ok := s.cluster.MemberHealth(m.ID); ok && h.OK && h.Status != nil {
				pm.Healthy, pm.AppliedIndex, pm.State = true, h.Status.AppliedIndex, h.Status.State
			}
		}
		out.Members = append(out.Members, pm)
	}
	return out, nil
}

func (a *clusterAdminAPI) Join(ctx context.Context, req *sigilv1.ClusterJoinRequest) (*sigilv1.ClusterJoinResponse, error) {
	s := a.s
	if s.cluster == nil {
		return nil, status.Error(codes.FailedPrecondition, "this server runs without a cluster address (single node)")
	}
	if len(req.Addresses) == 0 {
		return nil, status.Error(codes.InvalidArgument, "no address to join")
	}
	if s.store.HasConfiguration() {
		return nil, status.Error(codes.FailedPrecondition, "this server is already in a cluster")
	}
	if err := s.cluster.Join(ctx, req.Addresses); err != nil {
		if errors.Is(err, cluster.ErrJoinRefused) {
			return nil, status.Error(codes.PermissionDenied, err.Error())
		}
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	_, id := s.store.Leader()
	return &sigilv1.ClusterJoinResponse{LeaderId: id}, nil
}

func (a *clusterAdminAPI) RemoveMember(ctx context.Context, req *sigilv1.RemoveMemberRequest) (*sigilv1.RemoveMemberResponse, error) {
	if req.NodeName == "" {
		return nil, status.Error(codes.InvalidArgument, "node name is required")
	}
	if a.s.store.IsLeader() || a.s.cluster == nil {
		return a.s.removeMember(ctx, req)
	}
	cc, err := a.leaderConn()
	if err != nil {
		return nil, err
	}
	return clusterpb.NewClusterClient(cc).RemoveMember(ctx, req)
}

func (a *clusterAdminAPI) TransferLeadership(ctx context.Context, req *sigilv1.TransferLeadershipRequest) (*sigilv1.TransferLeadershipResponse, error) {
	if a.s.store.IsLeader() || a.s.cluster == nil {
		return a.s.transferLeadership(ctx, req)
	}
	cc, err := a.leaderConn()
	if err != nil {
		return nil, err
	}
	return clusterpb.NewClusterClient(cc).TransferLeadership(ctx, req)
}

// leaderConn is a connection to the leader's cluster service, for admin
// operations that only the leader can carry out.
func (a *clusterAdminAPI) leaderConn() (*grpc.ClientConn, error) {
	addr, id := a.s.store.Leader()
	if addr == "" {
		return nil, status.Error(codes.Unavailable, "the cluster has no leader")
	}
	cc, err := a.s.cluster.Conn(addr)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "connecting to the leader %s: %v", id, err)
	}
	return cc, nil
}

// removeMember removes a server from the cluster; the caller is the
// leader. First its authorities are tainted cluster-wide and no authority
// of it is accepted any more (agents replace what it signed from the
// other servers' keys, already in every bundle), then it leaves the Raft
// configuration; its keys leave the bundle after RemovedServerGrace
// (finishRetirements). A removal that failed half-way is completed by
// running it again.
func (s *Server) removeMember(ctx context.Context, req *sigilv1.RemoveMemberRequest) (*sigilv1.RemoveMemberResponse, error) {
	if !s.store.IsLeader() {
		return nil, notLeader(s)
	}
	if !s.store.IsMember(req.NodeName) {
		return nil, status.Errorf(codes.NotFound, "%q is not a member", req.NodeName)
	}
	if err := s.removeMemberAuthorities(ctx, req.NodeName); err != nil {
		return nil, storeError(err)
	}
	s.auditAdmin(ctx, audit.Event{What: "member_authorities_tainted", Who: audit.Admin, Subject: req.NodeName, Message: "authorities of a server being removed tainted",
		Fields: []audit.Field{audit.String("node_name", req.NodeName), audit.Duration("revoked_after", s.cfg.RemovedServerGrace)}})
	if err := s.store.RemoveServer(ctx, req.NodeName); err != nil {
		return nil, status.Errorf(codes.Unavailable, "the authorities of %s are tainted, but removing it from the Raft configuration failed (run the removal again): %v", req.NodeName, err)
	}
	s.auditAdmin(ctx, audit.Event{What: "member_removed", Who: audit.Admin, Subject: req.NodeName, Message: "server removed from the cluster",
		Fields: []audit.Field{audit.String("node_name", req.NodeName)}})
	return &sigilv1.RemoveMemberResponse{}, nil
}

// transferLeadership hands leadership to another member; the caller is
// the leader.
func (s *Server) transferLeadership(ctx context.Context, req *sigilv1.TransferLeadershipRequest) (*sigilv1.TransferLeadershipResponse, error) {
	if !s.store.IsLeader() {
		return nil, notLeader(s)
	}
	if err := s.store.TransferLeadership(req.NodeName); err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	if err := s.store.WaitForLeader(ctx); err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	_, id := s.store.Leader()
	s.auditAdmin(ctx, audit.Event{What: "leadership_transferred", Who: audit.Admin, Subject: id, Message: "leadership transferred",
		Fields: []audit.Field{audit.String("leader", id)}})
	return &sigilv1.TransferLeadershipResponse{LeaderId: id}, nil
}

func notLeader(s *Server) error {
	_, id := s.store.Leader()
	if id == "" {
		return status.Error(codes.Unavailable, "the cluster has no leader")
	}
	return status.Errorf(codes.FailedPrecondition, "this server is not the leader; run this on %s", id)
}

func (a *clusterAdminAPI) SnapshotSave(_ *sigilv1.SnapshotSaveRequest, stream sigilv1.ClusterAdmin_SnapshotSaveServer) error {
	// A follower may lag the leader: catch up with everything committed
	// so far, so the snapshot holds every write acknowledged before it.
	if err := a.s.consistentRead(stream.Context()); err != nil {
		return status.Errorf(codes.Unavailable, "snapshot save: %v", err)
	}
	// The snapshot is streamed as it is written, never held whole. Should
	// writing fail half-way, the client has a snapshot that its length
	// and checksum show to be incomplete, and this call's error.
	w := &chunkSender{stream: stream}
	bw := bufio.NewWriterSize(w, snapshotChunk)
	idx, err := a.s.store.SaveSnapshot(stream.Context(), bw)
	if err == nil && w.err == nil {
		err = bw.Flush()
	}
	if w.err != nil {
		return w.err
	}
	if err != nil {
		return status.Error(codes.Unavailable, err.Error())
	}
	a.s.auditAdmin(stream.Context(), audit.Event{What: "snapshot_saved", Who: audit.Admin, Message: "snapshot saved",
		Fields: []audit.Field{audit.Uint64("index", idx), audit.Int("bytes", int(w.n))}})
	return nil
}

// chunkSender writes a snapshot to a SnapshotSave stream in chunks of at
// most snapshotChunk bytes, and keeps the stream's error.
type chunkSender struct {
	stream sigilv1.ClusterAdmin_SnapshotSaveServer
	n      int64
	err    error
}

func (c *chunkSender) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	for done := 0; done < len(p); {
		n := min(len(p)-done, snapshotChunk)
		if c.err = c.stream.Send(&sigilv1.SnapshotChunk{Data: p[done : done+n]}); c.err != nil {
			return done, c.err
		}
		done += n
		c.n += int64(n)
	}
	return len(p), nil
}

// chunkReceiver reads a snapshot from a SnapshotRestore stream, at most
// maxRestoreBytes of it, and keeps the stream's error.
type chunkReceiver struct {
	stream sigilv1.ClusterAdmin_SnapshotRestoreServer
	data   []byte
	n      int64
	err    error
}

func (c *chunkReceiver) Read(p []byte) (int, error) {
	for len(c.data) == 0 {
		if c.err != nil {
			return 0, c.err
		}
		chunk, err := c.stream.Recv()
		if errors.Is(err, io.EOF) {
			return 0, io.EOF
		}
		if err != nil {
			c.err = err
			return 0, err
		}
		if c.n += int64(len(chunk.Data)); c.n > maxRestoreBytes {
			c.err = status.Error(codes.InvalidArgument, "snapshot is too large")
			return 0, c.err
		}
		c.data = chunk.Data
	}
	n := copy(p, c.data)
	c.data = c.data[n:]
	return n, nil
}

func (a *clusterAdminAPI) SnapshotRestore(stream sigilv1.ClusterAdmin_SnapshotRestoreServer) error {
	s := a.s
	ctx := stream.Context()
	if !s.store.IsLeader() {
		return a.notLeader()
	}
	// The upload is spooled to a file as it comes, never held in memory,
	// and restored from there.
	spool, err := os.CreateTemp(s.cfg.DataDir, "restore-*.snap") // removed at start if a crash leaves it (raftstore.RemoveRestoreSpools)
	if err != nil {
		return status.Errorf(codes.Internal, "snapshot restore: %v", err)
	}
	defer os.Remove(spool.Name())
	defer spool.Close()
	in := &chunkReceiver{stream: stream}
	if _, err := io.Copy(spool, in); err != nil {
		if in.err != nil {
			return in.err
		}
		return status.Errorf(codes.Internal, "snapshot restore: spooling the upload: %v", err)
	}
	// The members' CA certificates must stay trusted, or the members
	// could no longer authenticate each other after the restore.
	var keep []*sigilv1.X509Authority
	if pb, err := s.store.Read().PeerBundle(s.td.Name()); err == nil {
		keep = pb.X509Authorities
	}
	if s.cluster != nil {
		// Until they are put back below, the restored bundle does not hold
		// them: keep trusting the members meanwhile, or the restore (and
		// the puts) could not be replicated.
		var certs []*x509.Certificate
		for _, au := range keep {
			if c, err := x509.ParseCertificate(au.Certificate); err == nil {
				certs = append(certs, c)
			}
		}
		s.cluster.TrustExtra(certs)
	}
	snap, err := s.store.RestoreSnapshot(ctx, spool)
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	for _, au := range keep {
		_, err := s.store.Apply(ctx, &storepb.Command{Op: &storepb.Command_PutX509Authority{PutX509Authority: &storepb.PutX509Authority{
			TrustDomain: s.td.Name(), Authority: au,
		}}})
		if ce := (*raftstore.CommandError)(nil); errors.As(err, &ce) && ce.Code == codes.PermissionDenied {
			// Revoked, or of a removed server, in the restored state.
			s.log.Warn("not re-publishing an authority the restored state refuses", zap.String("server_id", au.ServerId), zap.String("reason", ce.Msg))
			continue
		}
		if err != nil {
			return status.Errorf(codes.Unavailable, "restored, but re-publishing the CA of %s failed: %v", au.ServerId, err)
		}
	}
	s.auditAdmin(ctx, audit.Event{What: "snapshot_restored", Who: audit.Admin, Message: "snapshot restored",
		Fields: []audit.Field{audit.Int("entries", snap.Entries), audit.Int("agents", snap.Nodes)}})
	return stream.SendAndClose(&sigilv1.SnapshotRestoreResponse{
		Index: s.store.LastIndex(), Entries: int32(snap.Entries), Agents: int32(snap.Nodes),
	})
}

// maxRestoreBytes bounds an uploaded snapshot.
const maxRestoreBytes = 1 << 30

// consistentRead makes the following reads linearizable.
func (s *Server) consistentRead(ctx context.Context) error {
	if s.cluster != nil {
		return s.cluster.ConsistentRead(ctx)
	}
	_, err := s.store.ReadIndex(ctx)
	return err
}

// adminConsistency is the admin server's interceptor for opt-in
// linearizable reads.
func (s *Server) adminConsistency(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		for _, v := range md.Get(ConsistencyHeader) {
			switch v {
			case "linearizable":
				if err := s.consistentRead(ctx); err != nil {
					return nil, status.Error(codes.Unavailable, err.Error())
				}
			case "", "local":
			default:
				return nil, status.Error(codes.InvalidArgument, fmt.Sprintf("%s must be linearizable or local", ConsistencyHeader))
			}
		}
	}
	return handler(ctx, req)
}
