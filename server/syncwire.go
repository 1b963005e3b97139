package server

import (
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // registers the "proto" codec syncCodec wraps
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

// Field numbers of sigilv1.SyncResponse.
const (
	syncFieldReset            protowire.Number = 1
	syncFieldSynced           protowire.Number = 2
	syncFieldUpserted         protowire.Number = 3
	syncFieldDeleted          protowire.Number = 4
	syncFieldBundle           protowire.Number = 5
	syncFieldIndex            protowire.Number = 6
	syncFieldFederatedBundles protowire.Number = 7
	syncFieldRemovedFederated protowire.Number = 8
)

// syncWire is a SyncResponse already in its protobuf wire form, built by
// syncWireBuilder from the store's records of the entries
// (raftstore.SyncEntry.Wire). The node API's codec (syncCodec) sends it as
// it is.
type syncWire struct {
	b []byte
}

// syncCodec is the node API server's gRPC codec: the standard "proto"
// codec, except that a *syncWire is sent as the bytes it already is.
// Requests, and every other response, go through the proto codec
// unchanged.
type syncCodec struct{ encoding.CodecV2 }

func newSyncCodec() syncCodec { return syncCodec{encoding.GetCodecV2("proto")} }

// Marshal implements encoding.CodecV2.
func (c syncCodec) Marshal(v any) (mem.BufferSlice, error) {
	if w, ok := v.(*syncWire); ok {
		return mem.BufferSlice{mem.SliceBuffer(w.b)}, nil
	}
	return c.CodecV2.Marshal(v)
}

// syncWireBuilder assembles one SyncResponse in wire form, fields in
// field number order, which is how proto.Marshal writes them: the bytes
// are those proto.Marshal would give for the same message.
type syncWireBuilder struct {
	reset, synced bool
	upserted      [][]byte
	upsertedSize  int
	deleted       []string
	hasBundle     bool
	bundle        []byte
	index         uint64
	fed           [][]byte
	fedSize       int
	removed       []string
}

func lenField(n int) int {
	return protowire.SizeTag(1) + protowire.SizeBytes(n) // field numbers 1-15 take one byte
}

func (w *syncWireBuilder) addEntry(b []byte) {
	w.upserted = append(w.upserted, b)
	w.upsertedSize += lenField(len(b))
}

func (w *syncWireBuilder) addFederated(b []byte) {
	w.fed = append(w.fed, b)
	w.fedSize += lenField(len(b))
}

// size is the encoded size so far.
func (w *syncWireBuilder) size() int {
	n := w.upsertedSize + w.fedSize
	if w.reset {
		n += 2
	}
	if w.synced {
		n += 2
	}
	for _, d := range w.deleted {
		n += lenField(len(d))
	}
	if w.hasBundle {
		n += lenField(len(w.bundle))
	}
	if w.index != 0 {
		n += protowire.SizeTag(syncFieldIndex) + protowire.SizeVarint(w.index)
	}
	for _, r := range w.removed {
		n += lenField(len(r))
	}
	return n
}

func (w *syncWireBuilder) build() *syncWire {
	b := make([]byte, 0, w.size())
	if w.reset {
		b = protowire.AppendTag(b, syncFieldReset, protowire.VarintType)
		b = protowire.AppendVarint(b, 1)
	}
	if w.synced {
		b = protowire.AppendTag(b, syncFieldSynced, protowire.VarintType)
		b = protowire.AppendVarint(b, 1)
	}
	for _, e := range w.upserted {
		b = protowire.AppendTag(b, syncFieldUpserted, protowire.BytesType)
		b = protowire.AppendBytes(b, e)
	}
	for _, d := range w.deleted {
		b = protowire.AppendTag(b, syncFieldDeleted, protowire.BytesType)
		b = protowire.AppendString(b, d)
	}
	if w.hasBundle {
		b = protowire.AppendTag(b, syncFieldBundle, protowire.BytesType)
		b = protowire.AppendBytes(b, w.bundle)
	}
	if w.index != 0 {
		b = protowire.AppendTag(b, syncFieldIndex, protowire.VarintType)
		b = protowire.AppendVarint(b, w.index)
	}
	for _, f := range w.fed {
		b = protowire.AppendTag(b, syncFieldFederatedBundles, protowire.BytesType)
		b = protowire.AppendBytes(b, f)
	}
	for _, r := range w.removed {
		b = protowire.AppendTag(b, syncFieldRemovedFederated, protowire.BytesType)
		b = protowire.AppendString(b, r)
	}
	return &syncWire{b: b}
}
