package workloadapi

import (
	"bytes"
	"testing"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/protobuf/proto"
)

// TestWireEncoding: the wire form of an X509SVIDResponse decodes to the
// same message, byte for byte what proto.Marshal produces when that is
// deterministic, and its private keys are the response's own bytes, not
// copies.
func TestWireEncoding(t *testing.T) {
	key1, key2 := bytes.Repeat([]byte{0xa1}, 138), bytes.Repeat([]byte{0xb2}, 300)
	for name, resp := range map[string]*workloadpb.X509SVIDResponse{
		"empty": {},
		"one": {Svids: []*workloadpb.X509SVID{{
			SpiffeId: "spiffe://example.org/a", X509Svid: bytes.Repeat([]byte{1}, 500),
			X509SvidKey: key1, Bundle: bytes.Repeat([]byte{2}, 400), Hint: "internal",
		}}},
		"several, empty fields, federated, CRLs": {
			Svids: []*workloadpb.X509SVID{
				{SpiffeId: "spiffe://example.org/a", X509Svid: []byte{1, 2, 3}, X509SvidKey: key1},
				{SpiffeId: "spiffe://example.org/" + string(bytes.Repeat([]byte{'b'}, 200)), X509Svid: bytes.Repeat([]byte{3}, 70000), X509SvidKey: key2, Bundle: []byte{4}},
				{},
			},
			Crl: [][]byte{{9, 9}, {}},
			FederatedBundles: map[string][]byte{
				"spiffe://partner.test": bytes.Repeat([]byte{5}, 1000),
				"spiffe://other.test":   {6},
				"spiffe://empty.test":   {},
			},
		},
	} {
		t.Run(name, func(t *testing.T) {
			w := encodeX509SVIDResponse(resp)
			var got []byte
			keys := 0
			for _, b := range w.buffers() {
				d := b.ReadOnlyData()
				got = append(got, d...)
				for _, k := range [][]byte{key1, key2} {
					if len(d) > 0 && &d[0] == &k[0] {
						keys++
					}
				}
			}
			var back workloadpb.X509SVIDResponse
			if err := proto.Unmarshal(got, &back); err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(&back, resp) {
				t.Fatalf("decodes to %v, want %v", &back, resp)
			}
			if len(resp.FederatedBundles) <= 1 {
				want, err := proto.Marshal(resp)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, want) {
					t.Fatal("wire form differs from proto.Marshal")
				}
			}
			wantKeys := 0
			for _, s := range resp.Svids {
				if len(s.X509SvidKey) > 0 {
					wantKeys++
				}
			}
			if keys != wantKeys {
				t.Fatalf("%d keys referenced in place, want %d", keys, wantKeys)
			}
		})
	}
}

// TestWireCodec: the server's codec sends a wireMessage as it is and
// anything else as the proto codec does.
func TestWireCodec(t *testing.T) {
	c := newWireCodec()
	msg := &workloadpb.X509BundlesResponse{Bundles: map[string][]byte{"spiffe://example.org": {1, 2}}}
	out, err := c.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := proto.MarshalOptions{Deterministic: true}.Marshal(msg)
	if !bytes.Equal(out.Materialize(), want) {
		t.Fatal("a proto message is not encoded as by the proto codec")
	}
	resp := &workloadpb.X509SVIDResponse{Svids: []*workloadpb.X509SVID{{SpiffeId: "spiffe://example.org/a", X509Svid: []byte{1}}}}
	out, err = c.Marshal(encodeX509SVIDResponse(resp))
	if err != nil {
		t.Fatal(err)
	}
	want, _ = proto.Marshal(resp)
	if !bytes.Equal(out.Materialize(), want) {
		t.Fatal("a wire message is not sent as it is")
	}
	var back workloadpb.X509SVIDResponse
	if err := c.Unmarshal(out, &back); err != nil || !proto.Equal(&back, resp) {
		t.Fatalf("Unmarshal: %v", err)
	}
}
