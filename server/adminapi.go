package server

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/audit"
	"github.com/sigil-id/sigil/internal/storepb"
	"github.com/sigil-id/sigil/raftstore"
	"github.com/sigil-id/sigil/registration"
)

// MaxAdminBatch is the most items one admin batch call may carry.
const MaxAdminBatch = 10000

type adminAPI struct {
	sigilv1.UnimplementedAdminServer
	s *Server
}

// entryIDSeq numbers the entry ids this process makes.
var entryIDSeq atomic.Uint32

// newEntryID returns a new entry id of 32 lowercase hex digits: the
// creation time in milliseconds (12 digits), a counter (4 digits) and 64
// random bits. The ids of one batch share a prefix and follow each other,
// so each insert into the store's radix tree indexes copies a few nodes
// already copied for the entry before it instead of a path of its own
// (a quarter of the allocations of a random id); the random part keeps
// ids unique across servers.
func newEntryID(now time.Time) (string, error) {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], uint64(now.UnixMilli())<<16|uint64(uint16(entryIDSeq.Add(1))))
	if _, err := rand.Read(b[8:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

func okStatus() *sigilv1.Status { return &sigilv1.Status{} }

func errStatus(c codes.Code, msg string) *sigilv1.Status {
	return &sigilv1.Status{Code: int32(c), Message: msg}
}

// maxEntriesPerCommand is the most entries one Raft command of an admin
// batch carries. A memdb write transaction that changes more index nodes
// than go-immutable-radix tracks (8,192 per index) falls back to walking
// every index tree at commit to find its watch channels, a cost that grows
// with the whole store rather than with the batch; 1,000 entries stay well
// under that, and a larger batch becomes a few commands, each one fsync.
const maxEntriesPerCommand = 1000

// applyInCommands applies the n items of an admin batch as one Raft
// command per maxEntriesPerCommand items, in order: cmd builds the command
// of items [lo, hi) and done receives its result once it is committed and
// applied here. When the first command fails its error is returned (the
// batch changed nothing); when a later one fails, failed receives lo, the
// first item not committed, and the commit's status, and the remaining
// items are not attempted.
func (s *Server) applyInCommands(ctx context.Context, n int, cmd func(lo, hi int) *storepb.Command,
	done func(lo, hi int, res *storepb.CommandResult), failed func(lo int, st *sigilv1.Status)) error {
	for lo := 0; lo < n; lo += maxEntriesPerCommand {
		hi := min(lo+maxEntriesPerCommand, n)
		res, err := s.apply(ctx, cmd(lo, hi))
		if err != nil {
			if lo == 0 {
				return storeError(err)
			}
			st := status.Convert(storeError(err))
			failed(lo, errStatus(st.Code(), st.Message()))
			return nil
		}
		done(lo, hi, res)
	}
	return nil
}

// BatchCreateEntry validates every entry here, outside the FSM (which
// repeats only the checks it needs to refuse a bad entry arriving in the
// log), and creates the valid ones with one Raft command per
// maxEntriesPerCommand entries. A batch larger than MaxAdminBatch is
// refused whole with InvalidArgument before anything is decoded further.
// When a command after the first fails to commit, the entries of the
// commands already committed keep their results and every later entry is
// answered with the commit's error.
func (a *adminAPI) BatchCreateEntry(ctx context.Context, req *sigilv1.BatchCreateEntryRequest) (*sigilv1.BatchCreateEntryResponse, error) {
	s := a.s
	if len(req.Entries) > MaxAdminBatch {
		return nil, status.Errorf(codes.InvalidArgument, "batch of %d exceeds the limit of %d", len(req.Entries), MaxAdminBatch)
	}
	results := make([]*sigilv1.EntryResult, len(req.Entries))
	toCreate := make([]*sigilv1.Entry, 0, len(req.Entries))
	idx := make([]int, 0, len(req.Entries))
	clockNow := s.cfg.Clock.Now()
	now := clockNow.Unix()
	for i, e := range req.Entries {
		if err := registration.ValidateInput(s.td, e); err != nil {
			results[i] = &sigilv1.EntryResult{Status: errStatus(codes.InvalidArgument, err.Error()), Entry: e}
			continue
		}
		id, err := newEntryID(clockNow)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "entry id: %v", err)
		}
		// The request was decoded for this call alone, so its entries are
		// ours to fill in; the FSM stores its own copy decoded from the log.
		e.Id, e.CreatedAt, e.Revision, e.ModifyIndex = id, now, 0, 0
		toCreate = append(toCreate, e)
		idx = append(idx, i)
	}
	auditCreated := s.entryAuditor(ctx)
	err := s.applyInCommands(ctx, len(toCreate), func(lo, hi int) *storepb.Command {
		return &storepb.Command{Op: &storepb.Command_CreateEntries{CreateEntries: &storepb.CreateEntries{Entries: toCreate[lo:hi]}}}
	}, func(lo, hi int, res *storepb.CommandResult) {
		// One read snapshot per command: it was applied here before
		// apply returned.
		r := s.store.Read()
		for j, e := range toCreate[lo:hi] {
			st := resultAt(res, j)
			results[idx[lo+j]] = &sigilv1.EntryResult{Status: st, Entry: e}
			if st.Code == 0 {
				if stored, err := r.Entry(e.Id); err == nil {
					results[idx[lo+j]].Entry = stored
				}
				auditCreated("entry_created", "entry created", e)
			}
		}
	}, func(lo int, st *sigilv1.Status) {
		for j := lo; j < len(toCreate); j++ {
			results[idx[j]] = &sigilv1.EntryResult{Status: st, Entry: toCreate[j]}
		}
	})
	if err != nil {
		return nil, err
	}
	return &sigilv1.BatchCreateEntryResponse{Results: results}, nil
}

