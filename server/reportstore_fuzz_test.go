package server

import (
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// FuzzApplyReport feeds arbitrary Node.Report messages, as the wire
// delivers them, to a report store holding a report, with small limits.
// Whatever the input: no panic; a report is either applied, answered
// need_full, or refused with InvalidArgument or ResourceExhausted; a
// need_full or refused report changes nothing; the size accounting and
// the limits hold; and what the store holds passes the contract's bounds
// (listed as it would be to the leader).
func FuzzApplyReport(f *testing.F) {
	seed := func(r *sigilv1.AgentReport) {
		b, err := proto.Marshal(r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	seed(rsFull(1, rsSVID("e1", 100), rsSVID("e2", 200)))
	seed(rsFull(3, rsSVID("e1", 100)))
	seed(rsDelta(2, 1, 2, []*sigilv1.SVIDState{rsSVID("e3", 5)}, "e1"))
	seed(rsDelta(3, 2, 0, nil))
	seed(rsDelta(9, 8, 0, nil, "e2"))
	seed(rsFull(4, rsSVID("e1", 1), rsSVID("e1", 2)))
	seed(&sigilv1.AgentReport{Seq: 2, BaseSeq: 1, AgentSvid: &sigilv1.SVIDState{Serial: "01", LastError: "x"}})
	f.Add([]byte{0xff, 0x01})
	const agent = "spiffe://example.org/sigil/agent/fuzz"
	f.Fuzz(func(t *testing.T, data []byte) {
		r := &sigilv1.AgentReport{}
		if err := proto.Unmarshal(data, r); err != nil {
			return // gRPC refuses it before the handler
		}
		lim := testReportLimits()
		lim.MaxAgentSVIDs = 8
		lim.MaxAgentBytes = 4096
		lim.AnswerBytes = 1024
		st := newReportStore(lim)
		mustApply(t, st, agent, rsFull(1, rsSVID("e1", 100), rsSVID("e2", 200)), rsNow)
		before := st.list(0)
		needFull, err := st.apply(agent, r, rsNow.Add(time.Second))
		rsCheckBytes(t, st)
		switch code := status.Code(err); {
		case err == nil && !needFull:
		case err == nil || code == codes.InvalidArgument || code == codes.ResourceExhausted:
			after := st.list(0)
			if !proto.Equal(before, after) {
				t.Fatalf("need_full %v, err %v, but the store changed", needFull, err)
			}
			return
		default:
			t.Fatalf("unexpected refusal %v", err)
		}
		held := st.list(0)
		if len(held.Reports) != 1 || held.Reports[0].Report == nil {
			t.Fatalf("after an applied report: %v", held)
		}
		got := held.Reports[0].Report
		if err := validateReport(got); err != nil {
			t.Fatalf("held report out of bounds: %v", err)
		}
		if len(got.Svids) > lim.MaxAgentSVIDs || st.bytes > lim.MaxAgentBytes {
			t.Fatalf("limits passed: %d SVIDs, %d bytes", len(got.Svids), st.bytes)
		}
		if got.Seq != r.Seq {
			t.Fatalf("held seq %d after applying %d", got.Seq, r.Seq)
		}
	})
}
