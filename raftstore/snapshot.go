package raftstore

import (
	"bytes"
	"crypto/x509"
	"encoding/binary"
	"hash/crc32"
	"io"

	"github.com/hashicorp/go-memdb"
	"github.com/hashicorp/raft"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/internal/storepb"
)

// Snapshot format: the 8-byte magic, the Raft index of the state (uint64,
// big endian), the length of the body (uint64, big endian), the body (a
// deterministic storepb.Snapshot), and the CRC-32C of the body (uint32, big
// endian).
var snapshotMagic = [8]byte{'S', 'I', 'G', 'I', 'L', 'S', 'N', '1'}

const (
	snapshotHeaderLen = 8 + 8 + 8
	// maxSnapshotBody bounds the body we are willing to read.
	maxSnapshotBody = 1 << 34
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

type fsmSnapshot struct {
	txn   *memdb.Txn
	index uint64
}

// Snapshot captures the current state. memdb read transactions are
// immutable, so Persist may run concurrently with later Applies.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	return &fsmSnapshot{txn: f.state.Load().db.Txn(false), index: f.lastIndex.Load()}, nil
}

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := writeSnapshot(sink, s.txn, s.index); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() {}

// buildSnapshot collects every table, in index order.
func buildSnapshot(txn *memdb.Txn) (*storepb.Snapshot, error) {
	snap := &storepb.Snapshot{}
	each := func(table string, fn func(raw interface{})) error {
		it, err := txn.Get(table, indexID)
		if err != nil {
			return errorf("snapshot of %s: %v", table, err)
		}
		for raw := it.Next(); raw != nil; raw = it.Next() {
			fn(raw)
		}
		return nil
	}
	eachStoredEntry(txn, func(e *sigilv1.Entry) { snap.Entries = append(snap.Entries, e) })
	if err := each(tableNodes, func(raw interface{}) { snap.Nodes = append(snap.Nodes, raw.(*sigilv1.AttestedNode)) }); err != nil {
		return nil, err
	}
	if err := each(tableJoinTokens, func(raw interface{}) { snap.JoinTokens = append(snap.JoinTokens, raw.(*sigilv1.JoinToken)) }); err != nil {
		return nil, err
	}
	if err := each(tableBundles, func(raw interface{}) { snap.Bundles = append(snap.Bundles, raw.(*sigilv1.Bundle)) }); err != nil {
		return nil, err
	}
	if err := each(tableRevoked, func(raw interface{}) {
		snap.RevokedAuthorities = append(snap.RevokedAuthorities, raw.(*revokedRow).A)
	}); err != nil {
		return nil, err
	}
	if err := each(tableRemovedServers, func(raw interface{}) {
		snap.RemovedServers = append(snap.RemovedServers, raw.(*storepb.RemovedServer))
	}); err != nil {
		return nil, err
	}
	if err := each(tableUsedCredentials, func(raw interface{}) {
		snap.UsedCredentials = append(snap.UsedCredentials, raw.(*usedRow).C)
	}); err != nil {
		return nil, err
	}
	if err := each(tableFederationRelationships, func(raw interface{}) {
		snap.FederationRelationships = append(snap.FederationRelationships, raw.(*sigilv1.FederationRelationship))
	}); err != nil {
		return nil, err
	}
	if err := each(tableFederationStatuses, func(raw interface{}) {
		snap.FederationStatuses = append(snap.FederationStatuses, raw.(*sigilv1.FederationStatus))
	}); err != nil {
		return nil, err
	}
	if err := each(tablePartnerFetches, func(raw interface{}) {
		snap.PartnerFetches = append(snap.PartnerFetches, raw.(*sigilv1.PartnerFetch))
	}); err != nil {
		return nil, err
	}
	if err := each(tableAlerts, func(raw interface{}) { snap.Alerts = append(snap.Alerts, raw.(*storepb.AlertRecord)) }); err != nil {
		return nil, err
	}
	return snap, nil
}

func writeSnapshot(w io.Writer, txn *memdb.Txn, index uint64) error {
	snap, err := buildSnapshot(txn)
	if err != nil {
		return err
	}
	body, err := proto.MarshalOptions{Deterministic: true}.Marshal(snap)
	if err != nil {
		return errorf("encoding snapshot: %v", err)
	}
	var hdr [snapshotHeaderLen]byte
	copy(hdr[:8], snapshotMagic[:])
	binary.BigEndian.PutUint64(hdr[8:16], index)
	binary.BigEndian.PutUint64(hdr[16:24], uint64(len(body)))
	var sum [4]byte
	binary.BigEndian.PutUint32(sum[:], crc32.Checksum(body, crcTable))
	for _, b := range [][]byte{hdr[:], body, sum[:]} {
		if _, err := w.Write(b); err != nil {
			return errorf("writing snapshot: %v", err)
		}
	}
	return nil
}