// BatchUpdateEntry validates every entry here and updates the valid ones
// with one Raft command per maxEntriesPerCommand entries, as
// BatchCreateEntry does.
func (a *adminAPI) BatchUpdateEntry(ctx context.Context, req *sigilv1.BatchUpdateEntryRequest) (*sigilv1.BatchUpdateEntryResponse, error) {
	s := a.s
	if len(req.Entries) > MaxAdminBatch {
		return nil, status.Errorf(codes.InvalidArgument, "batch of %d exceeds the limit of %d", len(req.Entries), MaxAdminBatch)
	}
	results := make([]*sigilv1.EntryResult, len(req.Entries))
	var toUpdate []*sigilv1.Entry
	var idx []int
	for i, in := range req.Entries {
		e := proto.Clone(in).(*sigilv1.Entry)
		if err := registration.CheckEntryID(e.Id); err != nil {
			results[i] = &sigilv1.EntryResult{Status: errStatus(codes.InvalidArgument, err.Error()), Entry: in}
			continue
		}
		if err := registration.ValidateInput(s.td, e); err != nil {
			results[i] = &sigilv1.EntryResult{Status: errStatus(codes.InvalidArgument, err.Error()), Entry: in}
			continue
		}
		toUpdate = append(toUpdate, e)
		idx = append(idx, i)
	}
	auditUpdated := s.entryAuditor(ctx)
	err := s.applyInCommands(ctx, len(toUpdate), func(lo, hi int) *storepb.Command {
		return &storepb.Command{Op: &storepb.Command_UpdateEntries{UpdateEntries: &storepb.UpdateEntries{Entries: toUpdate[lo:hi]}}}
	}, func(lo, hi int, res *storepb.CommandResult) {
		r := s.store.Read()
		for j, e := range toUpdate[lo:hi] {
			st := resultAt(res, j)
			results[idx[lo+j]] = &sigilv1.EntryResult{Status: st, Entry: e}
			if st.Code == 0 {
				if stored, err := r.Entry(e.Id); err == nil {
					results[idx[lo+j]].Entry = stored
				}
				auditUpdated("entry_updated", "entry updated", e)
			}
		}
	}, func(lo int, st *sigilv1.Status) {
		for j := lo; j < len(toUpdate); j++ {
			results[idx[j]] = &sigilv1.EntryResult{Status: st, Entry: toUpdate[j]}
		}
	})
	if err != nil {
		return nil, err
	}
	return &sigilv1.BatchUpdateEntryResponse{Results: results}, nil
}

