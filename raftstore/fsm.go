package raftstore

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/go-memdb"
	"github.com/hashicorp/raft"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/internal/storepb"
	"github.com/sigil-id/sigil/registration"
)

// maxEntryIDLen bounds entry ids.
const maxEntryIDLen = 255

// dbState is one generation of the in-memory database. Restore replaces the
// whole generation and closes abandon, which every Reader watches, so that
// watchers of the old database wake up.
type dbState struct {
	db      *memdb.MemDB
	abandon chan struct{}
}

// fsm is the raft.FSM. Raft calls Apply, Snapshot and Restore from one
// goroutine; readers run concurrently through memdb read transactions.
type fsm struct {
	td        spiffeid.TrustDomain
	serversID string
	log       *zap.Logger

	state     atomic.Pointer[dbState]
	lastIndex atomic.Uint64

	mu      sync.Mutex
	changed chan struct{}

	feed entryFeed // entry change feed (entryfeed.go)

	release *memRelease // memory returned after large deletions (release.go)
}

var _ raft.FSM = (*fsm)(nil)

func newFSM(td spiffeid.TrustDomain, log *zap.Logger) *fsm {
	if log == nil {
		log = zap.NewNop()
	}
	f := &fsm{
		td:        td,
		serversID: registration.ServersID(td).String(),
		log:       log,
		changed:   make(chan struct{}),
		release:   newMemRelease(),
	}
	f.state.Store(&dbState{db: newMemDB(f.serversID), abandon: make(chan struct{})})
	f.feed.trim.dropped = func(_, deletions int) { f.release.feedDropped(deletions) }
	return f
}

// changedCh returns the channel closed after the next applied change.
func (f *fsm) changedCh() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}

