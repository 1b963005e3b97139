package server

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/raftstore"
	"github.com/sigil-id/sigil/registration"
)

// MaxBatchSize is the most CSRs one BatchNewX509SVID call may carry.
const MaxBatchSize = 2000

type nodeAPI struct {
	sigilv1.UnimplementedNodeServer
	s *Server
}

func (n *nodeAPI) Attest(ctx context.Context, req *sigilv1.AttestRequest) (*sigilv1.AttestResponse, error) {
	s := n.s
	v, ok := s.verifiers[req.AttestationType]
	if !ok {
		return nil, status.Errorf(codes.InvalidArgument, "unknown attestation type %q", req.AttestationType)
	}
	res, err := v.Verify(ctx, req.Payload)
	if err != nil {
		s.log.Warn("node attestation refused", zap.Bool("audit", true), zap.String("attestation_type", req.AttestationType), zap.Error(err))
		return nil, status.Errorf(codes.PermissionDenied, "attestation failed: %v", err)
	}
	agentID, err := registration.AgentID(s.td, v.Name(), res.ID)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "attestor returned a bad agent id: %v", err)
	}
	pub, err := ca.VerifyCSR(req.Csr)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "agent CSR: %v", err)
	}
	if existing, err := s.store.Read().Node(agentID.String()); err == nil && existing.Banned {
		return nil, status.Errorf(codes.PermissionDenied, "agent %s is banned", agentID)
	}
	chain, err := s.x509CA().SignX509SVID(ctx, ca.X509SVIDParams{PublicKey: pub, SPIFFEID: agentID, TTL: s.cfg.AgentSVIDTTL})
	if err != nil {
		return nil, status.Errorf(codes.Internal, "minting agent SVID: %v", err)
	}
	leaf := chain[0]
	_, err = s.apply(ctx, &sigilv1.Command{Op: &sigilv1.Command_AttestNode{AttestNode: &sigilv1.AttestNode{
		Node: &sigilv1.AttestedNode{
			SpiffeId:        agentID.String(),
			AttestationType: v.Name(),
			CertSerial:      fmt.Sprintf("%x", leaf.SerialNumber),
			CertNotAfter:    leaf.NotAfter.Unix(),
			Selectors:       res.Selectors,
			CreatedAt:       s.cfg.Clock.Now().Unix(),
		},
		JoinTokenHash: res.ConsumeJoinTokenHash,
	}}})
	if err != nil {
		s.log.Warn("node attestation refused", zap.Bool("audit", true), zap.String("agent_id", agentID.String()), zap.Error(err))
		return nil, storeError(err)
	}
	pb, err := s.store.Read().Bundle(s.td.Name())
	if err != nil {
		return nil, status.Errorf(codes.Internal, "reading bundle: %v", err)
	}
	s.log.Info("agent attested", zap.Bool("audit", true), zap.String("agent_id", agentID.String()),
		zap.String("attestation_type", v.Name()), zap.String("serial", fmt.Sprintf("%x", leaf.SerialNumber)), zap.Time("not_after", leaf.NotAfter))
	return &sigilv1.AttestResponse{SpiffeId: agentID.String(), SvidChain: rawChain(chain), Bundle: pb}, nil
}

func (n *nodeAPI) RenewAgent(ctx context.Context, req *sigilv1.RenewAgentRequest) (*sigilv1.RenewAgentResponse, error) {
	s := n.s
	agentID, _ := agentFrom(ctx)
	pub, err := ca.VerifyCSR(req.Csr)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "agent CSR: %v", err)
	}
	chain, err := s.x509CA().SignX509SVID(ctx, ca.X509SVIDParams{PublicKey: pub, SPIFFEID: agentID, TTL: s.cfg.AgentSVIDTTL})
	if err != nil {
		return nil, status.Errorf(codes.Internal, "minting agent SVID: %v", err)
	}
	leaf := chain[0]
	_, err = s.apply(ctx, &sigilv1.Command{Op: &sigilv1.Command_UpdateNode{UpdateNode: &sigilv1.UpdateNode{
		SpiffeId:     agentID.String(),
		CertSerial:   fmt.Sprintf("%x", leaf.SerialNumber),
		CertNotAfter: leaf.NotAfter.Unix(),
	}}})
	if err != nil {
		return nil, storeError(err)
	}
	s.log.Info("agent SVID renewed", zap.Bool("audit", true), zap.String("agent_id", agentID.String()),
		zap.String("serial", fmt.Sprintf("%x", leaf.SerialNumber)), zap.Time("not_after", leaf.NotAfter))
	return &sigilv1.RenewAgentResponse{SvidChain: rawChain(chain)}, nil
}

