package raftstore

import (
	"fmt"

	"github.com/hashicorp/go-memdb"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/registration"
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
	indexKey      = "key"
	indexExpires  = "expires"

	metaIndexKey = "index"
)

// entryRow is how an entry is stored: the entry itself plus the derived
// values the indexes need.
type entryRow struct {
	ID        string
	SPIFFEID  string
	ParentID  string
	Key       string   // registration.Key, unique
	Selectors []string // "type:value"
	Entry     *sigilv1.Entry
}

func newEntryRow(e *sigilv1.Entry) *entryRow {
	sels := make([]string, len(e.Selectors))
	for i, s := range e.Selectors {
		sels[i] = registration.FormatSelector(s)
	}
	return &entryRow{
		ID:        e.Id,
		SPIFFEID:  e.SpiffeId,
		ParentID:  e.ParentId,
		Key:       registration.Key(e),
		Selectors: sels,
		Entry:     e,
	}
}

// metaRow records the Raft index of the last change.
type metaRow struct {
	Key   string
	Index uint64
}

func schema() *memdb.DBSchema {
	return &memdb.DBSchema{Tables: map[string]*memdb.TableSchema{
		tableEntries: {
			Name: tableEntries,
			Indexes: map[string]*memdb.IndexSchema{
				indexID:       {Name: indexID, Unique: true, Indexer: entryIndex(func(r *entryRow) string { return r.ID })},
				indexSPIFFEID: {Name: indexSPIFFEID, Indexer: entryIndex(func(r *entryRow) string { return r.SPIFFEID })},
				indexParentID: {Name: indexParentID, Indexer: entryIndex(func(r *entryRow) string { return r.ParentID })},
				indexSelector: {Name: indexSelector, Indexer: &entrySelectorIndex{}},
				indexKey:      {Name: indexKey, Unique: true, Indexer: entryIndex(func(r *entryRow) string { return r.Key })},
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

func newMemDB() *memdb.MemDB {
	db, err := memdb.NewMemDB(schema())
	if err != nil {
		// The schema is a constant; this is a programming error.
		panic("raftstore: invalid memdb schema: " + err.Error())
	}
	return db
}

// entryStringIndex indexes one string field of an *entryRow without
// reflection. Its keys are byte for byte those of memdb.StringFieldIndex
// (the value and a NUL; no key for an empty value), whose FromArgs and
// PrefixFromArgs it keeps.
type entryStringIndex struct {
	memdb.StringFieldIndex
	field func(*entryRow) string
}

func entryIndex(field func(*entryRow) string) *entryStringIndex {
	return &entryStringIndex{field: field}
}

// FromObject returns the field's key.
func (x *entryStringIndex) FromObject(obj interface{}) (bool, []byte, error) {
	r, ok := obj.(*entryRow)
	if !ok {
		return false, nil, fmt.Errorf("raftstore: entry index: object is %T, not *entryRow", obj)
	}
	v := x.field(r)
	if v == "" {
		return false, nil, nil
	}
	return true, nulTerminated(v), nil
}

// entrySelectorIndex indexes the selectors of an *entryRow without
// reflection, one key per non-empty selector as memdb.StringSliceFieldIndex
// does, whose FromArgs and PrefixFromArgs it keeps.
type entrySelectorIndex struct {
	memdb.StringSliceFieldIndex
}

// FromObject returns one key per non-empty selector.
func (x *entrySelectorIndex) FromObject(obj interface{}) (bool, [][]byte, error) {
	r, ok := obj.(*entryRow)
	if !ok {
		return false, nil, fmt.Errorf("raftstore: selector index: object is %T, not *entryRow", obj)
	}
	vals := make([][]byte, 0, len(r.Selectors))
	for _, s := range r.Selectors {
		if s != "" {
			vals = append(vals, nulTerminated(s))
		}
	}
	if len(vals) == 0 {
		return false, nil, nil
	}
	return true, vals, nil
}

// nulTerminated is s followed by a NUL, in one allocation; nil for "".
func nulTerminated(s string) []byte {
	if s == "" {
		return nil
	}
	b := make([]byte, len(s)+1)
	copy(b, s)
	return b
}
