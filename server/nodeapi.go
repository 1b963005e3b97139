package server

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/audit"
	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/internal/storepb"
	"github.com/sigil-id/sigil/raftstore"
	"github.com/sigil-id/sigil/registration"
)

// MaxBatchSize is the most CSRs one BatchNewX509SVID call may carry.
const MaxBatchSize = 2000

type nodeAPI struct {
	sigilv1.UnimplementedNodeServer
	s *Server

	// claims holds the single-use credentials (join token hashes) that
	// an attestation on this server is consuming right now; a concurrent
	// one with the same credential is refused before it signs anything.
	claimMu sync.Mutex
	claims  map[node.Credential]struct{}
}

// claim marks c as being consumed; false if another call holds it.
func (n *nodeAPI) claim(c node.Credential) bool {
	n.claimMu.Lock()
	defer n.claimMu.Unlock()
	if _, ok := n.claims[c]; ok {
		return false
	}
	if n.claims == nil {
		n.claims = make(map[node.Credential]struct{})
	}
	n.claims[c] = struct{}{}
	return true
}

func (n *nodeAPI) unclaim(c node.Credential) {
	n.claimMu.Lock()
	defer n.claimMu.Unlock()
	delete(n.claims, c)
}

// Attest is the unary attestation of agents of the previous version: the
// verifier gets the payload and no challenge round. With AttestStream it
// is the only node API method open to callers without an agent SVID.
// Before it signs anything or writes to Raft it checks the request's size
// and the evidence against local state (the verifier looks the join token
// up in this server's copy of the store), so an unauthenticated caller
// with made-up evidence costs one local lookup. The connection and rate
// limits in front of it are in nodeapi_limits.go.
func (n *nodeAPI) Attest(ctx context.Context, req *sigilv1.AttestRequest) (*sigilv1.AttestResponse, error) {
	if size := proto.Size(req); size > n.s.nodeLimits.MaxAttestRequestSize {
		return nil, status.Errorf(codes.ResourceExhausted, "attestation request of %d bytes exceeds the limit of %d bytes", size, n.s.nodeLimits.MaxAttestRequestSize)
	}
	return n.attest(ctx, req, &exchange{payload: req.Payload, unary: true, attestationType: req.AttestationType})
}

// attest runs one attestation: the verifier named by req checks the
// evidence through ex, and only then is the CSR parsed, the agent SVID
// signed and the attestation (with the credentials it consumes) written
// through Raft. ctx bounds the whole call.
func (n *nodeAPI) attest(ctx context.Context, req *sigilv1.AttestRequest, ex *exchange) (*sigilv1.AttestResponse, error) {
	res, v, err := n.verify(ctx, req, ex)
	if err != nil {
		return nil, err
	}
	return n.record(ctx, req, v, res)
}

// verify finds the verifier of req and runs it. A refusal is logged and
// returned as the status the caller gets.
func (n *nodeAPI) verify(ctx context.Context, req *sigilv1.AttestRequest, ex *exchange) (*node.Result, node.Verifier, error) {
	s := n.s
	v, ok := s.verifiers[req.AttestationType]
	if !ok {
		typ := req.AttestationType
		if len(typ) > 64 {
			typ = typ[:64] + "…"
		}
		known := make([]string, 0, len(s.verifiers))
		for name := range s.verifiers {
			known = append(known, name)
		}
		sort.Strings(known)
		return nil, nil, status.Errorf(codes.InvalidArgument, "unknown attestation type %q (this server knows %s)", typ, strings.Join(known, ", "))
	}
	res, err := v.Verify(ctx, nodeState{s: s, attestor: v.Name()}, ex)
	// The exchange's own failure (rounds, sizes, time, the agent going
	// away) stands whatever the verifier made of it.
	if failed := ex.failure(); failed != nil {
		if err == nil {
			err = failed
		}
		s.audit(audit.Event{What: "node_attestation_refused", Outcome: audit.Denied, Message: "node attestation refused",
			Fields: []audit.Field{audit.String("attestation_type", req.AttestationType), audit.Int("rounds", ex.rounds()), audit.Err(err)}})
		return nil, nil, failed
	}
	if err == nil && res == nil {
		err = errors.New("the verifier returned no result")
	}
	if err != nil {
		s.audit(audit.Event{What: "node_attestation_refused", Outcome: audit.Denied, Message: "node attestation refused",
			Fields: []audit.Field{audit.String("attestation_type", req.AttestationType), audit.Err(err)}})
		var refused *node.RefusedError
		switch {
		case errors.As(err, &refused):
			// One answer for unknown, used and expired credentials;
			// the reason is in the log line above.
			return nil, nil, status.Errorf(codes.PermissionDenied, "attestation failed: %s", refused.Public)
		case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
			return nil, nil, status.FromContextError(err).Err()
		}
		if st, ok := status.FromError(err); ok {
			return nil, nil, st.Err()
		}
		return nil, nil, status.Errorf(codes.PermissionDenied, "attestation failed: %v", err)
	}
	return res, v, nil
}