// readSnapshot decodes and checks the framing of a snapshot.
func readSnapshot(r io.Reader) (*storepb.Snapshot, uint64, error) {
	var hdr [snapshotHeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, 0, errorf("snapshot header: %v", err)
	}
	if !bytes.Equal(hdr[:8], snapshotMagic[:]) {
		return nil, 0, errorf("snapshot: not a Sigil snapshot (bad magic)")
	}
	index := binary.BigEndian.Uint64(hdr[8:16])
	n := binary.BigEndian.Uint64(hdr[16:24])
	if n > maxSnapshotBody {
		return nil, 0, errorf("snapshot: body length %d is too large", n)
	}
	var buf bytes.Buffer
	if _, err := io.CopyN(&buf, r, int64(n)+4); err != nil {
		return nil, 0, errorf("snapshot body truncated: %v", err)
	}
	if extra, _ := io.ReadFull(r, make([]byte, 1)); extra != 0 {
		return nil, 0, errorf("snapshot: trailing data after checksum")
	}
	data := buf.Bytes()
	body, sum := data[:n], data[n:]
	if crc32.Checksum(body, crcTable) != binary.BigEndian.Uint32(sum) {
		return nil, 0, errorf("snapshot: checksum mismatch")
	}
	snap := &storepb.Snapshot{}
	if err := proto.Unmarshal(body, snap); err != nil {
		return nil, 0, errorf("snapshot: decoding: %v", err)
	}
	return snap, index, nil
}

// Restore replaces the whole state with a snapshot. Every record is checked
// first; on any error the current state is left untouched.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	snap, index, err := readSnapshot(rc)
	if err != nil {
		return err
	}
	db, err := f.loadSnapshot(snap, index)
	if err != nil {
		return err
	}
	old := f.state.Swap(&dbState{db: db, abandon: make(chan struct{})})
	close(old.abandon)
	f.lastIndex.Store(index)
	f.broadcast()
	return nil
}