func (n *nodeAPI) BatchNewX509SVID(ctx context.Context, req *sigilv1.BatchNewX509SVIDRequest) (*sigilv1.BatchNewX509SVIDResponse, error) {
	s := n.s
	agentID, _ := agentFrom(ctx)
	if len(req.Requests) > MaxBatchSize {
		return nil, status.Errorf(codes.InvalidArgument, "batch of %d requests exceeds the limit of %d", len(req.Requests), MaxBatchSize)
	}
	authorized, err := s.store.Read().AuthorizedEntries(agentID.String())
	if err != nil {
		return nil, agentStateError(agentID, err)
	}
	byID := make(map[string]*sigilv1.Entry, len(authorized))
	for _, e := range authorized {
		byID[e.Id] = e
	}
	results := make([]*sigilv1.X509SVIDResult, len(req.Requests))
	sign := func(i int) {
		r := req.Requests[i]
		res := &sigilv1.X509SVIDResult{EntryId: r.EntryId}
		results[i] = res
		e, ok := byID[r.EntryId]
		if !ok {
			res.Status = &sigilv1.Status{Code: int32(codes.PermissionDenied), Message: fmt.Sprintf("agent is not authorized for entry %q", r.EntryId)}
			return
		}
		chain, err := n.signEntry(ctx, e, r.Csr)
		if err != nil {
			res.Status = &sigilv1.Status{Code: int32(status.Code(err)), Message: status.Convert(err).Message()}
			return
		}
		res.Status = &sigilv1.Status{}
		res.Chain = rawChain(chain)
		res.ExpiresAt = chain[0].NotAfter.Unix()
		s.log.Info("x509-svid issued", zap.Bool("audit", true), zap.String("agent_id", agentID.String()),
			zap.String("entry_id", e.Id), zap.String("spiffe_id", e.SpiffeId),
			zap.String("serial", chain[0].SerialNumber.Text(16)), zap.Time("not_after", chain[0].NotAfter))
	}
	parallelFor(len(req.Requests), sign)
	for _, res := range results {
		if res.Status.GetCode() == int32(codes.PermissionDenied) {
			s.log.Warn("x509-svid refused", zap.Bool("audit", true), zap.String("agent_id", agentID.String()),
				zap.String("entry_id", res.EntryId), zap.String("reason", res.Status.Message))
		}
	}
	return &sigilv1.BatchNewX509SVIDResponse{Results: results}, nil
}

func (n *nodeAPI) signEntry(ctx context.Context, e *sigilv1.Entry, csr []byte) ([]*x509.Certificate, error) {
	id, err := spiffeid.FromString(e.SpiffeId)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "entry %s has a bad SPIFFE ID: %v", e.Id, err)
	}
	pub, err := ca.VerifyCSR(csr)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "CSR: %v", err)
	}
	chain, err := n.s.x509CA().SignX509SVID(ctx, ca.X509SVIDParams{
		PublicKey: pub,
		SPIFFEID:  id,
		DNSNames:  e.DnsNames,
		TTL:       ttlSeconds(e.X509SvidTtl),
	})
	if err != nil {
		return nil, status.Errorf(codes.Internal, "signing: %v", err)
	}
	return chain, nil
}

// parallelFor runs fn(0..n-1) on up to GOMAXPROCS goroutines.
func parallelFor(n int, fn func(int)) {
	workers := runtime.GOMAXPROCS(0)
	if n < 8 || workers == 1 {
		for i := 0; i < n; i++ {
			fn(i)
		}
		return
	}
	if workers > n {
		workers = n
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	next := 0
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= n {
					return
				}
				fn(i)
			}
		}()
	}
	wg.Wait()
}

func rawChain(chain []*x509.Certificate) [][]byte {
	out := make([][]byte, len(chain))
	for i, c := range chain {
		out[i] = c.Raw
	}
	return out
}

func agentStateError(agentID spiffeid.ID, err error) error {
	switch {
	case errors.Is(err, raftstore.ErrBanned):
		return status.Errorf(codes.PermissionDenied, "agent %s is banned", agentID)
	case errors.Is(err, raftstore.ErrNotFound):
		return status.Errorf(codes.PermissionDenied, "agent %s is not attested (evicted?)", agentID)
	default:
		return status.Errorf(codes.Internal, "reading agent state: %v", err)
	}
}

// storeError turns a raftstore error into a gRPC status.
func storeError(err error) error {
	var ce *raftstore.CommandError
	if errors.As(err, &ce) {
		return status.Error(ce.Code, ce.Msg)
	}
	if errors.Is(err, raftstore.ErrNotFound) {
		return status.Error(codes.NotFound, err.Error())
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	return status.Errorf(codes.Unavailable, "store: %v", err)
}
