package server

import (
	"fmt"
	"math/bits"
	"sync"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

// The node API's large messages (a BatchNewX509SVID request of hundreds
// of CSRs, about 300 bytes each, and its response of as many
// certificates) go through message buffers of the node API's own pool
// (wireBufs) instead of gRPC's default one. gRPC's proto codec takes a
// buffer for every message over 1 KiB from its default pool, whose tier
// above 32 KiB holds 1 MiB buffers, and clears the whole buffer on every
// Get: each batch cleared 1 MiB twice, for messages of 100 to 300 KiB,
// or, when a garbage collection had emptied the pool, allocated them
// (fresh pages the kernel faults in, and garbage for the next
// collection). See docs/bench.md for what it cost.
//
// wireBufs hands out buffers of the next power of two above the size
// asked for and does not clear them: each is written in full (the
// request copied in, the response marshaled into it) before any byte of
// it is read, and only the bytes written are read, so nothing of an
// earlier message is ever sent or decoded. proto.Unmarshal copies every
// bytes and string field (the buffer is not aliased: protobuf-go only
// aliases with an option gRPC's codec does not set), so a request's
// buffer goes back to the pool as soon as it is decoded.

// Bounds of the buffers wireBufs holds: messages below wireBufMin go
// through gRPC's proto codec as before (its small tiers fit them);
// larger ones get a buffer of a power of two up to wireBufMax, and the
// rare message above that (the node API refuses requests above
// nodeLimits.MaxRecvMsgSize, 4 MiB by default) an unpooled one.
const (
	wireBufMinShift = 15 // 32 KiB
	wireBufMaxShift = 22 // 4 MiB
	wireBufMin      = 1 << wireBufMinShift
	wireBufMax      = 1 << wireBufMaxShift
)

// wireBufPool is a pool of message buffers by power-of-two capacity,
// from wireBufMin to wireBufMax. Its buffers are not cleared (see
// above). It implements mem.BufferPool, so that gRPC gives a response's
// buffer back once the response is written. Like gRPC's own pools it is
// made of sync.Pools: the garbage collector frees buffers no call uses.
type wireBufPool struct {
	classes [wireBufMaxShift - wireBufMinShift + 1]sync.Pool
}

// wireBufs is the node API codec's buffer pool.
var wireBufs = &wireBufPool{}

// wireBufClass is the index i of the pool, of buffers of capacity
// 1<<(wireBufMinShift+i), that a buffer of n bytes comes from; -1 above
// wireBufMax.
func wireBufClass(n int) int {
	switch {
	case n > wireBufMax:
		return -1
	case n <= wireBufMin:
		return 0
	}
	return bits.Len(uint(n-1)) - wireBufMinShift
}

// Get returns a buffer of length n whose contents are undefined: the
// caller writes all n bytes before it reads any.
func (p *wireBufPool) Get(n int) *[]byte {
	c := wireBufClass(n)
	if c < 0 {
		b := make([]byte, n)
		return &b
	}
	if b, ok := p.classes[c].Get().(*[]byte); ok {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<(wireBufMinShift+c))
	return &b
}

// Put gives b back. A buffer whose capacity is not one of the pool's
// classes (an unpooled one, or one a marshal grew) is dropped.
func (p *wireBufPool) Put(b *[]byte) {
	c := cap(*b)
	if c < wireBufMin || c > wireBufMax || c&(c-1) != 0 {
		return
	}
	*b = (*b)[:0]
	p.classes[bits.Len(uint(c))-1-wireBufMinShift].Put(b)
}

// marshalPooled encodes m into a buffer of wireBufs, size being
// proto.Size(m) just computed (so that the encoding reuses the sizes it
// cached). The returned slice holds the buffer until gRPC frees it.
func marshalPooled(m proto.Message, size int) (mem.BufferSlice, error) {
	buf := wireBufs.Get(size)
	out, err := proto.MarshalOptions{UseCachedSize: true}.MarshalAppend((*buf)[:0], m)
	if err != nil {
		wireBufs.Put(buf)
		return nil, fmt.Errorf("server: encoding %T: %w", m, err)
	}
	if len(out) != size {
		// The message changed between Size and Marshal: a bug of the
		// caller, which must not be sent half encoded.
		wireBufs.Put(buf)
		return nil, fmt.Errorf("server: encoding %T: %d bytes written, %d expected", m, len(out), size)
	}
	*buf = out
	return mem.BufferSlice{mem.NewBuffer(buf, wireBufs)}, nil
}

// unmarshalPooled decodes data, of n bytes in several buffers, into m
// through a contiguous buffer of wireBufs, given back once m is decoded
// (m holds copies of what it needs).
func unmarshalPooled(data mem.BufferSlice, n int, m proto.Message) error {
	buf := wireBufs.Get(n)
	defer wireBufs.Put(buf)
	if got := data.CopyTo(*buf); got != n {
		return fmt.Errorf("server: decoding %T: %d bytes copied of %d", m, got, n)
	}
	if err := proto.Unmarshal(*buf, m); err != nil {
		return fmt.Errorf("server: decoding %T: %w", m, err)
	}
	return nil
}
