package server

import (
	"math/rand/v2"
	"testing"

	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// FuzzNodeCodecUnmarshal: whatever bytes an agent sends, split into
// frames of whatever size, the node API codec decodes a
// BatchNewX509SVIDRequest exactly as proto.Unmarshal does: the same
// message, or an error when proto.Unmarshal gives one. Inputs are padded
// past wireBufMin so that the pooled path is taken, with the same bytes
// in a buffer reused dirty from the previous input.
func FuzzNodeCodecUnmarshal(f *testing.F) {
	rng := rand.New(rand.NewPCG(5, 6))
	req, _ := batchMessages(rng, 2)
	seed, err := proto.Marshal(req)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed, uint16(100))
	f.Add(seed[:len(seed)-3], uint16(7))
	f.Add([]byte{0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f}, uint16(1))
	c := newSyncCodec()
	f.Fuzz(func(t *testing.T, b []byte, frame uint16) {
		if len(b) > 64<<10 {
			return
		}
		size := 64 + int(frame%4096)
		for _, in := range [][]byte{b, padRequest(b)} {
			var want, got sigilv1.BatchNewX509SVIDRequest
			wantErr := proto.Unmarshal(in, &want)
			gotErr := c.Unmarshal(frames(in, size), &got)
			if (wantErr == nil) != (gotErr == nil) {
				t.Fatalf("%d bytes in frames of %d: codec error %v, proto.Unmarshal's %v", len(in), size, gotErr, wantErr)
			}
			if wantErr == nil && !proto.Equal(&got, &want) {
				t.Fatalf("%d bytes in frames of %d: decoded differently from proto.Unmarshal", len(in), size)
			}
		}
	})
}

// padRequest is b followed by an unknown field of field number 15 (a
// field BatchNewX509SVIDRequest does not have: decoded as unknown bytes)
// that brings it to wireBufMin bytes or more.
func padRequest(b []byte) []byte {
	out := append([]byte(nil), b...)
	out = append(out, 0x7a) // field 15, length-delimited
	n := wireBufMin
	out = append(out, byte(n&0x7f|0x80), byte(n>>7&0x7f|0x80), byte(n>>14))
	return append(out, make([]byte, n)...)
}
