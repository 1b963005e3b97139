package raftstore

import (
	"encoding/base64"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/hashicorp/go-memdb"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/internal/storepb"
	"github.com/sigil-id/sigil/registration"
)

// DefaultPageSize is the page size of ListEntries and ListNodes when the
// caller asks for none.
const DefaultPageSize = 500

// Reader is a consistent, read-only view of the state at one Raft index.
// It also collects, in its WatchSet, the watch channels of every query made
// through it. A Reader is not safe for concurrent use; the values it returns
// are shared and must not be modified.
type Reader struct {
	txn *memdb.Txn
	ws  memdb.WatchSet
	td  spiffeid.TrustDomain

	// ents is the entry table of txn, read at the first entry query;
	// entsWatched records that its row's watch channel is in ws.
	ents        *entryTable
	entsWatched bool
}

// entries returns the entry table of this view and watches it: every
// entry query watches the whole table, so the WatchSet fires on any entry
// change.
func (r *Reader) entries() *entryTable {
	if !r.entsWatched {
		r.ents, r.entsWatched = loadEntryTable(r.txn, r.ws), true
	}
	return r.ents
}

// entriesUnwatched returns the entry table of this view without watching
// it.
func (r *Reader) entriesUnwatched() *entryTable {
	if r.ents == nil {
		r.ents = loadEntryTable(r.txn, nil)
	}
	return r.ents
}

func (f *fsm) reader() *Reader {
	st := f.state.Load()
	ws := memdb.NewWatchSet()
	ws.Add(st.abandon)
	return &Reader{txn: st.db.Txn(false), ws: ws, td: f.td}
}

// Index is the Raft index of the last change this view reflects. It adds
// nothing to the WatchSet (it would fire on every write).
func (r *Reader) Index() uint64 {
	raw, err := r.txn.First(tableMeta, indexID, metaIndexKey)
	if err != nil || raw == nil {
		return 0
	}
	return raw.(*metaRow).Index
}

// WatchSet holds the watch channels of every query run through this Reader
// (and one that fires if the whole state is replaced by a snapshot). It
// fires when the result of any of those queries may have changed: always
// when one did, and sometimes spuriously, since a lookup that found nothing
// watches the nearest node of the radix tree, which other writes to the
// same index can touch, and every entry query watches the whole entry
// table (any entry change fires it). Re-read after it fires.
func (r *Reader) WatchSet() memdb.WatchSet { return r.ws }

func (r *Reader) first(table, index string, arg string) interface{} {
	ch, raw, err := r.txn.FirstWatch(table, index, arg)
	if err != nil {
		return nil
	}
	r.ws.Add(ch)
	return raw
}

// collect returns the entries each gives, in its order, decoded.
func collect(each func(string, func(entryRec) bool), arg string) []*sigilv1.Entry {
	var out []*sigilv1.Entry
	each(arg, func(e entryRec) bool {
		out = append(out, e.entry())
		return true
	})
	return out
}

// Entry returns the entry with the given id, or ErrNotFound.
func (r *Reader) Entry(id string) (*sigilv1.Entry, error) {
	e, ok := r.entries().get(id)
	if !ok {
		return nil, fmt.Errorf("entry %q: %w", id, ErrNotFound)
	}
	return e.entry(), nil
}

// EntriesBySPIFFEID returns the entries with this spiffe_id, in id order.
func (r *Reader) EntriesBySPIFFEID(id string) []*sigilv1.Entry {
	return collect(r.entries().eachBySPIFFEID, id)
}

// EntriesByParentID returns the entries with this parent_id, in id order.
func (r *Reader) EntriesByParentID(id string) []*sigilv1.Entry {
	return collect(r.entries().eachByParentID, id)
}

// EntriesBySelector returns the entries having this selector (among
// others), in id order. Only node aliases are indexed by selector, so this
// scans every entry.
func (r *Reader) EntriesBySelector(sel *sigilv1.Selector) []*sigilv1.Entry {
	if sel == nil {
		return nil
	}
	out, _, _ := r.listAllEntries(EntryFilter{Selectors: []*sigilv1.Selector{sel}}, "", math.MaxInt)
	return out
}