// BatchDeleteEntry deletes the entries of well-formed ids with one Raft
// command per maxEntriesPerCommand ids, as BatchCreateEntry does.
func (a *adminAPI) BatchDeleteEntry(ctx context.Context, req *sigilv1.BatchDeleteEntryRequest) (*sigilv1.BatchDeleteEntryResponse, error) {
	s := a.s
	if len(req.Ids) > MaxAdminBatch {
		return nil, status.Errorf(codes.InvalidArgument, "batch of %d exceeds the limit of %d", len(req.Ids), MaxAdminBatch)
	}
	if len(req.Ids) == 0 {
		return &sigilv1.BatchDeleteEntryResponse{}, nil
	}
	// Ids that cannot exist are answered here and cost no Raft write.
	out := &sigilv1.BatchDeleteEntryResponse{Results: make([]*sigilv1.DeleteResult, len(req.Ids))}
	var toDelete []string
	var idx []int
	for i, id := range req.Ids {
		if err := registration.CheckEntryID(id); err != nil {
			out.Results[i] = &sigilv1.DeleteResult{Id: id, Status: errStatus(codes.InvalidArgument, err.Error())}
			continue
		}
		toDelete = append(toDelete, id)
		idx = append(idx, i)
	}
	if len(toDelete) == 0 {
		return out, nil
	}
	err := s.applyInCommands(ctx, len(toDelete), func(lo, hi int) *storepb.Command {
		return &storepb.Command{Op: &storepb.Command_DeleteEntries{DeleteEntries: &storepb.DeleteEntries{Ids: toDelete[lo:hi]}}}
	}, func(lo, hi int, res *storepb.CommandResult) {
		for j, id := range toDelete[lo:hi] {
			st := resultAt(res, j)
			out.Results[idx[lo+j]] = &sigilv1.DeleteResult{Id: id, Status: st}
			if st.Code == 0 {
				s.auditAdmin(ctx, audit.Event{What: "entry_deleted", Who: audit.Admin, Subject: id, Message: "entry deleted",
					Fields: []audit.Field{audit.String("entry_id", id)}})
			}
		}
	}, func(lo int, st *sigilv1.Status) {
		for j := lo; j < len(toDelete); j++ {
			out.Results[idx[j]] = &sigilv1.DeleteResult{Id: toDelete[j], Status: st}
		}
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func resultAt(res *storepb.CommandResult, i int) *sigilv1.Status {
	if res == nil || i >= len(res.Results) || res.Results[i] == nil {
		return okStatus()
	}
	return res.Results[i]
}

func (a *adminAPI) GetEntry(ctx context.Context, req *sigilv1.GetEntryRequest) (*sigilv1.Entry, error) {
	if err := registration.CheckEntryID(req.Id); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	e, err := a.s.store.Read().Entry(req.Id)
	if errors.Is(err, raftstore.ErrNotFound) {
		return nil, status.Errorf(codes.NotFound, "entry %q not found", req.Id)
	}
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return e, nil
}

func (a *adminAPI) ListEntries(ctx context.Context, req *sigilv1.ListEntriesRequest) (*sigilv1.ListEntriesResponse, error) {
	if len(req.Selectors) > registration.MaxSelectors {
		return nil, status.Errorf(codes.InvalidArgument, "filter has %d selectors, at most %d allowed", len(req.Selectors), registration.MaxSelectors)
	}
	for _, sel := range req.Selectors {
		if err := registration.ValidateSelectorInput(sel); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
	}
	for field, id := range map[string]string{"spiffe_id": req.SpiffeId, "parent_id": req.ParentId} {
		if err := registration.CheckSPIFFEIDLen(field, id); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
	}
	size := int(req.PageSize)
	if size <= 0 || size > 1000 {
		size = 1000
	}
	entries, next, err := a.s.store.Read().ListEntries(raftstore.EntryFilter{
		SPIFFEID:  req.SpiffeId,
		ParentID:  req.ParentId,
		Selectors: req.Selectors,
	}, req.PageToken, size)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return &sigilv1.ListEntriesResponse{Entries: entries, NextPageToken: next}, nil
}

func (a *adminAPI) CreateJoinToken(ctx context.Context, req *sigilv1.CreateJoinTokenRequest) (*sigilv1.CreateJoinTokenResponse, error) {
	s := a.s
	if req.Ttl < 0 {
		return nil, status.Error(codes.InvalidArgument, "ttl must not be negative")
	}
	ttl := s.cfg.JoinTokenTTL
	if req.Ttl > 0 {
		ttl = time.Duration(req.Ttl) * time.Second
	}
	if err := registration.CheckJoinTokenTTL(ttl); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	issuer, ok := s.joinTokenIssuer()
	if !ok {
		return nil, status.Error(codes.FailedPrecondition, `join tokens are off: this server has no node_attestor "join_token"`)
	}
	token, hash, id, err := issuer.NewJoinToken()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "generating token: %v", err)
	}
	expires := s.cfg.Clock.Now().Add(ttl)
	_, err = s.apply(ctx, &storepb.Command{Op: &storepb.Command_CreateJoinToken{CreateJoinToken: &storepb.CreateJoinToken{
		Token: &sigilv1.JoinToken{Hash: hash, ExpiresAt: expires.Unix()},
	}}})
	if err != nil {
		return nil, storeError(err)
	}
	agentID, err := registration.AgentID(s.td, issuer.Name(), id)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "agent id: %v", err)
	}
	s.auditAdmin(ctx, audit.Event{What: "join_token_created", Who: audit.Admin, Subject: agentID.String(), Message: "join token created",
		Fields: []audit.Field{audit.String("agent_id", agentID.String()), audit.Time("expires_at", expires)}})
	return &sigilv1.CreateJoinTokenResponse{Token: token, AgentId: agentID.String(), ExpiresAt: expires.Unix()}, nil
}

