package raftstore

import (
	"fmt"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/sigil-id/sigil/registration"
)

// AuthorizedFor returns, among the entries with the given ids, those the
// agent is authorized for, by id, as what signing their SVIDs needs:
// exactly the ones AuthorizedEntries would list. An id that names no entry, or an entry the agent is not
// authorized for, is absent from the map. It fails like AuthorizedEntries
// for an unknown or banned agent.
//
// It walks up from each entry asked for (its parent, the entries that
// have that parent as their SPIFFE ID, their parents, ...) instead of
// listing every entry the agent is authorized for, so a signing call
// costs the entries it names, not the agent's whole entry set.
func (r *Reader) AuthorizedFor(agentID string, ids []string) (map[string]SigningEntry, error) {
	node, err := r.Node(agentID)
	if err != nil {
		return nil, err
	}
	if node.Banned {
		return nil, fmt.Errorf("agent %q: %w", agentID, ErrBanned)
	}
	w := upWalk{
		r:         r,
		agentID:   agentID,
		serversID: registration.ServersID(r.td).String(),
		nodeSels:  registration.NewSelectorSet(node.Selectors),
		yes:       make(map[string]bool),
	}
	out := make(map[string]SigningEntry, len(ids))
	ents := r.entries()
	for _, id := range ids {
		rec, ok := ents.get(id)
		if !ok {
			continue
		}
		if w.parentAuthorized(rec.parentID(), make(map[string]bool)) {
			out[id] = rec.signingEntry()
		}
	}
	return out, nil
}

// SigningEntry is what minting an SVID needs of a stored entry, read in
// place from the store's record of it without decoding the rest: its
// strings share the store's memory (keeping one keeps that record).
type SigningEntry struct {
	ID       string
	SPIFFEID string
	DNSNames []string
	X509TTL  int32 // x509_svid_ttl, seconds (0: the server default)
	JWTTTL   int32 // jwt_svid_ttl, seconds (0: the server default)
}

// signingEntry reads r's SigningEntry (one allocation, for DNS names).
func (r entryRec) signingEntry() SigningEntry {
	var se SigningEntry
	scanFields(r.bytes(), func(n protowire.Number, typ protowire.Type, v []byte, u uint64) bool {
		str := unsafe.String(unsafe.SliceData(v), len(v))
		switch {
		case n == entryFieldID && typ == protowire.BytesType:
			se.ID = str
		case n == entryFieldSPIFFEID && typ == protowire.BytesType:
			se.SPIFFEID = str
		case n == entryFieldX509TTL && typ == protowire.VarintType:
			se.X509TTL = int32(u)
		case n == entryFieldJWTTTL && typ == protowire.VarintType:
			se.JWTTTL = int32(u)
		case n == entryFieldDNSNames && typ == protowire.BytesType:
			se.DNSNames = append(se.DNSNames, str)
		}
		return true
	})
	return se
}

// upWalk answers, for one agent, whether a SPIFFE ID is one whose
// children the agent is authorized for: the agent itself, the SPIFFE ID
// of a node alias that matches the agent's node, or the SPIFFE ID of an
// entry the agent is authorized for (AuthorizedEntries' visited set).
type upWalk struct {
	r         *Reader
	agentID   string
	serversID string
	nodeSels  registration.SelectorSet
	// yes remembers the SPIFFE IDs found authorized. A "no" is not
	// remembered: it may have been decided while an ID above it was
	// still being walked (a cycle), and would then be wrong later.
	yes map[string]bool
}

// parentAuthorized reports whether the agent is authorized for the
// children of parent. onPath holds the IDs being walked, so that a cycle
// ends.
func (w *upWalk) parentAuthorized(parent string, onPath map[string]bool) bool {
	if parent == w.agentID || w.yes[parent] {
		return true
	}
	if onPath[parent] {
		return false
	}
	onPath[parent] = true
	defer delete(onPath, parent)
	found := false
	w.r.entries().eachBySPIFFEID(parent, func(x entryRec) bool {
		if xp := x.parentID(); xp == w.serversID {
			// A node alias: it lends its SPIFFE ID to the agent's
			// node when all its selectors are the node's.
			found = x.selectorsIn(w.nodeSels)
		} else {
			found = w.parentAuthorized(xp, onPath)
		}
		return !found
	})
	if found {
		w.yes[parent] = true
	}
	return found
}