// EntryFilter narrows ListEntries. Empty fields match everything; an entry
// matches Selectors when it has all of them (and possibly more).
type EntryFilter struct {
	SPIFFEID  string
	ParentID  string
	Selectors []*sigilv1.Selector
}

// matches reports whether the entry of e matches f, read in place.
func (f EntryFilter) matches(e entryRec) bool {
	if f.SPIFFEID != "" && e.spiffeID() != f.SPIFFEID {
		return false
	}
	if f.ParentID != "" && e.parentID() != f.ParentID {
		return false
	}
	for _, want := range f.Selectors {
		found := false
		e.eachSelector(func(typ, value string) bool {
			found = typ == want.GetType() && value == want.GetValue()
			return !found
		})
		if !found {
			return false
		}
	}
	return true
}

const pageTokenPrefix = "v1:"

func encodePageToken(lastID string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(pageTokenPrefix + lastID))
}

func decodePageToken(tok string) (string, error) {
	if tok == "" {
		return "", nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || !strings.HasPrefix(string(raw), pageTokenPrefix) || len(raw) == len(pageTokenPrefix) {
		return "", fmt.Errorf("raftstore: malformed page token %q", tok)
	}
	return string(raw[len(pageTokenPrefix):]), nil
}

// ListEntries returns one page of the entries matching f, in id order.
// pageSize <= 0 means DefaultPageSize. next is the token of the following
// page, "" after the last one. A malformed pageToken is an error.
func (r *Reader) ListEntries(f EntryFilter, pageToken string, pageSize int) ([]*sigilv1.Entry, string, error) {
	after, err := decodePageToken(pageToken)
	if err != nil {
		return nil, "", err
	}
	if pageSize <= 0 {
		pageSize = DefaultPageSize
	}
	for _, s := range f.Selectors {
		if s == nil {
			return nil, "", fmt.Errorf("raftstore: entry filter has a nil selector")
		}
	}

	// Candidates from the most selective index the filter allows, in id
	// order from after. Only node aliases are indexed by selector, so a
	// filter of selectors alone scans the table in id order.
	ents := r.entries()
	var out []*sigilv1.Entry
	next := ""
	page := func(e entryRec) bool {
		if !f.matches(e) {
			return true
		}
		if len(out) == pageSize {
			next = encodePageToken(out[len(out)-1].Id)
			return false
		}
		out = append(out, e.entry())
		return true
	}
	switch {
	case f.SPIFFEID != "":
		ents.eachBySPIFFEIDFrom(f.SPIFFEID, after, page)
	case f.ParentID != "":
		ents.eachByParentIDFrom(f.ParentID, after, page)
	default:
		ents.eachAfter(after, page)
	}
	return out, next, nil
}

// listAllEntries returns one page of the entries matching f, scanning the
// table in id order from after.
func (r *Reader) listAllEntries(f EntryFilter, after string, pageSize int) ([]*sigilv1.Entry, string, error) {
	var out []*sigilv1.Entry
	next := ""
	r.entries().eachAfter(after, func(e entryRec) bool {
		if !f.matches(e) {
			return true
		}
		if len(out) == pageSize {
			next = encodePageToken(out[len(out)-1].Id)
			return false
		}
		out = append(out, e.entry())
		return true
	})
	return out, next, nil
}

// AuthorizedEntries returns, in id order, the entries the agent agentID may
// get SVIDs for: the entries parented to the agent or to one of its node
// aliases (entries parented to the servers ID whose selectors are all among
// the node's selectors), and, transitively, the entries parented to any of
// those. Alias entries themselves are not returned. It fails with
// ErrNotFound for an unknown agent and with an error wrapping ErrBanned for
// a banned one.
func (r *Reader) AuthorizedEntries(agentID string) ([]*sigilv1.Entry, error) {
	recs, err := r.authorizedRecs(agentID)
	if err != nil {
		return nil, err
	}
	out := make([]*sigilv1.Entry, len(recs))
	for i, rec := range recs {
		out[i] = rec.entry()
	}
	return out, nil
}

// AuthorizedSyncEntries is AuthorizedEntries as a sync stream reads them:
// the store's records, nothing decoded.
func (r *Reader) AuthorizedSyncEntries(agentID string) ([]SyncEntry, error) {
	recs, err := r.authorizedRecs(agentID)
	if err != nil {
		return nil, err
	}
	out := make([]SyncEntry, len(recs))
	for i, rec := range recs {
		out[i] = SyncEntry{rec}
	}
	return out, nil
}

func (r *Reader) authorizedRecs(agentID string) ([]entryRec, error) {
	node, err := r.Node(agentID)
	if err != nil {
		return nil, err
	}
	if node.Banned {
		return nil, fmt.Errorf("agent %q: %w", agentID, ErrBanned)
	}
	serversID := registration.ServersID(r.td).String()

	visited := map[string]bool{agentID: true}
	queue := []string{agentID}

	// Node aliases: candidates come from the alias selector index, one
	// lookup per node selector. (The watch is on the whole entry table:
	// any entry change, a new alias among them, fires it.)
	ents := r.entries()
	nodeSels := registration.NewSelectorSet(node.Selectors)
	for _, s := range node.Selectors {
		ents.eachAlias(registration.FormatSelector(s), func(row entryRec) bool {
			id := row.spiffeID()
			if row.parentID() != serversID || visited[id] {
				return true
			}
			if row.selectorsIn(nodeSels) {
				visited[id] = true
				queue = append(queue, id)
			}
			return true
		})
	}

	// The ids and SPIFFE IDs in these maps share the records' memory,
	// for the length of this call.
	seen := make(map[string]bool)
	var recs []entryRec
	for len(queue) > 0 {
		parent := queue[0]
		queue = queue[1:]
		ents.eachByParentID(parent, func(row entryRec) bool {
			id := row.id()
			if seen[id] {
				return true
			}
			seen[id] = true
			recs = append(recs, row)
			if sid := row.spiffeID(); !visited[sid] {
				visited[sid] = true
				queue = append(queue, sid)
			}
			return true
		})
	}
	slices.SortFunc(recs, func(a, b entryRec) int { return strings.Compare(a.id(), b.id()) })
	return recs, nil
}

// Node returns the attested node with this SPIFFE ID, or ErrNotFound.
func (r *Reader) Node(spiffeID string) (*sigilv1.AttestedNode, error) {
	raw := r.first(tableNodes, indexID, spiffeID)
	if raw == nil {
		return nil, fmt.Errorf("node %q: %w", spiffeID, ErrNotFound)
	}
	return raw.(*sigilv1.AttestedNode), nil
}

// ListNodes returns one page of attested nodes in SPIFFE ID order, with
// the same paging rules as ListEntries.
func (r *Reader) ListNodes(pageToken string, pageSize int) ([]*sigilv1.AttestedNode, string, error) {
	return r.ListNodesMatching(nil, pageToken, pageSize)
}

// ListNodesMatching is ListNodes over the nodes whose selectors include
// all of selectors (every node if it is empty).
func (r *Reader) ListNodesMatching(selectors []*sigilv1.Selector, pageToken string, pageSize int) ([]*sigilv1.AttestedNode, string, error) {
	after, err := decodePageToken(pageToken)
	if err != nil {
		return nil, "", err
	}
	if pageSize <= 0 {
		pageSize = DefaultPageSize
	}
	want := make([]string, len(selectors))
	for i, s := range selectors {
		if s == nil {
			return nil, "", fmt.Errorf("raftstore: node filter has a nil selector")
		}
		want[i] = registration.FormatSelector(s)
	}
	all, err := r.txn.Get(tableNodes, indexID+"_prefix", "")
	if err != nil {
		return nil, "", fmt.Errorf("raftstore: listing nodes: %w", err)
	}
	r.ws.Add(all.WatchCh())
	it, err := r.txn.LowerBound(tableNodes, indexID, after)
	if err != nil {
		return nil, "", fmt.Errorf("raftstore: listing nodes: %w", err)
	}
	var out []*sigilv1.AttestedNode
	for raw := it.Next(); raw != nil; raw = it.Next() {
		n := raw.(*sigilv1.AttestedNode)
		if after != "" && n.SpiffeId == after {
			continue
		}
		if !nodeHasSelectors(n, want) {
			continue
		}
		if len(out) == pageSize {
			return out, encodePageToken(out[len(out)-1].SpiffeId), nil
		}
		out = append(out, n)
	}
	return out, "", nil
}

// nodeHasSelectors reports whether every selector in want (formatted
// with registration.FormatSelector) is among n's selectors.
func nodeHasSelectors(n *sigilv1.AttestedNode, want []string) bool {
	if len(want) == 0 {
		return true
	}
	have := make(map[string]bool, len(n.Selectors))
	for _, s := range n.Selectors {
		have[registration.FormatSelector(s)] = true
	}
	for _, w := range want {
		if !have[w] {
			return false
		}
	}
	return true
}

// JoinToken returns the join token with this hash, or ErrNotFound. An
// expired token may still be returned until a later command removes it;
// callers compare ExpiresAt with the time themselves.
func (r *Reader) JoinToken(hash string) (*sigilv1.JoinToken, error) {
	raw := r.first(tableJoinTokens, indexID, hash)
	if raw == nil {
		return nil, fmt.Errorf("join token: %w", ErrNotFound)
	}
	return raw.(*sigilv1.JoinToken), nil
}

// Bundle returns the trust bundle of trustDomain, or ErrNotFound: the
// bundle agents and workloads trust, without the servers' cluster identity
// CAs (see PeerBundle). The servers' CA certificates that an upstream
// authority signed are moved from x509_authorities to x509_intermediates:
// the trust anchors are the upstream roots (and any self-signed server
// CA).
func (r *Reader) Bundle(trustDomain string) (*sigilv1.Bundle, error) {
	pb, err := r.PeerBundle(trustDomain)
	if err != nil {
		return nil, err
	}
	n := 0
	for _, a := range pb.X509Authorities {
		if !strings.HasPrefix(a.ServerId, IdentityAuthorityPrefix) && !a.Intermediate {
			n++
		}
	}
	if n == len(pb.X509Authorities) {
		return pb, nil
	}
	out := &sigilv1.Bundle{
		TrustDomain:     pb.TrustDomain,
		X509Authorities: make([]*sigilv1.X509Authority, 0, n),
		JwtAuthorities:  pb.JwtAuthorities,
		RefreshHint:     pb.RefreshHint,
		SequenceNumber:  pb.SequenceNumber,
	}
	for _, a := range pb.X509Authorities {
		switch {
		case strings.HasPrefix(a.ServerId, IdentityAuthorityPrefix):
		case a.Intermediate:
			out.X509Intermediates = append(out.X509Intermediates, a)
		default:
			out.X509Authorities = append(out.X509Authorities, a)
		}
	}
	return out, nil
}

// PeerBundle returns the whole bundle row of trustDomain, or ErrNotFound:
// the bundle plus the servers' cluster identity CAs (server_id
// "cluster/<node>"), which authenticate servers to each other on the
// cluster port and nothing else.
func (r *Reader) PeerBundle(trustDomain string) (*sigilv1.Bundle, error) {
	raw := r.first(tableBundles, indexID, trustDomain)
	if raw == nil {
		return nil, fmt.Errorf("bundle %q: %w", trustDomain, ErrNotFound)
	}
	return raw.(*sigilv1.Bundle), nil
}

// RevokedAuthorities returns the authorities revoked and not yet expired,
// in kind and ID order.
func (r *Reader) RevokedAuthorities() []*storepb.RevokedAuthority {
	it, err := r.txn.Get(tableRevoked, indexID+"_prefix", "")
	if err != nil {
		return nil
	}
	r.ws.Add(it.WatchCh())
	var out []*storepb.RevokedAuthority
	for raw := it.Next(); raw != nil; raw = it.Next() {
		out = append(out, raw.(*revokedRow).A)
	}
	return out
}

// IsRevoked reports whether the authority kind ("x509" or "jwt") id was
// revoked.
func (r *Reader) IsRevoked(kind, id string) bool {
	return r.first(tableRevoked, indexID, revokedKey(kind, id)) != nil
}

// RemovedServers returns the servers whose authorities are being retired
// (tainted, not yet revoked), in name order.
func (r *Reader) RemovedServers() []*storepb.RemovedServer {
	it, err := r.txn.Get(tableRemovedServers, indexID+"_prefix", "")
	if err != nil {
		return nil
	}
	r.ws.Add(it.WatchCh())
	var out []*storepb.RemovedServer
	for raw := it.Next(); raw != nil; raw = it.Next() {
		out = append(out, raw.(*storepb.RemovedServer))
	}
	return out
}

// all returns every row of table in trust domain (id) order and watches
// the whole table.
func (r *Reader) all(table string) []interface{} {
	it, err := r.txn.Get(table, indexID+"_prefix", "")
	if err != nil {
		return nil
	}
	r.ws.Add(it.WatchCh())
	var out []interface{}
	for raw := it.Next(); raw != nil; raw = it.Next() {
		out = append(out, raw)
	}
	return out
}

// FederationRelationship returns the federation relationship with the
// foreign trust domain td, or an error wrapping ErrNotFound. The lookup is
// watched, also when there is none.
func (r *Reader) FederationRelationship(td string) (*sigilv1.FederationRelationship, error) {
	raw := r.first(tableFederationRelationships, indexID, td)
	if raw == nil {
		return nil, fmt.Errorf("federation relationship %q: %w", td, ErrNotFound)
	}
	return raw.(*sigilv1.FederationRelationship), nil
}

// FederationRelationships returns every federation relationship, in
// trust domain order. The list is watched.
func (r *Reader) FederationRelationships() []*sigilv1.FederationRelationship {
	var out []*sigilv1.FederationRelationship
	for _, raw := range r.all(tableFederationRelationships) {
		out = append(out, raw.(*sigilv1.FederationRelationship))
	}
	return out
}

// FederatedBundle returns the bundle of the foreign trust domain td, or an
// error wrapping ErrNotFound. The lookup is watched, also when there is
// none, so that the WatchSet fires when the bundle appears. For the local
// trust domain it is an error (use Bundle).
func (r *Reader) FederatedBundle(td string) (*sigilv1.Bundle, error) {
	if td == r.td.Name() {
		return nil, fmt.Errorf("raftstore: %q is the local trust domain, not a federated one", td)
	}
	raw := r.first(tableBundles, indexID, td)
	if raw == nil {
		return nil, fmt.Errorf("federated bundle %q: %w", td, ErrNotFound)
	}
	return raw.(*sigilv1.Bundle), nil
}

// FederatedBundles returns the bundle of every foreign trust domain, in
// trust domain order. The whole bundles table is watched, so the WatchSet
// also fires on changes of the local bundle.
func (r *Reader) FederatedBundles() []*sigilv1.Bundle {
	var out []*sigilv1.Bundle
	for _, raw := range r.all(tableBundles) {
		if b := raw.(*sigilv1.Bundle); b.TrustDomain != r.td.Name() {
			out = append(out, b)
		}
	}
	return out
}

// FederationStatus returns the refresh status of the relationship with
// td, or an error wrapping ErrNotFound (no relationship, or none recorded
// yet). The lookup is watched.
func (r *Reader) FederationStatus(td string) (*sigilv1.FederationStatus, error) {
	raw := r.first(tableFederationStatuses, indexID, td)
	if raw == nil {
		return nil, fmt.Errorf("federation status %q: %w", td, ErrNotFound)
	}
	return raw.(*sigilv1.FederationStatus), nil
}

// FederationStatuses returns every recorded relationship status, in trust
// domain order. The list is watched.
func (r *Reader) FederationStatuses() []*sigilv1.FederationStatus {
	var out []*sigilv1.FederationStatus
	for _, raw := range r.all(tableFederationStatuses) {
		out = append(out, raw.(*sigilv1.FederationStatus))
	}
	return out
}

// PartnerFetches returns, in trust domain order, the partners recorded as
// having fetched the local bundle, each with the highest sequence number
// it fetched. The list is watched.
func (r *Reader) PartnerFetches() []*sigilv1.PartnerFetch {
	var out []*sigilv1.PartnerFetch
	for _, raw := range r.all(tablePartnerFetches) {
		out = append(out, raw.(*sigilv1.PartnerFetch))
	}
	return out
}

// Alerts returns the firing alerts the leader recorded, in key order.
// The list is watched.
func (r *Reader) Alerts() []*storepb.AlertRecord {
	var out []*storepb.AlertRecord
	for _, raw := range r.all(tableAlerts) {
		out = append(out, raw.(*storepb.AlertRecord))
	}
	return out
}
