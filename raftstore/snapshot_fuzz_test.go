package raftstore

import (
	"bytes"
	"crypto/x509"
	"encoding/binary"
	"hash/crc32"
	"io"
	"runtime"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/sigil-id/sigil/internal/storepb"
)

// frameSnapshot wraps body in a valid snapshot header and checksum.
func frameSnapshot(index uint64, body []byte) []byte {
	out := append([]byte{}, snapshotMagic[:]...)
	out = binary.BigEndian.AppendUint64(out, index)
	out = binary.BigEndian.AppendUint64(out, uint64(len(body)))
	out = append(out, body...)
	return binary.BigEndian.AppendUint32(out, crc32.Checksum(body, crcTable))
}

// checkRestoredState checks what an accepted snapshot must hold beyond the
// per-record checks the FSM applies to commands: the local bundle carries
// only CA certificates, federated bundles certificates that parse (with
// their expiry and no server), and both JWT keys that parse, under unique,
// bounded key IDs; federation statuses only with their relationship, and
// partner fetches only of trust domains with a relationship or a bundle;
// at most MaxAlerts alerts, each as UpdateAlerts accepts it.
func checkRestoredState(t *testing.T, f *fsm) {
	t.Helper()
	snap, err := buildSnapshot(f.state.Load().db.Txn(false))
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Alerts) > MaxAlerts {
		t.Fatalf("restored %d alerts", len(snap.Alerts))
	}
	for _, r := range snap.Alerts {
		if err := CheckAlertRecord(r); err != nil {
			t.Fatalf("restored an alert UpdateAlerts refuses: %v", err)
		}
	}
	federated := map[string]bool{}
	if len(snap.FederationRelationships) > MaxFederationRelationships {
		t.Fatalf("restored %d federation relationships", len(snap.FederationRelationships))
	}
	for _, r := range snap.FederationRelationships {
		if r.TrustDomain == td.Name() {
			t.Fatal("restored a relationship with the local trust domain")
		}
		federated[r.TrustDomain] = true
	}
	for _, st := range snap.FederationStatuses {
		if !federated[st.TrustDomain] {
			t.Fatalf("restored a status of %q without its relationship", st.TrustDomain)
		}
	}
	for _, b := range snap.Bundles {
		if b.TrustDomain != td.Name() {
			federated[b.TrustDomain] = true
		}
	}
	for _, pf := range snap.PartnerFetches {
		if !federated[pf.TrustDomain] {
			t.Fatalf("restored a partner fetch of %q, which has no relationship or bundle", pf.TrustDomain)
		}
	}
	for _, b := range snap.Bundles {
		for _, a := range b.X509Authorities {
			c, err := x509.ParseCertificate(a.Certificate)
			if b.TrustDomain != td.Name() {
				if err != nil || a.ServerId != "" || a.NotAfter != c.NotAfter.Unix() {
					t.Fatalf("federated bundle %q: restored an X.509 authority that does not parse or is not as stored (%v)", b.TrustDomain, err)
				}
				continue
			}
			if err != nil || !c.IsCA || !c.BasicConstraintsValid {
				t.Fatalf("bundle %q: restored a non-CA X.509 authority (%v)", b.TrustDomain, err)
			}
		}
		kids := map[string]bool{}
		for _, a := range b.JwtAuthorities {
			if a.KeyId == "" || len(a.KeyId) > maxKeyIDLen || kids[a.KeyId] {
				t.Fatalf("bundle %q: restored a JWT authority with an empty, long or duplicate key ID %q", b.TrustDomain, a.KeyId)
			}
			kids[a.KeyId] = true
			if _, err := x509.ParsePKIXPublicKey(a.PublicKey); err != nil {
				t.Fatalf("bundle %q: restored JWT authority %q whose key does not parse: %v", b.TrustDomain, a.KeyId, err)
			}
		}
	}
}

