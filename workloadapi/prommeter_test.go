package workloadapi

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc/codes"

	"github.com/sigil-id/sigil/internal/eventually"
)

func newTestPrometheusMeter(t testing.TB) (*PrometheusMeter, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := NewPrometheusMeter(reg)
	if err != nil {
		t.Fatal(err)
	}
	return m, reg
}

// histogram returns the sample count and sum of the latency histogram
// for method, as scraped from reg.
func histogram(t testing.TB, reg prometheus.Gatherer, method string) (uint64, float64) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != MetricLatency {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "method" && l.GetValue() == method {
					return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
				}
			}
		}
	}
	t.Fatalf("no %s series for method %q", MetricLatency, method)
	return 0, 0
}

// TestPrometheusMeterRecords: calls are counted by method and code name,
// the latency of a stream is its first response's and that of a unary
// call its duration, and unknown methods and codes fall into bounded
// values.
func TestPrometheusMeterRecords(t *testing.T) {
	m, reg := newTestPrometheusMeter(t)
	m.CallStarted("FetchX509SVID")
	m.FirstResponse("FetchX509SVID", 2*time.Millisecond)
	m.CallDone("FetchX509SVID", codes.Canceled, time.Hour) // the stream's lifetime: not a latency
	m.FirstResponse("FetchJWTSVID", time.Hour)             // unary: its duration counts, not this
	m.CallDone("FetchJWTSVID", codes.OK, 3*time.Millisecond)
	m.CallDone("FetchJWTSVID", codes.PermissionDenied, time.Millisecond)
	m.CallDone("/some.Other/Method", codes.Unimplemented, time.Millisecond)
	m.CallDone("FetchX509Bundles", codes.Code(99), time.Millisecond)

	want := `
# HELP sigil_agent_workload_api_calls_total Workload API calls ended, by method (the Workload API RPCs, or "other") and gRPC status code.
# TYPE sigil_agent_workload_api_calls_total counter
sigil_agent_workload_api_calls_total{code="Canceled",method="FetchX509SVID"} 1
sigil_agent_workload_api_calls_total{code="OK",method="FetchJWTSVID"} 1
sigil_agent_workload_api_calls_total{code="PermissionDenied",method="FetchJWTSVID"} 1
sigil_agent_workload_api_calls_total{code="Unimplemented",method="other"} 1
sigil_agent_workload_api_calls_total{code="Unknown",method="FetchX509Bundles"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), MetricCalls); err != nil {
		t.Fatal(err)
	}
	if n, sum := histogram(t, reg, "FetchX509SVID"); n != 1 || sum != 0.002 {
		t.Errorf("FetchX509SVID latency: %d samples, sum %v; want 1, 0.002", n, sum)
	}
	if n, sum := histogram(t, reg, "FetchJWTSVID"); n != 2 || sum != 0.004 {
		t.Errorf("FetchJWTSVID latency: %d samples, sum %v; want 2, 0.004", n, sum)
	}
	if n, _ := histogram(t, reg, "FetchX509Bundles"); n != 0 {
		t.Errorf("FetchX509Bundles latency: %d samples of a stream without a first response, want 0", n)
	}
	if n, _ := histogram(t, reg, "other"); n != 1 {
		t.Errorf("other latency: %d samples, want 1", n)
	}
}

// TestPrometheusMeterRegisterTwice: a registry that already holds the
// metrics is an error, not a panic.
func TestPrometheusMeterRegisterTwice(t *testing.T) {
	_, reg := newTestPrometheusMeter(t)
	_, err := NewPrometheusMeter(reg)
	if err == nil || !strings.HasPrefix(err.Error(), "workloadapi: ") {
		t.Fatalf("second registration: err = %v, want a workloadapi error", err)
	}
}

// TestPrometheusMeterDoesNotAllocate: once a method and code have been
// seen, recording a call allocates nothing.
func TestPrometheusMeterDoesNotAllocate(t *testing.T) {
	m, _ := newTestPrometheusMeter(t)
	call := func() {
		m.CallStarted("FetchX509SVID")
		m.FirstResponse("FetchX509SVID", time.Millisecond)
		m.CallDone("FetchX509SVID", codes.Canceled, time.Second)
		m.CallDone("ValidateJWTSVID", codes.OK, time.Millisecond)
	}
	call()
	if n := testing.AllocsPerRun(1000, call); n != 0 {
		t.Fatalf("%v allocations per call, want 0", n)
	}
}

// TestPrometheusMeterOnServer: real calls through a Workload API server
// on a unix socket are counted, and the server reports the connections
// open.
func TestPrometheusMeterOnServer(t *testing.T) {
	m, reg := newTestPrometheusMeter(t)
	f := start(t, func(s *Server) { s.meter = m })
	if n := f.server.Connections(); n != 0 {
		t.Fatalf("%d connections before any client, want 0", n)
	}
	ctx := testCtx(t)
	// No identity yet: PermissionDenied.
	raw := f.rawClient(t)
	stream, err := raw.FetchX509SVID(withHeader(ctx), &workloadpb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	wantCode(t, err, codes.PermissionDenied, "no identity issued")

	f.cache.SetIdentity(uidSelector(os.Geteuid()), f.ca.identity(t, "e1", "/workload"))
	c := f.client(t)
	for range 3 {
		if _, err := c.FetchX509SVID(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := f.server.Connections(); n != 2 {
		t.Errorf("%d connections with two clients connected, want 2", n)
	}
	eventually.NoError(t, 5*time.Second, func() error {
		// The one-shot fetches end when the client cancels them,
		// after the server counted their first response.
		if got := testutil.ToFloat64(m.calls.WithLabelValues("FetchX509SVID", "Canceled")); got != 3 {
			return fmt.Errorf("%v canceled FetchX509SVID calls, want 3", got)
		}
		return nil
	})
	if got := testutil.ToFloat64(m.calls.WithLabelValues("FetchX509SVID", "PermissionDenied")); got != 1 {
		t.Errorf("%v denied FetchX509SVID calls, want 1", got)
	}
	if n, _ := histogram(t, reg, "FetchX509SVID"); n != 3 {
		t.Errorf("%d FetchX509SVID latency samples, want 3 (the denied call had no response)", n)
	}
	c.Close()
	eventually.NoError(t, 5*time.Second, func() error {
		if n := f.server.Connections(); n != 1 {
			return fmt.Errorf("%d connections after one client closed, want 1", n)
		}
		return nil
	})
}

// BenchmarkPrometheusMeterCall is the meter's own cost on one
// FetchX509SVID call: its first response and its end.
func BenchmarkPrometheusMeterCall(b *testing.B) {
	m, _ := newTestPrometheusMeter(b)
	b.ReportAllocs()
	for b.Loop() {
		m.CallStarted("FetchX509SVID")
		m.FirstResponse("FetchX509SVID", 150*time.Microsecond)
		m.CallDone("FetchX509SVID", codes.Canceled, 200*time.Microsecond)
	}
}