// GetBundle returns the own trust domain's bundle, or with trust_domain
// the federated bundle of that trust domain.
func (a *adminAPI) GetBundle(ctx context.Context, req *sigilv1.GetBundleRequest) (*sigilv1.Bundle, error) {
	return a.s.getBundle(req.TrustDomain)
}

// maxAgentFilterSelectors bounds the selectors of one ListAgents filter.
const maxAgentFilterSelectors = 64

// ListAgents lists attested (and banned) agents in SPIFFE ID order, one
// page at a time; with selectors, only the agents whose node selectors
// include all of them.
func (a *adminAPI) ListAgents(ctx context.Context, req *sigilv1.ListAgentsRequest) (*sigilv1.ListAgentsResponse, error) {
	size := int(req.PageSize)
	if size <= 0 || size > 1000 {
		size = 1000
	}
	if len(req.Selectors) > maxAgentFilterSelectors {
		return nil, status.Errorf(codes.InvalidArgument, "%d selectors in the filter exceed the limit of %d", len(req.Selectors), maxAgentFilterSelectors)
	}
	for _, sel := range req.Selectors {
		if err := registration.ValidateSelector(sel); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "agent filter: %v", err)
		}
	}
	nodes, next, err := a.s.store.Read().ListNodesMatching(req.Selectors, req.PageToken, size)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return &sigilv1.ListAgentsResponse{Agents: nodes, NextPageToken: next}, nil
}

func (a *adminAPI) checkAgentID(id string) error {
	if err := registration.CheckSPIFFEIDLen("agent SPIFFE ID", id); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	parsed, err := spiffeid.FromString(id)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "invalid agent SPIFFE ID %q: %v", id, err)
	}
	if parsed.TrustDomain() != a.s.td || !registration.IsAgentID(parsed) {
		return status.Errorf(codes.InvalidArgument, "%q is not an agent ID of trust domain %q", id, a.s.td)
	}
	return nil
}