// record signs the agent SVID of a verified attestation and writes the
// attestation, consuming res.Consume, through Raft.
func (n *nodeAPI) record(ctx context.Context, req *sigilv1.AttestRequest, v node.Verifier, res *node.Result) (*sigilv1.AttestResponse, error) {
	s := n.s
	for _, c := range res.Consume {
		if c.Kind != node.CredentialJoinToken {
			s.audit(audit.Event{What: "node_attestation_refused", Outcome: audit.Failure,
				Message: "node attestation refused: the verifier asked to consume a credential of a kind the store does not keep",
				Fields:  []audit.Field{audit.String("attestation_type", v.Name()), audit.String("kind", c.Kind)}})
			return nil, status.Errorf(codes.Internal, "attestation failed: the %s verifier asked to consume a credential of kind %q, which this server does not keep", v.Name(), c.Kind)
		}
		// The Raft command consumes the credential atomically across
		// servers; this claim keeps concurrent uses on one server from
		// each costing a signature and a Raft write first.
		if !n.claim(c) {
			s.audit(audit.Event{What: "node_attestation_refused", Outcome: audit.Denied, Message: "node attestation refused",
				Fields: []audit.Field{audit.String("attestation_type", req.AttestationType),
					audit.String("reason", "the single-use credential is being consumed by a concurrent attestation")}})
			return nil, status.Error(codes.PermissionDenied, "attestation failed: "+consumedMessage)
		}
		defer n.unclaim(c)
		// A call that held the claim until just now has consumed it.
		if _, err := s.store.Read().JoinToken(c.ID); err != nil {
			s.audit(audit.Event{What: "node_attestation_refused", Outcome: audit.Denied, Message: "node attestation refused",
				Fields: []audit.Field{audit.String("attestation_type", req.AttestationType),
					audit.String("reason", "the single-use credential was consumed by a concurrent attestation")}})
			return nil, status.Error(codes.PermissionDenied, "attestation failed: "+consumedMessage)
		}
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
	cmd := &storepb.AttestNode{
		Node: &sigilv1.AttestedNode{
			SpiffeId:        agentID.String(),
			AttestationType: v.Name(),
			CertSerial:      fmt.Sprintf("%x", leaf.SerialNumber),
			CertNotAfter:    leaf.NotAfter.Unix(),
			Selectors:       res.Selectors,
			CreatedAt:       s.cfg.Clock.Now().Unix(),
			LastSeen:        s.cfg.Clock.Now().Unix(),
		},
	}
	for _, c := range res.Consume {
		// A join token goes in join_token_hash, which servers of the
		// previous version apply too (they ignore consume), so that a
		// cluster in a rolling upgrade applies the command alike.
		if c.Kind == node.CredentialJoinToken && cmd.JoinTokenHash == "" {
			cmd.JoinTokenHash = c.ID
			continue
		}
		cmd.Consume = append(cmd.Consume, &storepb.Credential{Kind: c.Kind, Id: c.ID})
	}
	_, err = s.apply(ctx, &storepb.Command{Op: &storepb.Command_AttestNode{AttestNode: cmd}})
	if err != nil {
		s.audit(audit.Event{What: "node_attestation_refused", Subject: agentID.String(), Outcome: audit.Denied, Message: "node attestation refused",
			Fields: []audit.Field{audit.String("agent_id", agentID.String()), audit.Err(err)}})
		return nil, storeError(err)
	}
	pb, err := s.store.Read().Bundle(s.td.Name())
	if err != nil {
		return nil, status.Errorf(codes.Internal, "reading bundle: %v", err)
	}
	s.audit(audit.Event{What: "agent_attested", Subject: agentID.String(), Message: "agent attested",
		Fields: []audit.Field{audit.String("agent_id", agentID.String()), audit.String("attestation_type", v.Name()),
			audit.String("serial", fmt.Sprintf("%x", leaf.SerialNumber)), audit.Time("not_after", leaf.NotAfter)}})
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
	_, err = s.apply(ctx, &storepb.Command{Op: &storepb.Command_UpdateNode{UpdateNode: &storepb.UpdateNode{
		SpiffeId:     agentID.String(),
		CertSerial:   fmt.Sprintf("%x", leaf.SerialNumber),
		CertNotAfter: leaf.NotAfter.Unix(),
	}}})
	if err != nil {
		return nil, storeError(err)
	}
	s.audit(audit.Event{What: "agent_svid_renewed", Who: agentID.String(), Subject: agentID.String(), Message: "agent SVID renewed",
		Fields: []audit.Field{audit.String("agent_id", agentID.String()),
			audit.String("serial", fmt.Sprintf("%x", leaf.SerialNumber)), audit.Time("not_after", leaf.NotAfter)}})
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
		s.audit(audit.Event{What: "x509_svid_issued", Who: agentID.String(), Subject: e.SpiffeId, Message: "x509-svid issued",
			Fields: []audit.Field{audit.String("agent_id", agentID.String()), audit.String("entry_id", e.Id), audit.String("spiffe_id", e.SpiffeId),
				audit.String("serial", chain[0].SerialNumber.Text(16)), audit.Time("not_after", chain[0].NotAfter)}})
	}
	parallelFor(len(req.Requests), sign)
	for _, res := range results {
		if res.Status.GetCode() == int32(codes.PermissionDenied) {
			s.audit(audit.Event{What: "x509_svid_refused", Who: agentID.String(), Subject: res.EntryId, Outcome: audit.Denied, Message: "x509-svid refused",
				Fields: []audit.Field{audit.String("agent_id", agentID.String()), audit.String("entry_id", res.EntryId), audit.String("reason", res.Status.Message)}})
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

// consumedMessage is the answer to an attestation whose single-use
// credential a concurrent attestation consumed: the join token verifier's
// answer for a spent token, so that the two cases read the same.
const consumedMessage = "join token is unknown, already used or expired"

// followerTokenWait bounds how long a follower that does not hold a join
// token waits for its store to catch up: the leader may have committed
// the token a moment ago, and a follower learns of it within a
// replication round (tens of milliseconds).
const followerTokenWait = time.Second

// nodeState is the verifiers' read-only view of this server's store.
type nodeState struct {
	s        *Server
	attestor string // the verifier's name, for Agent
}

// Now is the server's clock.
func (st nodeState) Now() time.Time { return st.s.cfg.Clock.Now() }

// CredentialExpiry looks the credential up in the local store (join
// tokens are the only kind). A follower that does not find it waits up to
// followerTokenWait for its store to apply newer entries (no Raft
// traffic, no write) before it gives up; while it waits, the call gives
// its in-flight attestation slot back (the rate limits bound how many
// such waits there can be).
func (st nodeState) CredentialExpiry(ctx context.Context, c node.Credential) (time.Time, error) {
	s := st.s
	if c.Kind != node.CredentialJoinToken {
		return time.Time{}, fmt.Errorf("server: no credentials of kind %q: %w", c.Kind, node.ErrNotFound)
	}
	hash := c.ID
	if s.store == nil {
		return time.Time{}, status.Error(codes.Unavailable, "server: the store is not open yet")
	}
	var timeout <-chan time.Time
	for {
		changed := s.store.Changed()
		t, err := s.store.Read().JoinToken(hash)
		switch {
		case err == nil:
			return time.Unix(t.ExpiresAt, 0), nil
		case !errors.Is(err, raftstore.ErrNotFound):
			return time.Time{}, status.Errorf(codes.Internal, "server: reading join tokens: %v", err)
		case s.cluster == nil || s.store.IsLeader():
			return time.Time{}, fmt.Errorf("server: %w", node.ErrNotFound)
		}
		if timeout == nil {
			timeout = s.cfg.Clock.After(followerTokenWait)
			releaseAttestSlot(ctx)
		}
		select {
		case <-changed:
		case <-timeout:
			return time.Time{}, fmt.Errorf("server: %w", node.ErrNotFound)
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		}
	}
}

// verifiedAgent reports whether certs are a valid agent SVID of the trust
// domain now (whether the agent is attested and not banned is checked on
// each call by the auth interceptors).
func (s *Server) verifiedAgent(certs []*x509.Certificate) bool {
	bundle, err := s.currentBundle()
	if err != nil {
		return false
	}
	id, _, err := x509svid.Verify(certs, bundle, x509svid.WithTime(s.cfg.Clock.Now()))
	return err == nil && registration.IsAgentID(id)
}

// refuseUnauthenticated is the node guard's answer to a call other than
// an attestation on a connection that presented no valid agent SVID: the auth
// interceptor's own error.
func (s *Server) refuseUnauthenticated(ctx context.Context) error {
	_, err := s.authenticate(ctx)
	return err
}

// Used reports whether a use-once credential was used. The replicated
// state does not keep use-once records yet, so every such credential is
// refused (fail closed) until it does.
func (st nodeState) Used(ctx context.Context, c node.Credential) (bool, error) {
	return false, fmt.Errorf("server: credentials of kind %q are not kept by this server", c.Kind)
}

// Agent looks up the agent the verifier's attestor names id.
func (st nodeState) Agent(ctx context.Context, id string) (node.AgentRecord, error) {
	s := st.s
	agentID, err := registration.AgentID(s.td, st.attestor, id)
	if err != nil {
		return node.AgentRecord{}, fmt.Errorf("server: %w", err)
	}
	if s.store == nil {
		return node.AgentRecord{}, status.Error(codes.Unavailable, "server: the store is not open yet")
	}
	n, err := s.store.Read().Node(agentID.String())
	switch {
	case errors.Is(err, raftstore.ErrNotFound):
		return node.AgentRecord{}, fmt.Errorf("server: agent %s: %w", agentID, node.ErrNotFound)
	case err != nil:
		return node.AgentRecord{}, status.Errorf(codes.Internal, "server: reading agent %s: %v", agentID, err)
	}
	return node.AgentRecord{
		Banned:        n.Banned,
		AttestedAt:    time.Unix(n.CreatedAt, 0),
		SVIDExpiresAt: time.Unix(n.CertNotAfter, 0),
	}, nil
}