func (f *fsm) broadcast() {
	f.mu.Lock()
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

// Apply applies one committed log entry. It returns a *storepb.CommandResult
// on success (and for batch commands, whose items fail one by one) or a
// *CommandError when the whole command is refused.
func (f *fsm) Apply(l *raft.Log) interface{} {
	defer f.lastIndex.Store(l.Index)
	if l.Type != raft.LogCommand {
		return nil
	}
	var cmd storepb.Command
	if err := proto.Unmarshal(l.Data, &cmd); err != nil {
		f.log.Warn("refusing undecodable raft command", zap.Uint64("index", l.Index), zap.Error(err))
		return cmdErr(codes.InvalidArgument, "undecodable command: %v", err)
	}
	if cmd.Timestamp <= 0 {
		return cmdErr(codes.InvalidArgument, "command has no timestamp")
	}
	st := f.state.Load()
	txn := st.db.Txn(true)
	defer txn.Abort() // no-op after Commit
	a := &applier{f: f, txn: txn, index: l.Index, nowSec: cmd.Timestamp / 1e9}

	var res interface{}
	switch op := cmd.Op.(type) {
	case *storepb.Command_CreateEntries:
		res = a.batch(len(op.CreateEntries.GetEntries()), func(i int) *CommandError {
			return a.createEntry(op.CreateEntries.Entries[i])
		})
	case *storepb.Command_UpdateEntries:
		res = a.batch(len(op.UpdateEntries.GetEntries()), func(i int) *CommandError {
			return a.updateEntry(op.UpdateEntries.Entries[i])
		})
	case *storepb.Command_DeleteEntries:
		res = a.batch(len(op.DeleteEntries.GetIds()), func(i int) *CommandError {
			return a.deleteEntry(op.DeleteEntries.Ids[i])
		})
	case *storepb.Command_CreateJoinToken:
		res = a.single(a.createJoinToken(op.CreateJoinToken))
	case *storepb.Command_AttestNode:
		res = a.single(a.attestNode(op.AttestNode))
	case *storepb.Command_UpdateNode:
		res = a.single(a.updateNode(op.UpdateNode))
	case *storepb.Command_EvictNode:
		res = a.single(a.evictNode(op.EvictNode))
	case *storepb.Command_BanNode:
		res = a.single(a.banNode(op.BanNode))
	case *storepb.Command_PutX509Authority:
		res = a.single(a.putX509Authority(op.PutX509Authority))
	case *storepb.Command_PutJwtAuthority:
		res = a.single(a.putJWTAuthority(op.PutJwtAuthority))
	case *storepb.Command_RemoveAuthority:
		res = a.single(a.removeAuthority(op.RemoveAuthority))
	case *storepb.Command_PruneBundle:
		res = a.single(a.pruneBundle(op.PruneBundle))
	case *storepb.Command_TaintAuthority:
		res = a.single(a.taintAuthority(op.TaintAuthority))
	case *storepb.Command_RevokeAuthority:
		res = a.single(a.revokeAuthority(op.RevokeAuthority))
	case *storepb.Command_RetireServer:
		res = a.single(a.retireServer(op.RetireServer))
	case *storepb.Command_PutFederationRelationship:
		res = a.single(a.putFederationRelationship(op.PutFederationRelationship))
	case *storepb.Command_DeleteFederationRelationship:
		res = a.single(a.deleteFederationRelationship(op.DeleteFederationRelationship))
	case *storepb.Command_SetFederatedBundle:
		res = a.single(a.setFederatedBundle(op.SetFederatedBundle))
	case *storepb.Command_DeleteFederatedBundle:
		res = a.single(a.deleteFederatedBundle(op.DeleteFederatedBundle))
	case *storepb.Command_PutFederationStatus:
		res = a.single(a.putFederationStatus(op.PutFederationStatus))
	case *storepb.Command_RequestFederationRefresh:
		res = a.single(a.requestFederationRefresh(op.RequestFederationRefresh))
	case *storepb.Command_RecordPartnerFetch:
		res = a.single(a.recordPartnerFetch(op.RecordPartnerFetch))
	case *storepb.Command_UpdateAlerts:
		res = a.single(a.updateAlerts(op.UpdateAlerts))
	case *storepb.Command_SetUpstreamRoots:
		res = a.single(a.setUpstreamRoots(op.SetUpstreamRoots))
	default:
		return cmdErr(codes.InvalidArgument, "command has no known operation")
	}
	if a.changed {
		if a.ents != nil {
			if err := txn.Insert(tableEntrySet, a.ents); err != nil {
				return cmdErr(codes.Internal, "storing the entry table: %v", err)
			}
		}
		if err := txn.Insert(tableMeta, &metaRow{Key: metaIndexKey, Index: l.Index}); err != nil {
			// Cannot happen with a constant schema; refuse rather than panic.
			return cmdErr(codes.Internal, "recording index: %v", err)
		}
		f.recordEntryChanges(st, l.Index, a.entryChanges)
		txn.Commit()
		f.lastIndex.Store(l.Index)
		f.broadcast()
		f.release.entriesDeleted(a.deletedEntries)
	}
	return res
}

// applier applies the items of one command inside one write transaction.
type applier struct {
	f       *fsm
	txn     *memdb.Txn
	index   uint64
	nowSec  int64 // Command.Timestamp in unix seconds
	changed bool

	// The entry commands read and write the entry table: base is the
	// table before the command, ents the writable clone made at its
	// first entry write, which the commit stores in place of base.
	base *entryTable
	ents *entryTable
	// entryChanges are the command's entry changes in the change feed's
	// order: one per entry, at the place of its last write, with the
	// entry before its first write (as memdb's Txn.Changes collapses
	// them). entryChangeAt indexes them by id.
	entryChanges  []entryChange
	entryChangeAt map[string]int
	// items is the number of items of a batch command (zero for the
	// others): the entries it may write, which sizes entryChanges and
	// entryChangeAt at once instead of growing them write by write.
	items int

	deletedEntries int // entries the command deleted
}

// entryChange is one entry's change by one command: the records before
// and after, "" before for a creation, "" after for a deletion.
type entryChange struct {
	id            string
	before, after entryRec
}

// entries is the entry table as this command left it so far.
func (a *applier) entries() *entryTable {
	if a.ents != nil {
		return a.ents
	}
	if a.base == nil {
		a.base = loadEntryTable(a.txn, nil)
	}
	return a.base
}

// writeEntry stores e under id (e nil: deletes the entry with id, which
// must exist) in the command's writable entry table and records the
// change.
func (a *applier) writeEntry(id string, e *sigilv1.Entry) *CommandError {
	if a.ents == nil {
		a.ents = a.entries().clone()
	}
	var before, after entryRec
	if e != nil {
		var err error
		if after, before, err = a.ents.put(e); err != nil {
			return cmdErr(codes.Internal, "%v", err)
		}
	} else {
		before = a.ents.remove(id)
	}
	a.changed = true
	if a.entryChangeAt == nil {
		a.entryChangeAt = make(map[string]int, a.items)
		a.entryChanges = make([]entryChange, 0, a.items)
	}
	if i, ok := a.entryChangeAt[id]; ok {
		// Written before by this command: the change moves to this
		// write's place and keeps the first before.
		before = a.entryChanges[i].before
		a.entryChanges[i].id = "" // dropped when the feed reads them
	}
	a.entryChangeAt[id] = len(a.entryChanges)
	a.entryChanges = append(a.entryChanges, entryChange{id: id, before: before, after: after})
	return nil
}

func (a *applier) batch(n int, item func(i int) *CommandError) *storepb.CommandResult {
	a.items = n
	res := &storepb.CommandResult{Results: make([]*sigilv1.Status, n)}
	// One allocation for the n statuses, which live as long as the
	// result does.
	sts := make([]sigilv1.Status, n)
	for i := range n {
		st := &sts[i]
		if err := item(i); err != nil {
			st.Code, st.Message = int32(err.Code), err.Msg
		}
		res.Results[i] = st
	}
	return res
}

func (a *applier) single(err *CommandError) interface{} {
	if err != nil {
		a.changed = false // a refused command changes nothing
		return err
	}
	return &storepb.CommandResult{Results: []*sigilv1.Status{{}}}
}

func (a *applier) insert(table string, obj interface{}) *CommandError {
	if err := a.txn.Insert(table, obj); err != nil {
		return cmdErr(codes.Internal, "storing in %s: %v", table, err)
	}
	a.changed = true
	return nil
}

func (a *applier) delete(table string, obj interface{}) *CommandError {
	if err := a.txn.Delete(table, obj); err != nil {
		return cmdErr(codes.Internal, "deleting from %s: %v", table, err)
	}
	a.changed = true
	return nil
}

// entryByID returns the record of the entry with this id, "" if none.
func (a *applier) entryByID(id string) entryRec {
	e, _ := a.entries().get(id)
	return e
}

func (a *applier) node(id string) *sigilv1.AttestedNode {
	raw, err := a.txn.First(tableNodes, indexID, id)
	if err != nil || raw == nil {
		return nil
	}
	return raw.(*sigilv1.AttestedNode)
}

func (a *applier) joinToken(hash string) *sigilv1.JoinToken {
	raw, err := a.txn.First(tableJoinTokens, indexID, hash)
	if err != nil || raw == nil {
		return nil
	}
	return raw.(*sigilv1.JoinToken)
}

func (a *applier) createEntry(e *sigilv1.Entry) *CommandError {
	if err := a.f.validateEntry(e); err != nil {
		return err
	}
	if err := a.checkFederatesWith(e, nil); err != nil {
		return err
	}
	if a.entryByID(e.Id) != "" {
		return cmdErr(codes.AlreadyExists, "entry %q already exists", e.Id)
	}
	if other := a.entries().duplicate(e); other != "" {
		return cmdErr(codes.AlreadyExists, "entry %q has the same spiffe_id, parent_id and selectors", other)
	}
	// e was decoded from this log entry alone, so the FSM owns it.
	e.Revision = 0
	e.ModifyIndex = a.index
	if e.CreatedAt == 0 {
		e.CreatedAt = a.nowSec
	}
	return a.writeEntry(e.Id, e)
}

func (a *applier) updateEntry(e *sigilv1.Entry) *CommandError {
	if err := a.f.validateEntry(e); err != nil {
		return err
	}
	rec := a.entryByID(e.Id)
	if rec == "" {
		return cmdErr(codes.NotFound, "entry %q not found", e.Id)
	}
	old := rec.entry()
	// Only the trust domains the update adds must be federated now: an
	// entry whose relationship was deleted can still be updated.
	if err := a.checkFederatesWith(e, old.FederatesWith); err != nil {
		return err
	}
	if other := a.entries().duplicate(e); other != "" {
		return cmdErr(codes.AlreadyExists, "entry %q has the same spiffe_id, parent_id and selectors", other)
	}
	e.CreatedAt = old.CreatedAt
	e.Revision = old.Revision + 1
	e.ModifyIndex = a.index
	return a.writeEntry(e.Id, e)
}

func (a *applier) deleteEntry(id string) *CommandError {
	if id == "" {
		return cmdErr(codes.InvalidArgument, "entry id is empty")
	}
	if a.entryByID(id) == "" {
		return cmdErr(codes.NotFound, "entry %q not found", id)
	}
	if err := a.writeEntry(id, nil); err != nil {
		return err
	}
	a.deletedEntries++
	return nil
}

// expireJoinTokens deletes every join token expired at the command time.
func (a *applier) expireJoinTokens() *CommandError {
	it, err := a.txn.LowerBound(tableJoinTokens, indexExpires, int64(math.MinInt64))
	if err != nil {
		return cmdErr(codes.Internal, "scanning join tokens: %v", err)
	}
	var expired []*sigilv1.JoinToken
	for raw := it.Next(); raw != nil; raw = it.Next() {
		t := raw.(*sigilv1.JoinToken)
		if t.ExpiresAt > a.nowSec {
			break
		}
		expired = append(expired, t)
	}
	for _, t := range expired {
		if err := a.delete(tableJoinTokens, t); err != nil {
			return err
		}
	}
	return nil
}

func (a *applier) createJoinToken(c *storepb.CreateJoinToken) *CommandError {
	t := c.GetToken()
	if t == nil {
		return cmdErr(codes.InvalidArgument, "join token is missing")
	}
	if err := validateTokenHash(t.Hash); err != nil {
		return err
	}
	if t.ExpiresAt <= a.nowSec {
		return cmdErr(codes.InvalidArgument, "join token expires at %d, not after the command time %d", t.ExpiresAt, a.nowSec)
	}
	if a.joinToken(t.Hash) != nil {
		return cmdErr(codes.AlreadyExists, "join token already exists")
	}
	if err := a.expireJoinTokens(); err != nil {
		return err
	}
	return a.insert(tableJoinTokens, t)
}

func (a *applier) attestNode(c *storepb.AttestNode) *CommandError {
	n := c.GetNode()
	if err := a.f.validateNode(n); err != nil {
		return err
	}
	if len(c.GetConsume()) > MaxConsume {
		return cmdErr(codes.InvalidArgument, "the command consumes %d credentials, more than %d", len(c.GetConsume()), MaxConsume)
	}
	var useOnce []*storepb.Credential
	for _, cred := range c.GetConsume() {
		if cred.GetKind() != credentialJoinToken {
			useOnce = append(useOnce, cred)
		}
	}
	tokens, cerr := a.consumedJoinTokens(c)
	if cerr != nil {
		return cerr
	}
	if err := a.checkUseOnce(useOnce); err != nil {
		return err
	}
	old := a.node(n.SpiffeId)
	if old != nil && old.Banned {
		return cmdErr(codes.PermissionDenied, "node %q is banned", n.SpiffeId)
	}
	if old != nil && c.GetFirstAttestation() {
		return cmdErr(codes.AlreadyExists, "node %q is already attested", n.SpiffeId)
	}
	// All checks passed: from here on the command succeeds.
	for _, token := range tokens {
		if err := a.delete(tableJoinTokens, token); err != nil {
			return err
		}
	}
	if err := a.expireJoinTokens(); err != nil {
		return err
	}
	if err := a.pruneUsedCredentials(usedCredentialPrunePerCommand); err != nil {
		return err
	}
	if err := a.recordUseOnce(useOnce, n.SpiffeId); err != nil {
		return err
	}
	n.Banned = false
	switch {
	case old != nil:
		n.CreatedAt = old.CreatedAt
	case n.CreatedAt == 0:
		n.CreatedAt = a.nowSec
	}
	n.ModifyIndex = a.index
	return a.insert(tableNodes, n)
}

// consumedJoinTokens returns the join tokens an AttestNode command
// consumes: the one of join_token_hash (the form every version writes)
// and those of consume whose kind is "join_token" (the other kinds are
// use-once records: checkUseOnce). Each must exist and be unexpired at
// the command time; a command that names a token twice is refused.
func (a *applier) consumedJoinTokens(c *storepb.AttestNode) ([]*sigilv1.JoinToken, *CommandError) {
	var hashes []string
	if c.JoinTokenHash != "" {
		hashes = append(hashes, c.JoinTokenHash)
	}
	for _, cred := range c.GetConsume() {
		if cred.GetKind() != credentialJoinToken {
			continue
		}
		hashes = append(hashes, cred.GetId())
	}
	tokens := make([]*sigilv1.JoinToken, 0, len(hashes))
	for i, h := range hashes {
		if err := validateTokenHash(h); err != nil {
			return nil, err
		}
		if slices.Contains(hashes[:i], h) {
			return nil, cmdErr(codes.InvalidArgument, "the command consumes one join token twice")
		}
		token := a.joinToken(h)
		if token == nil || token.ExpiresAt <= a.nowSec {
			return nil, cmdErr(codes.PermissionDenied, "join token is invalid or expired")
		}
		tokens = append(tokens, token)
	}
	return tokens, nil
}

// credentialJoinToken is the storepb.Credential kind of a join token
// (node.CredentialJoinToken).
const credentialJoinToken = "join_token"

func (a *applier) updateNode(c *storepb.UpdateNode) *CommandError {
	if c.GetSpiffeId() == "" {
		return cmdErr(codes.InvalidArgument, "node spiffe_id is empty")
	}
	old := a.node(c.SpiffeId)
	if old == nil {
		return cmdErr(codes.NotFound, "node %q not found", c.SpiffeId)
	}
	if old.Banned {
		return cmdErr(codes.PermissionDenied, "node %q is banned", c.SpiffeId)
	}
	n := proto.Clone(old).(*sigilv1.AttestedNode)
	n.CertSerial = c.CertSerial
	n.CertNotAfter = c.CertNotAfter
	// A renewal is when the agent was last seen: the command's time,
	// the same on every server (and for commands written before the
	// field existed, which set nothing else differently).
	n.LastSeen = a.nowSec
	n.ModifyIndex = a.index
	return a.insert(tableNodes, n)
}

func (a *applier) evictNode(c *storepb.EvictNode) *CommandError {
	if c.GetSpiffeId() == "" {
		return cmdErr(codes.InvalidArgument, "node spiffe_id is empty")
	}
	old := a.node(c.SpiffeId)
	if old == nil {
		return cmdErr(codes.NotFound, "node %q not found", c.SpiffeId)
	}
	if old.Banned && c.KeepBanned {
		return cmdErr(codes.FailedPrecondition, "node %q is banned; evicting it would let it attest again, so a banned node stays banned", c.SpiffeId)
	}
	return a.delete(tableNodes, old)
}

func (a *applier) banNode(c *storepb.BanNode) *CommandError {
	if c.GetSpiffeId() == "" {
		return cmdErr(codes.InvalidArgument, "node spiffe_id is empty")
	}
	old := a.node(c.SpiffeId)
	if old == nil && c.BanUnknown {
		// An ID that is not attested is banned ahead of its next
		// attestation: a record with nothing but the ban.
		// Its attestation type is the one its ID names.
		typ, _, _ := strings.Cut(strings.TrimPrefix(c.SpiffeId, "spiffe://"+a.f.td.Name()+"/sigil/agent/"), "/")
		n := &sigilv1.AttestedNode{SpiffeId: c.SpiffeId, AttestationType: typ, Banned: true, CreatedAt: a.nowSec, ModifyIndex: a.index}
		if err := a.f.validateNode(n); err != nil {
			return err
		}
		return a.insert(tableNodes, n)
	}
	if old == nil {
		return cmdErr(codes.NotFound, "node %q not found", c.SpiffeId)
	}
	if old.Banned {
		return nil
	}
	n := proto.Clone(old).(*sigilv1.AttestedNode)
	n.Banned = true
	n.ModifyIndex = a.index
	return a.insert(tableNodes, n)
}

func (a *applier) putX509Authority(c *storepb.PutX509Authority) *CommandError {
	if c.GetTrustDomain() != a.f.td.Name() {
		return cmdErr(codes.InvalidArgument, "trust domain %q is not this cluster's trust domain %q", c.GetTrustDomain(), a.f.td.Name())
	}
	in := c.GetAuthority()
	if in == nil {
		return cmdErr(codes.InvalidArgument, "authority is missing")
	}
	if in.ServerId == "" {
		return cmdErr(codes.InvalidArgument, "authority server_id is empty")
	}
	if in.Upstream {
		return cmdErr(codes.InvalidArgument, "upstream roots are recorded with SetUpstreamRoots, not as a server's authority")
	}
	notAfter, err := parseCACert(in.Certificate)
	if err != nil {
		return err
	}
	if err := a.checkPut(AuthorityKindX509, x509IDOf(in.Certificate), in.ServerId); err != nil {
		return err
	}
	auth := &sigilv1.X509Authority{
		Certificate:  in.Certificate,
		ServerId:     in.ServerId,
		NotAfter:     notAfter,
		Tainted:      in.Tainted,
		Intermediate: in.Intermediate,
	}
	var b *sigilv1.Bundle
	if raw, err := a.txn.First(tableBundles, indexID, c.TrustDomain); err == nil && raw != nil {
		b = proto.Clone(raw.(*sigilv1.Bundle)).(*sigilv1.Bundle)
	} else {
		b = &sigilv1.Bundle{TrustDomain: c.TrustDomain}
	}
	replaced := false
	for i, old := range b.X509Authorities {
		if old.ServerId == auth.ServerId && bytes.Equal(old.Certificate, auth.Certificate) {
			// A taint is never undone: the server that holds the key
			// may not have heard of a cluster-wide taint yet.
			auth.Tainted = auth.Tainted || old.Tainted
			b.X509Authorities[i] = auth
			replaced = true
			break
		}
	}
	if !replaced {
		b.X509Authorities = append(b.X509Authorities, auth)
	}
	sortAuthorities(b.X509Authorities)
	b.SequenceNumber++
	return a.insert(tableBundles, b)
}

func sortAuthorities(as []*sigilv1.X509Authority) {
	sort.SliceStable(as, func(i, j int) bool {
		x, y := as[i], as[j]
		if x.NotAfter != y.NotAfter {
			return x.NotAfter < y.NotAfter
		}
		if c := bytes.Compare(x.Certificate, y.Certificate); c != 0 {
			return c < 0
		}
		return x.ServerId < y.ServerId
	})
}

// parseCACert checks that der is a CA certificate and returns its expiry.
func parseCACert(der []byte) (int64, *CommandError) {
	if len(der) == 0 {
		return 0, cmdErr(codes.InvalidArgument, "authority certificate is empty")
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return 0, cmdErr(codes.InvalidArgument, "authority certificate does not parse: %v", err)
	}
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return 0, cmdErr(codes.InvalidArgument, "authority certificate is not a CA certificate")
	}
	return cert.NotAfter.Unix(), nil
}

