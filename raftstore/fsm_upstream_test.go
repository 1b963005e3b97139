package raftstore

import (
	"bytes"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/internal/storepb"
)

func setRoots(replace bool, ders ...[]byte) *storepb.Command {
	return &storepb.Command{Op: &storepb.Command_SetUpstreamRoots{SetUpstreamRoots: &storepb.SetUpstreamRoots{
		TrustDomain: "example.org", Certificates: ders, Replace: replace,
	}}}
}

func putIntermediate(serverID string, der []byte) *storepb.Command {
	return &storepb.Command{Op: &storepb.Command_PutX509Authority{PutX509Authority: &storepb.PutX509Authority{
		TrustDomain: "example.org",
		Authority:   &sigilv1.X509Authority{Certificate: der, ServerId: serverID, Intermediate: true},
	}}}
}

// upstreamCerts returns the DER of the bundle row's upstream roots.
func upstreamCerts(t *testing.T, tf *testFSM) [][]byte {
	t.Helper()
	pb, err := tf.f.reader().PeerBundle("example.org")
	if err != nil {
		return nil
	}
	var out [][]byte
	for _, a := range pb.X509Authorities {
		if a.Upstream {
			if a.ServerId != "" {
				t.Fatalf("upstream root with server_id %q", a.ServerId)
			}
			out = append(out, a.Certificate)
		}
	}
	return out
}

func hasDER(list [][]byte, der []byte) bool {
	for _, d := range list {
		if bytes.Equal(d, der) {
			return true
		}
	}
	return false
}

func TestSetUpstreamRoots(t *testing.T) {
	tf := newTestFSM(t)
	r1 := makeCert(t, true, t0.Add(24*time.Hour))
	r2 := makeCert(t, true, t0.Add(48*time.Hour))
	r3 := makeCert(t, true, t0.Add(72*time.Hour))
	inter := makeCert(t, true, t0.Add(12*time.Hour))

	if code := tf.single(setRoots(false, r1, r1)); code != codes.OK {
		t.Fatalf("add: %v", code)
	}
	if got := upstreamCerts(t, tf); len(got) != 1 || !bytes.Equal(got[0], r1) {
		t.Fatalf("after add: %d roots", len(got))
	}
	// Adding what is there changes nothing, not even the sequence number.
	pb, _ := tf.f.reader().PeerBundle("example.org")
	seq := pb.SequenceNumber
	if code := tf.single(setRoots(false, r1)); code != codes.OK {
		t.Fatalf("re-add: %v", code)
	}
	if pb, _ := tf.f.reader().PeerBundle("example.org"); pb.SequenceNumber != seq {
		t.Fatalf("an unchanged set bumped the sequence number %d → %d", seq, pb.SequenceNumber)
	}
	if code := tf.single(setRoots(false, r2)); code != codes.OK {
		t.Fatalf("add second: %v", code)
	}
	if got := upstreamCerts(t, tf); len(got) != 2 || !hasDER(got, r1) || !hasDER(got, r2) {
		t.Fatalf("add keeps the old roots: %d roots", len(got))
	}

	// A server's intermediate CA is in the row but not among the trust
	// anchors of the workload bundle.
	if code := tf.single(putIntermediate("a", inter)); code != codes.OK {
		t.Fatalf("intermediate: %v", code)
	}
	wb, err := tf.f.reader().Bundle("example.org")
	if err != nil {
		t.Fatal(err)
	}
	if len(wb.X509Authorities) != 2 || len(wb.X509Intermediates) != 1 || !bytes.Equal(wb.X509Intermediates[0].Certificate, inter) {
		t.Fatalf("workload bundle: %d anchors, %d intermediates", len(wb.X509Authorities), len(wb.X509Intermediates))
	}
	for _, a := range wb.X509Authorities {
		if !a.Upstream {
			t.Fatal("a non-upstream authority among the anchors")
		}
	}

	// Replace mirrors the upstream: r1 leaves, r3 comes.
	if code := tf.single(setRoots(true, r2, r3)); code != codes.OK {
		t.Fatalf("replace: %v", code)
	}
	if got := upstreamCerts(t, tf); len(got) != 2 || hasDER(got, r1) || !hasDER(got, r3) {
		t.Fatalf("after replace: %d roots", len(got))
	}
	peer, _ := tf.f.reader().PeerBundle("example.org")
	found := false
	for _, a := range peer.X509Authorities {
		found = found || (bytes.Equal(a.Certificate, inter) && a.Intermediate && a.ServerId == "a")
	}
	if !found {
		t.Fatal("replacing the roots dropped the server's intermediate")
	}

	// Refusals change nothing.
	before := snapshotBytes(t, tf.f)
	leaf := makeCert(t, false, t0.Add(time.Hour))
	expired := makeCert(t, true, t0.Add(-time.Hour))
	many := make([][]byte, MaxUpstreamRoots+1)
	for i := range many {
		many[i] = r1
	}
	for name, tc := range map[string]struct {
		cmd  *storepb.Command
		want codes.Code
	}{
		"not a CA":        {setRoots(false, leaf), codes.InvalidArgument},
		"garbage":         {setRoots(false, []byte("junk")), codes.InvalidArgument},
		"expired":         {setRoots(false, expired), codes.InvalidArgument},
		"too many":        {setRoots(false, many...), codes.InvalidArgument},
		"all removed":     {setRoots(true), codes.FailedPrecondition},
		"other domain":    {&storepb.Command{Op: &storepb.Command_SetUpstreamRoots{SetUpstreamRoots: &storepb.SetUpstreamRoots{TrustDomain: "other.org", Certificates: [][]byte{r1}}}}, codes.InvalidArgument},
		"put as upstream": {&storepb.Command{Op: &storepb.Command_PutX509Authority{PutX509Authority: &storepb.PutX509Authority{TrustDomain: "example.org", Authority: &sigilv1.X509Authority{Certificate: r1, ServerId: "a", Upstream: true}}}}, codes.InvalidArgument},
		"taint upstream":  {raTaint(raID(t, r2)), codes.FailedPrecondition},
		"revoke upstream": {raRevoke(raID(t, r2)), codes.FailedPrecondition},
	} {
		if code := tf.single(tc.cmd); code != tc.want {
			t.Errorf("%s: %v, want %v", name, code, tc.want)
		}
	}
	if !bytes.Equal(before, snapshotBytes(t, tf.f)) {
		t.Fatal("a refused command changed the state")
	}

	// Roots survive a snapshot and restore.
	f2 := newFSM(td, nil)
	var buf bytes.Buffer
	if err := writeSnapshot(&buf, tf.f.state.Load().db.Txn(false), tf.index); err != nil {
		t.Fatal(err)
	}
	if err := f2.Restore(nopCloser{&buf}); err != nil {
		t.Fatal(err)
	}
	pb2, err := f2.reader().Bundle("example.org")
	if err != nil || len(pb2.X509Authorities) != 2 || len(pb2.X509Intermediates) != 1 {
		t.Fatalf("after restore: %v, %d anchors", err, len(pb2.GetX509Authorities()))
	}
}
