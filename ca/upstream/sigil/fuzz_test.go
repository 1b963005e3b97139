package sigil

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/mtls/mtlstest"
)

// FuzzParseResponse: any MintX509CA answer (the wire bytes of the
// message) is parsed without panic, within the bounds on its chain and
// roots, and an answer that parses is checked without panic.
func FuzzParseResponse(f *testing.F) {
	c := mtlstest.NewCA("example.org")
	good, _ := proto.Marshal(&sigilv1.MintX509CAResponse{CaChain: [][]byte{c.SVID("spiffe://example.org/x", time.Hour).Certificates[0].Raw}, Roots: [][]byte{c.Cert().Raw}})
	f.Add(good)
	f.Add([]byte{})
	tooMany, _ := proto.Marshal(&sigilv1.MintX509CAResponse{CaChain: make([][]byte, ca.MaxUpstreamChain+1)})
	f.Add(tooMany)
	f.Add([]byte{0x0a, 0x03, 0x30, 0x01, 0x00})
	key := newKey(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		var msg sigilv1.MintX509CAResponse
		if err := proto.Unmarshal(data, &msg); err != nil {
			return
		}
		resp, err := ParseResponse(&msg)
		if err != nil {
			return
		}
		if len(resp.Chain) > ca.MaxUpstreamChain || len(resp.Roots) > ca.MaxUpstreamRoots {
			t.Fatalf("accepted %d chain certificates and %d roots", len(resp.Chain), len(resp.Roots))
		}
		if ca.CheckUpstreamResponse(resp, td, key.Public(), time.Now()) == nil {
			t.Fatal("an answer for another key passed the checks")
		}
	})
}
