package server

import (
	"bytes"
	"math/rand/v2"
	"strconv"
	"testing"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// batchMessages are a BatchNewX509SVID request and response of n CSRs
// and certificates of random bytes, of the sizes the node API sees (CSRs
// of about 240 bytes, certificates of about 600).
func batchMessages(rng *rand.Rand, n int) (*sigilv1.BatchNewX509SVIDRequest, *sigilv1.BatchNewX509SVIDResponse) {
	req := &sigilv1.BatchNewX509SVIDRequest{}
	resp := &sigilv1.BatchNewX509SVIDResponse{}
	fill := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	for i := range n {
		id := "entry-" + strconv.Itoa(i)
		req.Requests = append(req.Requests, &sigilv1.X509SVIDRequest{EntryId: id, Csr: fill(200 + rng.IntN(80))})
		resp.Results = append(resp.Results, &sigilv1.X509SVIDResult{EntryId: id, Status: &sigilv1.Status{},
			Chain: [][]byte{fill(550 + rng.IntN(100))}, ExpiresAt: rng.Int64()})
	}
	return req, resp
}

// frames splits b into buffers of at most size bytes (sharing b's
// memory), as gRPC hands a message received in several HTTP/2 frames to
// the codec.
func frames(b []byte, size int) mem.BufferSlice {
	s := make(mem.BufferSlice, 0, (len(b)+size-1)/size)
	for len(b) > 0 {
		n := min(size, len(b))
		s = append(s, mem.SliceBuffer(b[:n:n]))
		b = b[n:]
	}
	return s
}

// TestWireBufPool: buffers of the asked length in power-of-two classes
// from 32 KiB to 4 MiB, given back and handed out again; buffers of
// other capacities are not kept.
func TestWireBufPool(t *testing.T) {
	p := &wireBufPool{}
	for _, c := range []struct{ n, cap int }{
		{1, wireBufMin}, {wireBufMin, wireBufMin}, {wireBufMin + 1, 2 * wireBufMin},
		{300 << 10, 512 << 10}, {wireBufMax, wireBufMax}, {wireBufMax + 1, wireBufMax + 1},
	} {
		b := p.Get(c.n)
		if len(*b) != c.n || cap(*b) != c.cap {
			t.Errorf("Get(%d): len %d cap %d, want len %d cap %d", c.n, len(*b), cap(*b), c.n, c.cap)
		}
	}
	// A buffer given back is handed out again, dirty. sync.Pool may drop
	// one (the race detector drops a quarter of them): ten tries.
	reused := false
	for range 10 {
		b := p.Get(100 << 10)
		(*b)[0] = 0x5a
		p.Put(b)
		if b2 := p.Get(90 << 10); cap(*b2) == 128<<10 && len(*b2) == 90<<10 && (*b2)[0] == 0x5a {
			reused = true
			break
		}
	}
	if !reused {
		t.Error("a buffer given back was never handed out again")
	}
	// Capacities that are not a class are dropped, not filed under one.
	odd := make([]byte, 0, 100<<10)
	p.Put(&odd)
	big := make([]byte, 0, 2*wireBufMax)
	p.Put(&big)
	for range 10 {
		if b := p.Get(64 << 10); cap(*b) != 64<<10 {
			t.Fatalf("Get(64 KiB) has capacity %d", cap(*b))
		}
	}
}

// TestNodeCodecLargeMessages: the node API codec encodes a large
// response to the bytes proto.Marshal gives, reusing a buffer of an
// earlier, longer message without sending any of its bytes, and decodes
// a large request received in many frames to the message sent; the
// decoded message holds no reference to the pooled buffer (scribbling
// over it changes nothing).
func TestNodeCodecLargeMessages(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	c := newSyncCodec()
	req, resp := batchMessages(rng, 500)
	_, smaller := batchMessages(rng, 400)
	for i, m := range []*sigilv1.BatchNewX509SVIDResponse{resp, smaller, resp} {
		want, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if len(want) < wireBufMin {
			t.Fatalf("test message of %d bytes is below the pooled size", len(want))
		}
		bs, err := c.Marshal(m)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if got := bs.Materialize(); !bytes.Equal(got, want) {
			t.Fatalf("message %d: %d bytes encoded, differing from proto.Marshal's %d", i, len(got), len(want))
		}
		bs.Free() // back to the pool, as gRPC does once written
	}

	wire, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{16 << 10, 1000, len(wire)} {
		var got sigilv1.BatchNewX509SVIDRequest
		if err := c.Unmarshal(frames(wire, size), &got); err != nil {
			t.Fatalf("frames of %d: %v", size, err)
		}
		if !proto.Equal(&got, req) {
			t.Fatalf("frames of %d: decoded message differs from the one sent", size)
		}
		// Scribble over every buffer the pool hands out now: the
		// decoded message must not share memory with them.
		for range 4 {
			b := wireBufs.Get(len(wire))
			for i := range *b {
				(*b)[i] = 0xff
			}
			defer wireBufs.Put(b)
		}
		if !proto.Equal(&got, req) {
			t.Fatalf("frames of %d: the decoded message changed with the pooled buffer", size)
		}
	}

	// A truncated request is an error, as with the proto codec.
	var bad sigilv1.BatchNewX509SVIDRequest
	if err := c.Unmarshal(frames(wire[:len(wire)-7], 16<<10), &bad); err == nil {
		t.Fatal("a truncated request decoded without error")
	}
	// Small messages take the proto codec's path and read the same.
	small := &sigilv1.X509SVIDRequest{EntryId: "e", Csr: []byte{1, 2, 3}}
	bs, err := c.Marshal(small)
	want, _ := proto.Marshal(small)
	if err != nil || !bytes.Equal(bs.Materialize(), want) {
		t.Fatalf("small message: %x %v", bs.Materialize(), err)
	}
	var back sigilv1.X509SVIDRequest
	if err := c.Unmarshal(frames(want, 2), &back); err != nil || !proto.Equal(&back, small) {
		t.Fatalf("small message in frames: %v %v", &back, err)
	}
}

// BenchmarkNodeCodecBatch encodes a response and decodes a request of a
// batch of 500, as the node API server does for each BatchNewX509SVID
// call: with the node API's codec and with gRPC's proto codec (the
// previous one), for B/op and ns/op side by side.
func BenchmarkNodeCodecBatch(b *testing.B) {
	rng := rand.New(rand.NewPCG(3, 4))
	req, resp := batchMessages(rng, 500)
	wire, err := proto.Marshal(req)
	if err != nil {
		b.Fatal(err)
	}
	in := frames(wire, 16<<10)
	for _, c := range []struct {
		name  string
		codec encoding.CodecV2
	}{{"node", newSyncCodec()}, {"proto", encoding.GetCodecV2("proto")}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				var got sigilv1.BatchNewX509SVIDRequest
				if err := c.codec.Unmarshal(in, &got); err != nil {
					b.Fatal(err)
				}
				bs, err := c.codec.Marshal(resp)
				if err != nil {
					b.Fatal(err)
				}
				bs.Free()
			}
		})
	}
}
