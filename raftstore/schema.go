package raftstore

import (
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
				indexID:       {Name: indexID, Unique: true, Indexer: &memdb.StringFieldIndex{Field: "ID"}},
				indexSPIFFEID: {Name: indexSPIFFEID, Indexer: &memdb.StringFieldIndex{Field: "SPIFFEID"}},
				indexParentID: {Name: indexParentID, Indexer: &memdb.StringFieldIndex{Field: "ParentID"}},
				indexSelector: {Name: indexSelector, Indexer: &memdb.StringSliceFieldIndex{Field: "Selectors"}},
				indexKey:      {Name: indexKey, Unique: true, Indexer: &memdb.StringFieldIndex{Field: "Key"}},
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
