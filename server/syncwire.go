package server

import (
	"sync"
	"weak"

	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // registers the "proto" codec syncCodec wraps
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
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
// syncWireBuilder from entries encoded once for every stream (see
// entryWireCache). The node API's codec (syncCodec) sends it as it is.
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

// entryWireCacheBytes bounds the encoded entries kept for sharing.
const entryWireCacheBytes = 16 << 20

// entryWireCache holds the protobuf encoding of recently sent entries, so
// that a change sent to many sync streams is encoded once. An entry is
// known by its id and modify index, and an encoding is used only for the
// very entry value it was made from (the store's entries are immutable
// values), so a restored snapshot with other entries under the same keys
// gets fresh encodings. The oldest encodings go first when the cache
// holds more than entryWireCacheBytes. The zero value is ready to use.
type entryWireCache struct {
	mu    sync.Mutex
	m     map[entryWireKey]entryWire
	order []entryWireKey // insertion order, oldest first from head
	head  int
	bytes int
}

type entryWireKey struct {
	id          string
	modifyIndex uint64
}

type entryWire struct {
	// e is the entry the encoding was made from, held weakly: the cache
	// must not keep a deleted entry alive.
	e weak.Pointer[sigilv1.Entry]
	b []byte
}

// get returns proto.Marshal(e), shared: the caller must not modify it.
func (c *entryWireCache) get(e *sigilv1.Entry) ([]byte, error) {
	k := entryWireKey{e.Id, e.ModifyIndex}
	c.mu.Lock()
	if w, ok := c.m[k]; ok && w.e.Value() == e {
		c.mu.Unlock()
		return w.b, nil
	}
	c.mu.Unlock()
	b, err := proto.Marshal(e)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[entryWireKey]entryWire)
	}
	if old, ok := c.m[k]; ok {
		c.bytes -= len(old.b)
	} else {
		c.order = append(c.order, k)
	}
	c.m[k] = entryWire{e: weak.Make(e), b: b}
	c.bytes += len(b)
	for c.bytes > entryWireCacheBytes && c.head < len(c.order) {
		old := c.order[c.head]
		c.order[c.head] = entryWireKey{}
		c.head++
		if w, ok := c.m[old]; ok {
			c.bytes -= len(w.b)
			delete(c.m, old)
		}
	}
	if c.head > len(c.order)/2 && c.head > 1024 {
		c.order = append([]entryWireKey(nil), c.order[c.head:]...)
		c.head = 0
	}
	return b, nil
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
