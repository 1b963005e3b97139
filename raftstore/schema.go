package raftstore

import (
	"fmt"

	"github.com/hashicorp/go-memdb"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// Table and index names of the in-memory database.
const (
	tableEntries    = "entries"
	tableNodes      = "nodes"
	tableJoinTokens = "join_tokens"
	tableBundles    = "bundles"
	tableMeta       = "meta"
	// tableRevoked holds *revokedRow; tableRemovedServers
	// *storepb.RemovedServer.
	tableRevoked        = "revoked_authorities"
	tableRemovedServers = "removed_servers"
	// tableUsedCredentials holds *usedRow.
	tableUsedCredentials = "used_credentials"
	// tableFederationRelationships holds
	// *sigilv1.FederationRelationship, tableFederationStatuses
	// *sigilv1.FederationStatus and tablePartnerFetches
	// *sigilv1.PartnerFetch, each keyed by trust domain name.
	tableFederationRelationships = "federation_relationships"
	tableFederationStatuses      = "federation_statuses"
	tablePartnerFetches          = "partner_fetches"
	// tableAlerts holds *storepb.AlertRecord, keyed by dedupe key.
	tableAlerts = "alerts"

	indexID       = "id"
	indexSPIFFEID = "spiffe_id"
	indexParentID = "parent_id"
	indexSelector = "selector"
	indexExpires  = "expires"

	metaIndexKey = "index"
)

// metaRow records the Raft index of the last change.
type metaRow struct {
	Key   string
	Index uint64
}

// The entries table holds the *sigilv1.Entry values themselves, decoded
// from the log (or a snapshot) and owned by the store: a stored entry is
// never modified, an update inserts a new value. Each entry costs one key in
// each of three indexes (id, spiffe_id, parent_id), plus one per selector
// for node aliases (entries parented to the servers ID), the only entries
// looked up by selector on a hot path (AuthorizedEntries); the other lookups
// by selector scan the table. No index of the (spiffe_id, parent_id,
// selectors) key either: duplicateEntry finds a duplicate through the
// spiffe_id and parent_id indexes. Every index key of a radix tree costs a
// few hundred bytes (a leaf, a node and their watch channels), so these are
// most of the memory of an entry.

// schema is the database schema; serversID is the servers ID of the trust
// domain, the parent of node aliases.
func schema(serversID string) *memdb.DBSchema {
	return &memdb.DBSchema{Tables: map[string]*memdb.TableSchema{
		tableEntries: {
			Name: tableEntries,
			Indexes: map[string]*memdb.IndexSchema{
				indexID:       {Name: indexID, Unique: true, Indexer: entryIndex(func(e *sigilv1.Entry) string { return e.Id }, false)},
				indexSPIFFEID: {Name: indexSPIFFEID, Indexer: entryIndex(func(e *sigilv1.Entry) string { return e.SpiffeId }, true)},
				indexParentID: {Name: indexParentID, Indexer: entryIndex(func(e *sigilv1.Entry) string { return e.ParentId }, true)},
				indexSelector: {Name: indexSelector, AllowMissing: true, Indexer: &aliasSelectorIndex{serversID: serversID}},
			},
		},
		tableNodes: {
			Name: tableNodes,
			Indexes: map[string]*memdb.IndexSchema{
				indexID: {Name: indexID, Unique: true, Indexer: &memdb.StringFieldIndex{Field: "SpiffeId"}},
			},
		},
		tableJoinTokens: {
			Name: tableJoinTokens,
			Indexes: map[string]*memdb.IndexSchema{
				indexID:      {Name: indexID, Unique: true, Indexer: &memdb.StringFieldIndex{Field: "Hash"}},
				indexExpires: {Name: indexExpires, Indexer: &memdb.IntFieldIndex{Field: "ExpiresAt"}},
			},
		},
		tableBundles: {
			Name: tableBundles,
			Indexes: map[string]*memdb.IndexSchema{
				indexID: {Name: indexID, Unique: true, Indexer: &memdb.StringFieldIndex{Field: "TrustDomain"}},
			},
		},
		tableRevoked: {
			Name: tableRevoked,
			Indexes: map[string]*memdb.IndexSchema{
				indexID: {Name: indexID, Unique: true, Indexer: &memdb.StringFieldIndex{Field: "Key"}},
			},
		},
		tableRemovedServers: {
			Name: tableRemovedServers,
			Indexes: map[string]*memdb.IndexSchema{
				indexID: {Name: indexID, Unique: true, Indexer: &memdb.StringFieldIndex{Field: "ServerId"}},
			},
		},
		tableUsedCredentials: {
			Name: tableUsedCredentials,
			Indexes: map[string]*memdb.IndexSchema{
				indexID:      {Name: indexID, Unique: true, Indexer: &memdb.StringFieldIndex{Field: "Key"}},
				indexExpires: {Name: indexExpires, Indexer: &memdb.IntFieldIndex{Field: "ExpiresAt"}},
			},
		},
		tableFederationRelationships: {
			Name: tableFederationRelationships,
			Indexes: map[string]*memdb.IndexSchema{
				indexID: {Name: indexID, Unique: true, Indexer: &memdb.StringFieldIndex{Field: "TrustDomain"}},
			},
		},
		tableFederationStatuses: {
			Name: tableFederationStatuses,
			Indexes: map[string]*memdb.IndexSchema{
				indexID: {Name: indexID, Unique: true, Indexer: &memdb.StringFieldIndex{Field: "TrustDomain"}},
			},
		},
		tablePartnerFetches: {
			Name: tablePartnerFetches,
			Indexes: map[string]*memdb.IndexSchema{
				indexID: {Name: indexID, Unique: true, Indexer: &memdb.StringFieldIndex{Field: "TrustDomain"}},
			},
		},
		tableAlerts: {
			Name: tableAlerts,
			Indexes: map[string]*memdb.IndexSchema{
				indexID: {Name: indexID, Unique: true, Indexer: &memdb.StringFieldIndex{Field: "Key"}},
			},
		},
		tableMeta: {
			Name: tableMeta,
			Indexes: map[string]*memdb.IndexSchema{
				indexID: {Name: indexID, Unique: true, Indexer: &memdb.StringFieldIndex{Field: "Key"}},
			},
		},
	}}
}

func newMemDB(serversID string) *memdb.MemDB {
	db, err := memdb.NewMemDB(schema(serversID))
	if err != nil {
		// The schema is a constant; this is a programming error.
		panic("raftstore: invalid memdb schema: " + err.Error())
	}
	return db
}

// entryStringIndex indexes one string field of a stored *sigilv1.Entry
// without reflection. Its keys are byte for byte those of
// memdb.StringFieldIndex (the value and a NUL; no key for an empty value),
// whose FromArgs and PrefixFromArgs it keeps. For a non-unique index, to
// which memdb appends the entry's id key, the key is allocated with room
// for it, so that append does not copy the key again.
type entryStringIndex struct {
	memdb.StringFieldIndex
	field     func(*sigilv1.Entry) string
	roomForID bool
}

func entryIndex(field func(*sigilv1.Entry) string, roomForID bool) *entryStringIndex {
	return &entryStringIndex{field: field, roomForID: roomForID}
}

// FromObject returns the field's key.
func (x *entryStringIndex) FromObject(obj interface{}) (bool, []byte, error) {
	e, ok := obj.(*sigilv1.Entry)
	if !ok {
		return false, nil, fmt.Errorf("raftstore: entry index: object is %T, not *sigilv1.Entry", obj)
	}
	v := x.field(e)
	if v == "" {
		return false, nil, nil
	}
	room := 0
	if x.roomForID {
		room = len(e.Id) + 1
	}
	return true, nulTerminated(v, room), nil
}

// aliasSelectorIndex indexes the selectors of node aliases (entries
// parented to serversID) without reflection: one key per selector,
// registration.FormatSelector's "type:value" and a NUL, as
// memdb.StringSliceFieldIndex makes them, whose FromArgs and PrefixFromArgs
// it keeps.
// Other entries have no key in it.
type aliasSelectorIndex struct {
	memdb.StringSliceFieldIndex
	serversID string
}

// FromObject returns one key per selector of a node alias.
func (x *aliasSelectorIndex) FromObject(obj interface{}) (bool, [][]byte, error) {
	e, ok := obj.(*sigilv1.Entry)
	if !ok {
		return false, nil, fmt.Errorf("raftstore: selector index: object is %T, not *sigilv1.Entry", obj)
	}
	if e.ParentId != x.serversID || x.serversID == "" {
		return false, nil, nil
	}
	vals := make([][]byte, 0, len(e.Selectors))
	for _, s := range e.Selectors {
		k := make([]byte, 0, len(s.GetType())+1+len(s.GetValue())+1+len(e.Id)+1)
		k = append(append(append(append(k, s.GetType()...), ':'), s.GetValue()...), 0)
		vals = append(vals, k)
	}
	return len(vals) > 0, vals, nil
}

// nulTerminated is s followed by a NUL, in one allocation with room for
// room more bytes; nil for "".
func nulTerminated(s string, room int) []byte {
	if s == "" {
		return nil
	}
	b := make([]byte, len(s)+1, len(s)+1+room)
	copy(b, s)
	return b
}

// duplicateEntry returns an entry of txn, other than the one with e's id
// and those whose id is in skip, with e's spiffe_id, parent_id and
// selectors (the same set: the selectors of a valid entry are distinct), or
// nil. Any such entry is both among the entries of e's spiffe_id and among
// those of e's parent_id, so the two index ranges are walked in turn and
// the search ends with the shorter one (the parent_id range is not even
// looked up when the spiffe_id is new, as it mostly is).
func duplicateEntry(txn *memdb.Txn, e *sigilv1.Entry, skip map[string]*sigilv1.Entry) *sigilv1.Entry {
	bySPIFFEID, err := txn.Get(tableEntries, indexSPIFFEID, e.SpiffeId)
	if err != nil {
		panic("raftstore: spiffe_id index: " + err.Error()) // constant schema
	}
	var byParent memdb.ResultIterator
	for {
		raw := bySPIFFEID.Next()
		if raw == nil {
			return nil
		}
		if other := raw.(*sigilv1.Entry); isDuplicate(other, e, skip) {
			return other
		}
		if byParent == nil {
			if byParent, err = txn.Get(tableEntries, indexParentID, e.ParentId); err != nil {
				panic("raftstore: parent_id index: " + err.Error())
			}
		}
		raw = byParent.Next()
		if raw == nil {
			return nil
		}
		if other := raw.(*sigilv1.Entry); isDuplicate(other, e, skip) {
			return other
		}
	}
}

// isDuplicate reports whether other, unless its id is e's or in skip, has
// e's spiffe_id, parent_id and selectors.
func isDuplicate(other, e *sigilv1.Entry, skip map[string]*sigilv1.Entry) bool {
	if other.Id == e.Id {
		return false
	}
	if _, skipped := skip[other.Id]; skipped {
		return false
	}
	return sameEntryKey(other, e)
}

// sameEntryKey reports whether a and b have the same spiffe_id, parent_id
// and set of selectors (registration.Key), for entries whose selectors are
// distinct.
func sameEntryKey(a, b *sigilv1.Entry) bool {
	if a.SpiffeId != b.SpiffeId || a.ParentId != b.ParentId || len(a.Selectors) != len(b.Selectors) {
		return false
	}
	for _, x := range a.Selectors {
		found := false
		for _, y := range b.Selectors {
			if x.GetType() == y.GetType() && x.GetValue() == y.GetValue() {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}