// loadSnapshot validates snap and builds a fresh database from it.
func (f *fsm) loadSnapshot(snap *storepb.Snapshot, index uint64) (*memdb.MemDB, error) {
	db := newMemDB(f.serversID)
	txn := db.Txn(true)
	defer txn.Abort()
	ents := newEntryRestore(f.serversID)
	for _, e := range snap.Entries {
		if err := f.validateEntry(e); err != nil {
			return nil, errorf("snapshot: %v", err.Msg)
		}
		ents.add(e)
	}
	if err := ents.finish(txn); err != nil {
		return nil, err
	}
	for _, n := range snap.Nodes {
		if err := f.validateNode(n); err != nil {
			return nil, errorf("snapshot: %v", err.Msg)
		}
		if raw, _ := txn.First(tableNodes, indexID, n.SpiffeId); raw != nil {
			return nil, errorf("snapshot: duplicate node %q", n.SpiffeId)
		}
		if err := txn.Insert(tableNodes, n); err != nil {
			return nil, errorf("snapshot: node %q: %v", n.SpiffeId, err)
		}
	}
	for _, t := range snap.JoinTokens {
		if t == nil {
			return nil, errorf("snapshot: join token is missing")
		}
		if err := validateTokenHash(t.Hash); err != nil {
			return nil, errorf("snapshot: %v", err.Msg)
		}
		if raw, _ := txn.First(tableJoinTokens, indexID, t.Hash); raw != nil {
			return nil, errorf("snapshot: duplicate join token")
		}
		if err := txn.Insert(tableJoinTokens, t); err != nil {
			return nil, errorf("snapshot: join token: %v", err)
		}
	}
	for _, b := range snap.Bundles {
		if b == nil {
			return nil, errorf("snapshot: bundle is missing")
		}
		if _, err := spiffeid.TrustDomainFromString(b.TrustDomain); err != nil || b.TrustDomain == "" {
			return nil, errorf("snapshot: bundle has invalid trust domain %q", b.TrustDomain)
		}
		if b.TrustDomain != f.td.Name() {
			// A federated bundle: as SetFederatedBundle stores it.
			norm, err := f.normalFederatedBundle(b)
			if err != nil {
				return nil, errorf("snapshot: %v", err.Msg)
			}
			if !proto.Equal(norm, b) {
				return nil, errorf("snapshot: bundle of %q is not in the form the store writes", b.TrustDomain)
			}
			if raw, _ := txn.First(tableBundles, indexID, b.TrustDomain); raw != nil {
				return nil, errorf("snapshot: duplicate bundle %q", b.TrustDomain)
			}
			if err := txn.Insert(tableBundles, b); err != nil {
				return nil, errorf("snapshot: bundle %q: %v", b.TrustDomain, err)
			}
			continue
		}
		for _, a := range b.X509Authorities {
			if a == nil {
				return nil, errorf("snapshot: bundle %q: authority is missing", b.TrustDomain)
			}
			if _, err := parseCACert(a.Certificate); err != nil {
				return nil, errorf("snapshot: bundle %q: %v", b.TrustDomain, err.Msg)
			}
		}
		if err := checkSnapshotJWTAuthorities(b); err != nil {
			return nil, err
		}
		if raw, _ := txn.First(tableBundles, indexID, b.TrustDomain); raw != nil {
			return nil, errorf("snapshot: duplicate bundle %q", b.TrustDomain)
		}
		if err := txn.Insert(tableBundles, b); err != nil {
			return nil, errorf("snapshot: bundle %q: %v", b.TrustDomain, err)
		}
	}
	for _, r := range snap.RevokedAuthorities {
		if r == nil || (r.Kind != AuthorityKindX509 && r.Kind != AuthorityKindJWT) {
			return nil, errorf("snapshot: revoked authority has no valid kind")
		}
		if err := validateAuthorityID(r.Id); err != nil {
			return nil, errorf("snapshot: revoked authority: %v", err.Msg)
		}
		key := revokedKey(r.Kind, r.Id)
		if raw, _ := txn.First(tableRevoked, indexID, key); raw != nil {
			return nil, errorf("snapshot: duplicate revoked authority %s", key)
		}
		if err := txn.Insert(tableRevoked, &revokedRow{Key: key, A: r}); err != nil {
			return nil, errorf("snapshot: revoked authority %s: %v", key, err)
		}
	}
	for _, r := range snap.RemovedServers {
		if r == nil {
			return nil, errorf("snapshot: removed server is missing")
		}
		if err := validateServerName(r.ServerId); err != nil {
			return nil, errorf("snapshot: removed server: %v", err.Msg)
		}
		if raw, _ := txn.First(tableRemovedServers, indexID, r.ServerId); raw != nil {
			return nil, errorf("snapshot: duplicate removed server %q", r.ServerId)
		}
		if err := txn.Insert(tableRemovedServers, r); err != nil {
			return nil, errorf("snapshot: removed server %q: %v", r.ServerId, err)
		}
	}
	for _, u := range snap.UsedCredentials {
		if u == nil {
			return nil, errorf("snapshot: used credential is missing")
		}
		// Checked at its own time: a record restored after it expired
		// is pruned by a later command.
		if err := validateUseOnce(u.Kind, u.Id, u.ExpiresAt, u.UsedAt); err != nil {
			return nil, errorf("snapshot: used credential: %v", err.Msg)
		}
		key := usedKey(u.Kind, u.Id)
		if raw, _ := txn.First(tableUsedCredentials, indexID, key); raw != nil {
			return nil, errorf("snapshot: duplicate used credential of kind %q", u.Kind)
		}
		if err := txn.Insert(tableUsedCredentials, &usedRow{Key: key, ExpiresAt: u.ExpiresAt, C: u}); err != nil {
			return nil, errorf("snapshot: used credential of kind %q: %v", u.Kind, err)
		}
	}
	if err := f.loadSnapshotFederation(txn, snap); err != nil {
		return nil, err
	}
	if err := loadSnapshotAlerts(txn, snap); err != nil {
		return nil, err
	}
	if err := txn.Insert(tableMeta, &metaRow{Key: metaIndexKey, Index: index}); err != nil {
		return nil, errorf("snapshot: %v", err)
	}
	txn.Commit()
	return db, nil
}

