package raftstore

import (
	"github.com/hashicorp/go-memdb"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// Table and index names of the in-memory database.
const (
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

	indexID      = "id"
	indexExpires = "expires"

	metaIndexKey = "index"
)

// metaRow records the Raft index of the last change.
type metaRow struct {
	Key   string
	Index uint64
}

// The registration entries are not a memdb table of their own: they are
// one row of tableEntrySet, an *entryTable (entrytable.go).

// schema is the database schema.
func schema() *memdb.DBSchema {
	return &memdb.DBSchema{Tables: map[string]*memdb.TableSchema{
		tableEntrySet: {
			Name: tableEntrySet,
			Indexes: map[string]*memdb.IndexSchema{
				indexID: {Name: indexID, Unique: true, Indexer: &memdb.StringFieldIndex{Field: "Key"}},
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

// newMemDB returns an empty database: no rows but the (empty) entry
// table; serversID is the servers ID of the trust domain, the parent of
// node aliases.
func newMemDB(serversID string) *memdb.MemDB {
	db, err := memdb.NewMemDB(schema())
	if err != nil {
		// The schema is a constant; this is a programming error.
		panic("raftstore: invalid memdb schema: " + err.Error())
	}
	txn := db.Txn(true)
	if err := txn.Insert(tableEntrySet, newEntryTable(serversID)); err != nil {
		panic("raftstore: storing the entry table: " + err.Error())
	}
	txn.Commit()
	return db
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