func (f *fsm) validateEntry(e *sigilv1.Entry) *CommandError {
	if e == nil {
		return cmdErr(codes.InvalidArgument, "entry is missing")
	}
	if err := validateEntryID(e.Id); err != nil {
		return err
	}
	if err := registration.Validate(f.td, e); err != nil {
		return cmdErr(codes.InvalidArgument, "entry %q: %v", e.Id, err)
	}
	// Entries written before federation have no federates_with, so this
	// check applies the same to every command ever committed.
	if err := registration.CheckFederatesWith(f.td, e.FederatesWith); err != nil {
		return cmdErr(codes.InvalidArgument, "entry %q: %v", e.Id, err)
	}
	return nil
}

func validateEntryID(id string) *CommandError {
	if id == "" {
		return cmdErr(codes.InvalidArgument, "entry id is empty")
	}
	if len(id) > maxEntryIDLen {
		return cmdErr(codes.InvalidArgument, "entry id is longer than %d bytes", maxEntryIDLen)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c < 0x20 || c == 0x7f {
			return cmdErr(codes.InvalidArgument, "entry id %q has control characters", id)
		}
	}
	return nil
}

func (f *fsm) validateNode(n *sigilv1.AttestedNode) *CommandError {
	if n == nil {
		return cmdErr(codes.InvalidArgument, "node is missing")
	}
	id, err := spiffeid.FromString(n.SpiffeId)
	if err != nil {
		return cmdErr(codes.InvalidArgument, "invalid node spiffe_id %q: %v", n.SpiffeId, err)
	}
	if id.TrustDomain() != f.td {
		return cmdErr(codes.InvalidArgument, "node spiffe_id %q is not in trust domain %q", n.SpiffeId, f.td)
	}
	if !registration.IsAgentID(id) {
		return cmdErr(codes.InvalidArgument, "node spiffe_id %q is not an agent ID", n.SpiffeId)
	}
	if n.AttestationType == "" {
		return cmdErr(codes.InvalidArgument, "node %q has no attestation_type", n.SpiffeId)
	}
	for _, s := range n.Selectors {
		if err := registration.ValidateSelector(s); err != nil {
			return cmdErr(codes.InvalidArgument, "node %q: %v", n.SpiffeId, err)
		}
	}
	return nil
}

func validateTokenHash(h string) *CommandError {
	if len(h) != 64 {
		return cmdErr(codes.InvalidArgument, "join token hash must be 64 lowercase hex characters, got %d characters", len(h))
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')) {
			return cmdErr(codes.InvalidArgument, "join token hash must be 64 lowercase hex characters")
		}
	}
	return nil
}

// errorf formats a plain error for snapshot validation.
func errorf(format string, args ...any) error {
	return fmt.Errorf("raftstore: "+format, args...)
}
