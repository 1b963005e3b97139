package workloadapi

import (
	"slices"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // registers the "proto" codec wireCodec wraps
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

// wireMessage is a response already in its protobuf wire form: segments
// that concatenate to it. The server's codec (wireCodec) sends it as it
// is, so a response shared by many streams is encoded once, not on every
// send. Its segments are never modified. The large fields (certificate
// chains, private keys, bundles) are not copied: their segments are the
// byte slices the response message references, which for the agent's
// cache are where the cache holds them.
type wireMessage struct {
	bufs []mem.Buffer
}

// buffers returns the message as a BufferSlice of its own (gRPC may
// reslice it), sharing the segments.
func (w *wireMessage) buffers() mem.BufferSlice {
	return mem.BufferSlice(slices.Clone(w.bufs))
}

// wireWriter builds a wireMessage: small fields (tags, lengths, strings)
// are appended to a scratch segment, large byte fields are referenced.
type wireWriter struct {
	bufs []mem.Buffer
	cur  []byte
}

func (w *wireWriter) flush() {
	if len(w.cur) > 0 {
		w.bufs = append(w.bufs, mem.SliceBuffer(w.cur))
		w.cur = nil
	}
}

// tagLen writes the tag of length-delimited field num and length n.
func (w *wireWriter) tagLen(num protowire.Number, n int) {
	w.cur = protowire.AppendTag(w.cur, num, protowire.BytesType)
	w.cur = protowire.AppendVarint(w.cur, uint64(n))
}

// str writes string field num, copied, unless it is empty (proto3).
func (w *wireWriter) str(num protowire.Number, s string) {
	if s == "" {
		return
	}
	w.tagLen(num, len(s))
	w.cur = append(w.cur, s...)
}

// ref writes bytes field num by reference, unless it is empty (proto3).
func (w *wireWriter) ref(num protowire.Number, b []byte) {
	if len(b) == 0 {
		return
	}
	w.refAlways(num, b)
}

// refAlways writes bytes field num by reference, even when empty.
func (w *wireWriter) refAlways(num protowire.Number, b []byte) {
	w.tagLen(num, len(b))
	if len(b) == 0 {
		return
	}
	w.flush()
	w.bufs = append(w.bufs, mem.SliceBuffer(b))
}

func (w *wireWriter) done() *wireMessage {
	w.flush()
	return &wireMessage{bufs: w.bufs}
}

// sizeStr and sizeBytes are the encoded sizes of a non-repeated string or
// bytes field (zero when empty: proto3 leaves it out).
func sizeStr(num protowire.Number, s string) int { return sizeBytes(num, len(s)) }

func sizeBytes(num protowire.Number, n int) int {
	if n == 0 {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeBytes(n)
}

// encodeX509SVIDResponse returns the wire form of resp, which decodes to
// a message equal to resp. resp's byte fields are referenced by the
// result and must not be modified.
func encodeX509SVIDResponse(resp *workloadpb.X509SVIDResponse) *wireMessage {
	var w wireWriter
	for _, s := range resp.GetSvids() {
		n := sizeStr(1, s.SpiffeId) + sizeBytes(2, len(s.X509Svid)) + sizeBytes(3, len(s.X509SvidKey)) +
			sizeBytes(4, len(s.Bundle)) + sizeStr(5, s.Hint)
		w.tagLen(1, n)
		w.str(1, s.SpiffeId)
		w.ref(2, s.X509Svid)
		w.ref(3, s.X509SvidKey)
		w.ref(4, s.Bundle)
		w.str(5, s.Hint)
	}
	for _, crl := range resp.GetCrl() {
		w.refAlways(2, crl)
	}
	fed := resp.GetFederatedBundles()
	tds := make([]string, 0, len(fed))
	for td := range fed {
		tds = append(tds, td)
	}
	slices.Sort(tds)
	for _, td := range tds {
		der := fed[td]
		w.tagLen(3, protowire.SizeTag(1)+protowire.SizeBytes(len(td))+protowire.SizeTag(2)+protowire.SizeBytes(len(der)))
		w.tagLen(1, len(td))
		w.cur = append(w.cur, td...)
		w.refAlways(2, der)
	}
	return w.done()
}

// wireCodec is the gRPC codec of the server: the standard "proto" codec,
// except that a *wireMessage is sent as the bytes it already is.
// Requests, and every other response (SDS's included), go through the
// proto codec unchanged.
type wireCodec struct{ encoding.CodecV2 }

func newWireCodec() wireCodec { return wireCodec{encoding.GetCodecV2("proto")} }

// Marshal implements encoding.CodecV2.
func (c wireCodec) Marshal(v any) (mem.BufferSlice, error) {
	if w, ok := v.(*wireMessage); ok {
		return w.buffers(), nil
	}
	return c.CodecV2.Marshal(v)
}