// FuzzSnapshotRestore restores arbitrary bytes as a snapshot, into a fresh
// FSM and into a populated one. When frame is set the input is the body and
// gets a valid header and checksum, so that the fuzzer reaches the decoding
// and validation of records; otherwise the input is the whole snapshot. A
// refused snapshot must leave the state, the index and the watchers
// untouched; an accepted one must hold only valid records, and snapshot
// and restore again to the same bytes. The memory a restore allocates is
// bounded by the input's size, not by a length field in it.
func FuzzSnapshotRestore(f *testing.F) {
	fx := newFuzzFixture(f)
	src := fx.newFuzzApplier(f, true)
	good := persistBytes(f, src.f)
	body := good[snapshotHeaderLen : len(good)-4]
	f.Add(good, false)
	f.Add(body, true)
	f.Add(persistBytes(f, newFSM(td, nil)), false)
	// A state with revoked authorities and a retired server.
	for _, c := range fx.seeds[len(fx.seeds)-6:] {
		src.apply(c)
	}
	if revoked := persistBytes(f, src.f); !bytes.Equal(revoked, good) {
		f.Add(revoked[snapshotHeaderLen:len(revoked)-4], true)
	}
	f.Add([]byte{}, true)
	f.Add([]byte{}, false)
	f.Add(good[:len(good)-10], false)
	f.Add(append(append([]byte{}, good...), 0), false)
	huge := append([]byte{}, snapshotMagic[:]...)
	huge = binary.BigEndian.AppendUint64(huge, 1)
	huge = binary.BigEndian.AppendUint64(huge, 1<<34)
	f.Add(huge, false)
	huge = binary.BigEndian.AppendUint64(huge[:16], 1<<63)
	f.Add(huge, false)
	// A valid snapshot with alerts.
	{
		withAlerts := &storepb.Snapshot{}
		if err := proto.Unmarshal(body, withAlerts); err != nil {
			f.Fatal(err)
		}
		withAlerts.Alerts = []*storepb.AlertRecord{alertRec("cluster_member_unreachable/s2", "s2"), alertRec("svid_expiring/a", "a")}
		b, err := proto.Marshal(withAlerts)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, true)
	}
	// Records that must be refused.
	snap := &storepb.Snapshot{}
	if err := proto.Unmarshal(body, snap); err != nil {
		f.Fatal(err)
	}
	for _, mut := range []func(s *storepb.Snapshot){
		func(s *storepb.Snapshot) { s.Entries = append(s.Entries, s.Entries[0]) },
		func(s *storepb.Snapshot) { s.Nodes = append(s.Nodes, nil) },
		func(s *storepb.Snapshot) { s.JoinTokens[0].Hash = "abc" },
		func(s *storepb.Snapshot) { s.Bundles = append(s.Bundles, s.Bundles[0]) },
		func(s *storepb.Snapshot) { s.Bundles[0].JwtAuthorities[0].PublicKey = []byte("x") },
		func(s *storepb.Snapshot) { s.Bundles[0].JwtAuthorities[0].KeyId = "" },
		func(s *storepb.Snapshot) {
			s.Bundles[0].JwtAuthorities = append(s.Bundles[0].JwtAuthorities, s.Bundles[0].JwtAuthorities[0])
		},
		func(s *storepb.Snapshot) { s.Bundles[0].X509Authorities[0].Certificate = []byte("x") },
		// Federation records.
		func(s *storepb.Snapshot) { s.FederationRelationships[0].BundleEndpointUrl = "http://x" },
		func(s *storepb.Snapshot) {
			s.FederationRelationships = append(s.FederationRelationships, s.FederationRelationships[0])
		},
		func(s *storepb.Snapshot) { s.FederationStatuses[0].TrustDomain = "nowhere.example" },
		func(s *storepb.Snapshot) { s.PartnerFetches[0].TrustDomain = "nowhere.example" },
		func(s *storepb.Snapshot) { s.FederationRelationships = nil },
		func(s *storepb.Snapshot) {
			for _, b := range s.Bundles {
				if b.TrustDomain != td.Name() {
					b.X509Authorities[0].ServerId = "n1"
				}
			}
		},
		func(s *storepb.Snapshot) { s.Entries[0].FederatesWith = []string{td.Name()} },
		// Alerts.
		func(s *storepb.Snapshot) { s.Alerts = append(s.Alerts, alertRec("k/a", "a"), alertRec("k/a", "b")) },
		func(s *storepb.Snapshot) { s.Alerts = append(s.Alerts, alertRec("", "a")) },
		func(s *storepb.Snapshot) { s.Alerts = append(s.Alerts, nil) },
	} {
		s := proto.Clone(snap).(*storepb.Snapshot)
		mut(s)
		b, err := proto.Marshal(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, true)
	}

	f.Fuzz(func(t *testing.T, data []byte, frame bool) {
		in := data
		if frame {
			in = frameSnapshot(7, data)
		}
		for _, populated := range []bool{false, true} {
			a := fx.newFuzzApplier(t, populated)
			before := persistBytes(t, a.f)
			changed := a.f.changedCh()

			var m0, m1 runtime.MemStats
			runtime.ReadMemStats(&m0)
			err := a.f.Restore(io.NopCloser(bytes.NewReader(in)))
			runtime.ReadMemStats(&m1)
			// Decoding may cost a constant factor of the input (small
			// records expand into structs), never a length field's worth.
			if alloc, limit := m1.TotalAlloc-m0.TotalAlloc, uint64(64<<20+512*len(in)); alloc > limit {
				t.Fatalf("restoring a %d-byte snapshot allocated %d bytes (limit %d)", len(in), alloc, limit)
			}
			if err != nil {
				if !bytes.Equal(persistBytes(t, a.f), before) {
					t.Fatalf("refused snapshot (%v) changed the state", err)
				}
				select {
				case <-changed:
					t.Fatalf("refused snapshot (%v) woke watchers", err)
				default:
				}
				continue
			}
			checkRestoredState(t, a.f)
			after := persistBytes(t, a.f)
			c := newFSM(td, nil)
			if err := c.Restore(io.NopCloser(bytes.NewReader(after))); err != nil {
				t.Fatalf("snapshot of a restored state does not restore: %v", err)
			}
			if !bytes.Equal(persistBytes(t, c), after) {
				t.Fatal("snapshot/restore round trip is not stable")
			}
		}
	})
}
