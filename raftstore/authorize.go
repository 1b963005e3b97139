package raftstore

import (
	"fmt"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/registration"
)

// AuthorizedFor returns, among the entries with the given ids, those the
// agent is authorized for, by id: exactly the ones AuthorizedEntries
// would list. An id that names no entry, or an entry the agent is not
// authorized for, is absent from the map. It fails like AuthorizedEntries
// for an unknown or banned agent.
//
// It walks up from each entry asked for (its parent, the entries that
// have that parent as their SPIFFE ID, their parents, ...) instead of
// listing every entry the agent is authorized for, so a signing call
// costs the entries it names, not the agent's whole entry set.
func (r *Reader) AuthorizedFor(agentID string, ids []string) (map[string]*sigilv1.Entry, error) {
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
	out := make(map[string]*sigilv1.Entry, len(ids))
	for _, id := range ids {
		e, err := r.Entry(id)
		if err != nil {
			continue
		}
		if w.parentAuthorized(e.ParentId, make(map[string]bool)) {
			out[id] = e
		}
	}
	return out, nil
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
	w.r.entries().eachBySPIFFEID(parent, func(x *sigilv1.Entry) bool {
		if x.ParentId == w.serversID {
			// A node alias: it lends its SPIFFE ID to the agent's
			// node when all its selectors are the node's.
			found = w.nodeSels.Contains(x.Selectors)
		} else {
			found = w.parentAuthorized(x.ParentId, onPath)
		}
		return !found
	})
	if found {
		w.yes[parent] = true
	}
	return found
}