func (a *adminAPI) GetAgent(ctx context.Context, req *sigilv1.GetAgentRequest) (*sigilv1.AttestedNode, error) {
	if err := a.checkAgentID(req.SpiffeId); err != nil {
		return nil, err
	}
	n, err := a.s.store.Read().Node(req.SpiffeId)
	if errors.Is(err, raftstore.ErrNotFound) {
		return nil, status.Errorf(codes.NotFound, "agent %q not found", req.SpiffeId)
	}
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return n, nil
}

func (a *adminAPI) EvictAgent(ctx context.Context, req *sigilv1.EvictAgentRequest) (*sigilv1.EvictAgentResponse, error) {
	if err := a.checkAgentID(req.SpiffeId); err != nil {
		return nil, err
	}
	// keep_banned: the store refuses to evict a banned agent, which
	// would let it attest again (an agent whose attestor can attest again
	// does so by itself).
	if _, err := a.s.apply(ctx, &storepb.Command{Op: &storepb.Command_EvictNode{EvictNode: &storepb.EvictNode{SpiffeId: req.SpiffeId, KeepBanned: true}}}); err != nil {
		return nil, storeError(err)
	}
	a.s.auditAdmin(ctx, audit.Event{What: "agent_evicted", Who: audit.Admin, Subject: req.SpiffeId, Message: "agent evicted",
		Fields: []audit.Field{audit.String("agent_id", req.SpiffeId)}})
	return &sigilv1.EvictAgentResponse{}, nil
}

func (a *adminAPI) BanAgent(ctx context.Context, req *sigilv1.BanAgentRequest) (*sigilv1.BanAgentResponse, error) {
	if err := a.checkAgentID(req.SpiffeId); err != nil {
		return nil, err
	}
	// ban_unknown: an agent that is not attested (evicted, or not yet
	// seen) is banned ahead of its next attestation.
	if _, err := a.s.apply(ctx, &storepb.Command{Op: &storepb.Command_BanNode{BanNode: &storepb.BanNode{SpiffeId: req.SpiffeId, BanUnknown: true}}}); err != nil {
		return nil, storeError(err)
	}
	a.s.auditAdmin(ctx, audit.Event{What: "agent_banned", Who: audit.Admin, Subject: req.SpiffeId, Message: "agent banned",
		Fields: []audit.Field{audit.String("agent_id", req.SpiffeId)}})
	return &sigilv1.BanAgentResponse{}, nil
}

// auditEntry records an entry written by the admin API.
func (s *Server) auditEntry(ctx context.Context, what, msg string, e *sigilv1.Entry) {
	s.entryAuditor(ctx)(what, msg, e)
}

// entryAuditor returns a function that emits the audit event of one entry
// operation of the admin call of ctx, exactly as auditAdmin would (the
// caller's Who and fields when ctx has one), with the caller looked up once
// for a whole batch and each event's fields allocated once.
func (s *Server) entryAuditor(ctx context.Context) func(what, msg string, e *sigilv1.Entry) {
	who := audit.Admin
	var callerFields []audit.Field
	if c, ok := adminCallerFrom(ctx); ok {
		who, callerFields = c.who(), c.fields()
	}
	return func(what, msg string, e *sigilv1.Entry) {
		fs := make([]audit.Field, 0, 4+len(callerFields))
		fs = append(fs, audit.String("entry_id", e.Id), audit.String("spiffe_id", e.SpiffeId), audit.String("parent_id", e.ParentId),
			audit.Strings("selectors", selectorStrings(e.Selectors)))
		s.audit(audit.Event{What: what, Who: who, Subject: e.Id, Message: msg, Fields: append(fs, callerFields...)})
	}
}

func selectorStrings(sels []*sigilv1.Selector) []string {
	out := make([]string, len(sels))
	for i, s := range sels {
		out[i] = registration.FormatSelector(s)
	}
	return out
}
