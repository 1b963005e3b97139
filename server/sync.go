package server

import (
	"errors"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/raftstore"
	"github.com/sigil-id/sigil/registration"
)

// Chunk limits of the sync stream: no message carries more than
// syncChunkEntries entries or about syncChunkBytes bytes, so no gRPC
// message-size limit caps how many entries an agent can hold.
const (
	syncChunkEntries = 1000
	syncChunkBytes   = 1 << 20
)

func ttlSeconds(s int32) time.Duration { return time.Duration(s) * time.Second }

// Sync pushes the agent's authorized entries, the bundle and the
// federated bundles its entries federate with: the full set first, then
// deltas. The stream wakes when an entry change is recorded in the
// store's entry change feed or when the agent's node or a bundle it gets
// changes (raftstore.SyncWatch), and computes the delta from the feed
// (see syncState), in time proportional to the changes, not to the
// agent's entries.
func (n *nodeAPI) Sync(_ *sigilv1.SyncRequest, stream sigilv1.Node_SyncServer) error {
	s := n.s
	ctx := stream.Context()
	agentID, _ := agentFrom(ctx)
	defer s.metrics.iss.syncOpened()()
	log := s.log.With(zap.String("agent_id", agentID.String()))
	st := newSyncState(agentID.String(), registration.ServersID(s.td).String())
	for {
		changed := s.store.Changed()
		r, gen := s.store.ReadGen()
		d, err := st.step(s.store, r, gen, s.td.Name())
		if err != nil {
			if errors.Is(err, raftstore.ErrNotFound) || errors.Is(err, raftstore.ErrBanned) {
				log.Info("sync ended", zap.Error(err))
				return agentStateError(agentID, err)
			}
			return status.Errorf(codes.Internal, "reading entries: %v", err)
		}
		if !d.empty() {
			if err := sendChunked(stream, d.full, d.upserted, d.deleted, d.bundle, d.fedUp, d.fedRm, d.index); err != nil {
				return err
			}
			s.metrics.iss.countPushed(len(d.upserted))
		}
		ws, pending := s.store.SyncWatch(r, gen, st.agentID, st.federatedWatched())
		if pending {
			// Changes recorded but not yet visible to r: read again
			// once they are committed.
			select {
			case <-changed:
			case <-ctx.Done():
				return nil // stream closed
			}
			continue
		}
		if err := ws.WatchCtx(ctx); err != nil {
			return nil // stream closed
		}
	}
}

// sendChunked sends one logical update as one or more messages. For a full
// set, the first message has Reset and the last Synced. Federated bundles
// come before the entries, chunked by size like them. Entries are sent as
// the store's records of them (raftstore.SyncEntry.Wire), in messages
// assembled from those encodings and sent as they are (syncCodec).
func sendChunked(stream sigilv1.Node_SyncServer, full bool, upserted []raftstore.SyncEntry, deleted []string, bundle *sigilv1.Bundle,
	fedBundles []*sigilv1.Bundle, fedRemoved []string, index uint64) error {
	msg := &syncWireBuilder{reset: full, deleted: deleted, index: index, removed: fedRemoved}
	if bundle != nil {
		b, err := proto.Marshal(bundle)
		if err != nil {
			return status.Errorf(codes.Internal, "encoding bundle: %v", err)
		}
		msg.hasBundle, msg.bundle = true, b
	}
	size := msg.size()
	flush := func(last bool) error {
		msg.synced = full && last
		if err := stream.SendMsg(msg.build()); err != nil {
			return err
		}
		msg = &syncWireBuilder{index: index}
		size = 0
		return nil
	}
	for _, fb := range fedBundles {
		b, err := proto.Marshal(fb)
		if err != nil {
			return status.Errorf(codes.Internal, "encoding federated bundle: %v", err)
		}
		bs := len(b) + 8
		if len(msg.fed) > 0 && size+bs > syncChunkBytes {
			if err := flush(false); err != nil {
				return err
			}
		}
		msg.addFederated(b)
		size += bs
	}
	for _, e := range upserted {
		b := e.Wire()
		es := len(b) + 8
		if len(msg.upserted) >= syncChunkEntries || (size+es > syncChunkBytes && (len(msg.upserted) > 0 || len(msg.fed) > 0)) {
			if err := flush(false); err != nil {
				return err
			}
		}
		msg.addEntry(b)
		size += es
	}
	return flush(true)
}

// federatedSent tracks the federated bundles one sync stream sent: trust
// domain → the bundle's modify_index.
type federatedSent map[string]uint64

// update reads the federated bundles named by the federates_with of
// entries (registering watches on them in r, present or not) and returns
// those to send (new, changed, or all of them when full) and the trust
// domains to drop (no longer needed, or deleted). With no entry that
// federates and nothing sent before, it allocates nothing.
func (f *federatedSent) update(r *raftstore.Reader, entries []raftstore.SyncEntry, full bool) (send []*sigilv1.Bundle, removed []string) {
	var need map[string]struct{}
	for _, e := range entries {
		for _, td := range e.FederatesWith() {
			if need == nil {
				need = make(map[string]struct{})
			}
			need[td] = struct{}{}
		}
	}
	if need == nil && len(*f) == 0 {
		return nil, nil
	}
	return f.updateNeed(r, need, full)
}

// updateNeed is update with the set of trust domains needed already
// gathered.
func (f *federatedSent) updateNeed(r *raftstore.Reader, need map[string]struct{}, full bool) (send []*sigilv1.Bundle, removed []string) {
	cur := make(federatedSent, len(need))
	for td := range need {
		b, err := r.FederatedBundle(td)
		if err != nil {
			continue // absent (watched: its creation wakes the stream)
		}
		cur[td] = b.ModifyIndex
		if prev, ok := (*f)[td]; full || !ok || prev != b.ModifyIndex {
			send = append(send, b)
		}
	}
	if !full {
		for td := range *f {
			if _, ok := cur[td]; !ok {
				removed = append(removed, td)
			}
		}
	}
	*f = cur
	slices.SortFunc(send, func(a, b *sigilv1.Bundle) int { return strings.Compare(a.TrustDomain, b.TrustDomain) })
	slices.Sort(removed)
	return send, removed
}
