package server

import (
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// Chunk limits of the sync stream: no message carries more than
// syncChunkEntries entries or about syncChunkBytes bytes, so no gRPC
// message-size limit caps how many entries an agent can hold.
const (
	syncChunkEntries = 1000
	syncChunkBytes   = 1 << 20
)

func ttlSeconds(s int32) time.Duration { return time.Duration(s) * time.Second }

// Sync pushes the agent's authorized entries and the bundle: the full set
// first, then deltas, each computed when a memdb watch fires.
func (n *nodeAPI) Sync(_ *sigilv1.SyncRequest, stream sigilv1.Node_SyncServer) error {
	s := n.s
	ctx := stream.Context()
	agentID, _ := agentFrom(ctx)
	log := s.log.With(zap.String("agent_id", agentID.String()))
	sent := make(map[string]uint64) // entry id -> modify index sent
	var bundleSeq uint64
	first := true
	for {
		r := s.store.Read()
		entries, err := r.AuthorizedEntries(agentID.String())
		if err != nil {
			log.Info("sync ended", zap.Error(err))
			return agentStateError(agentID, err)
		}
		bundle, err := r.Bundle(s.td.Name())
		if err != nil {
			return status.Errorf(codes.Internal, "reading bundle: %v", err)
		}
		ws := r.WatchSet()
		index := r.Index()

		var upserted []*sigilv1.Entry
		current := make(map[string]uint64, len(entries))
		for _, e := range entries {
			current[e.Id] = e.ModifyIndex
			if first || sent[e.Id] != e.ModifyIndex {
				upserted = append(upserted, e)
			}
		}
		var deleted []string
		if !first {
			for id := range sent {
				if _, ok := current[id]; !ok {
					deleted = append(deleted, id)
				}
			}
		}
		var sendBundle *sigilv1.Bundle
		if first || bundle.SequenceNumber != bundleSeq {
			sendBundle = bundle
		}
		if first || len(upserted) > 0 || len(deleted) > 0 || sendBundle != nil {
			if err := sendChunked(stream, first, upserted, deleted, sendBundle, index); err != nil {
				return err
			}
		}
		sent = current
		bundleSeq = bundle.SequenceNumber
		first = false

		if err := ws.WatchCtx(ctx); err != nil {
			return nil // stream closed
		}
	}
}

// sendChunked sends one logical update as one or more messages. For a full
// set, the first message has Reset and the last Synced.
func sendChunked(stream sigilv1.Node_SyncServer, full bool, upserted []*sigilv1.Entry, deleted []string, bundle *sigilv1.Bundle, index uint64) error {
	msg := &sigilv1.SyncResponse{Reset_: full, Bundle: bundle, Index: index, Deleted: deleted}
	size := proto.Size(msg)
	flush := func(last bool) error {
		msg.Synced = full && last
		if err := stream.Send(msg); err != nil {
			return err
		}
		msg = &sigilv1.SyncResponse{Index: index}
		size = 0
		return nil
	}
	for _, e := range upserted {
		es := proto.Size(e) + 8
		if len(msg.Upserted) > 0 && (len(msg.Upserted) >= syncChunkEntries || size+es > syncChunkBytes) {
			if err := flush(false); err != nil {
				return err
			}
		}
		msg.Upserted = append(msg.Upserted, e)
		size += es
	}
	return flush(true)
}
