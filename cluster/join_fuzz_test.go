package cluster

import (
	"bytes"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/sigil-id/sigil/internal/clusterpb"
)

// Moved from server/join_fuzz_test.go with the join protocol.

// FuzzJoinHello decodes join messages as a responder receives them and
// runs the checks made before any proof is computed: no panic, and an
// accepted message has a nonce of joinNonceLen bytes and a bounded node
// name, and proofs over it are deterministic and label-separated.
func FuzzJoinHello(f *testing.F) {
	nonce := bytes.Repeat([]byte{7}, joinNonceLen)
	for _, m := range []proto.Message{
		&clusterpb.JoinChallengeRequest{NodeName: "s2", Nonce: nonce},
		&clusterpb.JoinChallengeRequest{NodeName: "", Nonce: nonce},
		&clusterpb.JoinChallengeRequest{NodeName: "a/b", Nonce: nonce[:5]},
		&clusterpb.JoinRequest{NodeName: "s3", ClusterAddress: "127.0.0.1:1", Nonce: nonce, Proof: nonce},
		&clusterpb.JoinRequest{NodeName: strings.Repeat("n", 300), Nonce: nonce},
	} {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0xff, 0xff, 0xff})
	key := bytes.Repeat([]byte{1}, 32)
	ekm := bytes.Repeat([]byte{2}, 32)
	f.Fuzz(func(t *testing.T, data []byte) {
		var ch clusterpb.JoinChallengeRequest
		if proto.Unmarshal(data, &ch) == nil {
			checkFuzzedHello(t, ch.NodeName, ch.Nonce, key, ekm)
		}
		var jr clusterpb.JoinRequest
		if proto.Unmarshal(data, &jr) == nil {
			checkFuzzedHello(t, jr.NodeName, jr.Nonce, key, ekm)
		}
	})
}

func checkFuzzedHello(t *testing.T, node string, nonce, key, ekm []byte) {
	t.Helper()
	if err := checkJoinHello(testTD, node, nonce); err != nil {
		return
	}
	if len(nonce) != joinNonceLen || node == "" || len(node) > joinMaxNodeName || strings.Contains(node, "/") {
		t.Fatalf("accepted node %q, nonce of %d bytes", node, len(nonce))
	}
	r1 := joinMAC(key, joinLabelResponder, testTD.Name(), node, nonce, ekm)
	r2 := joinMAC(key, joinLabelResponder, testTD.Name(), node, nonce, ekm)
	j := joinMAC(key, joinLabelJoiner, testTD.Name(), node, nonce, ekm)
	if len(r1) != 32 || !bytes.Equal(r1, r2) || bytes.Equal(r1, j) {
		t.Fatal("proofs are not deterministic or not label-separated")
	}
}