// checkSnapshotJWTAuthorities holds the JWT authorities of a restored bundle
// to what PutJWTAuthority accepts: a key ID that is set, bounded and unique
// in the bundle, and a public key that parses.
func checkSnapshotJWTAuthorities(b *sigilv1.Bundle) error {
	kids := make(map[string]bool, len(b.JwtAuthorities))
	for _, a := range b.JwtAuthorities {
		switch {
		case a == nil:
			return errorf("snapshot: bundle %q: JWT authority is missing", b.TrustDomain)
		case a.KeyId == "":
			return errorf("snapshot: bundle %q: JWT authority key_id is empty", b.TrustDomain)
		case len(a.KeyId) > maxKeyIDLen:
			return errorf("snapshot: bundle %q: JWT authority key_id is longer than %d bytes", b.TrustDomain, maxKeyIDLen)
		case kids[a.KeyId]:
			return errorf("snapshot: bundle %q: duplicate JWT authority key_id %q", b.TrustDomain, a.KeyId)
		}
		kids[a.KeyId] = true
		if _, err := x509.ParsePKIXPublicKey(a.PublicKey); err != nil {
			return errorf("snapshot: bundle %q: JWT authority %q: public key does not parse: %v", b.TrustDomain, a.KeyId, err)
		}
	}
	return nil
}

// loadSnapshotFederation checks and loads the federation tables of a
// snapshot, after its bundles: each record as the commands store it, at
// most MaxFederationRelationships relationships, a status only with its
// relationship, and a partner fetch only of a trust domain with a
// relationship or a bundle.
func (f *fsm) loadSnapshotFederation(txn *memdb.Txn, snap *storepb.Snapshot) error {
	if n := len(snap.FederationRelationships); n > MaxFederationRelationships {
		return errorf("snapshot: %d federation relationships, at most %d allowed", n, MaxFederationRelationships)
	}
	for _, rel := range snap.FederationRelationships {
		if err := f.validateRelationship(rel); err != nil {
			return errorf("snapshot: %v", err.Msg)
		}
		if raw, _ := txn.First(tableFederationRelationships, indexID, rel.TrustDomain); raw != nil {
			return errorf("snapshot: duplicate federation relationship %q", rel.TrustDomain)
		}
		if err := txn.Insert(tableFederationRelationships, rel); err != nil {
			return errorf("snapshot: federation relationship %q: %v", rel.TrustDomain, err)
		}
	}
	for _, st := range snap.FederationStatuses {
		norm, err := f.normalStatus(st)
		if err != nil {
			return errorf("snapshot: %v", err.Msg)
		}
		if !proto.Equal(norm, st) {
			return errorf("snapshot: federation status of %q is not in the form the store writes", st.TrustDomain)
		}
		if raw, _ := txn.First(tableFederationRelationships, indexID, st.TrustDomain); raw == nil {
			return errorf("snapshot: federation status of %q has no relationship", st.TrustDomain)
		}
		if raw, _ := txn.First(tableFederationStatuses, indexID, st.TrustDomain); raw != nil {
			return errorf("snapshot: duplicate federation status %q", st.TrustDomain)
		}
		if err := txn.Insert(tableFederationStatuses, st); err != nil {
			return errorf("snapshot: federation status %q: %v", st.TrustDomain, err)
		}
	}
	for _, pf := range snap.PartnerFetches {
		if pf == nil {
			return errorf("snapshot: partner fetch is missing")
		}
		if err := f.checkForeignTrustDomain(pf.TrustDomain); err != nil {
			return errorf("snapshot: partner fetch: %v", err.Msg)
		}
		rel, _ := txn.First(tableFederationRelationships, indexID, pf.TrustDomain)
		b, _ := txn.First(tableBundles, indexID, pf.TrustDomain)
		if rel == nil && b == nil {
			return errorf("snapshot: partner fetch of %q, which has no federation relationship or bundle", pf.TrustDomain)
		}
		if raw, _ := txn.First(tablePartnerFetches, indexID, pf.TrustDomain); raw != nil {
			return errorf("snapshot: duplicate partner fetch %q", pf.TrustDomain)
		}
		if err := txn.Insert(tablePartnerFetches, pf); err != nil {
			return errorf("snapshot: partner fetch %q: %v", pf.TrustDomain, err)
		}
	}
	return nil
}

// loadSnapshotAlerts checks and loads the firing alerts of a snapshot:
// each as UpdateAlerts accepts it, keys unique, at most MaxAlerts.
func loadSnapshotAlerts(txn *memdb.Txn, snap *storepb.Snapshot) error {
	if n := len(snap.Alerts); n > MaxAlerts {
		return errorf("snapshot: %d alerts, at most %d allowed", n, MaxAlerts)
	}
	for _, r := range snap.Alerts {
		if err := validateAlert(r); err != nil {
			return errorf("snapshot: %v", err.Msg)
		}
		if raw, _ := txn.First(tableAlerts, indexID, r.Key); raw != nil {
			return errorf("snapshot: duplicate alert %q", r.Key)
		}
		if err := txn.Insert(tableAlerts, r); err != nil {
			return errorf("snapshot: alert %q: %v", r.Key, err)
		}
	}
	return nil
}
