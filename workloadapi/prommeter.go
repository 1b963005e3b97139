package workloadapi

import (
	"fmt"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
)

// Names of the metrics PrometheusMeter records (docs/metrics.md).
const (
	MetricCalls   = "sigil_agent_workload_api_calls_total"
	MetricLatency = "sigil_agent_workload_api_seconds"

	MetricSDSRefused  = "sigil_agent_sds_resources_refused_total"
	MetricSDSRejected = "sigil_agent_sds_rejected_total"
)

// The method label's values: the Workload API's RPCs, and methodOther for
// anything else (the label stays bounded whatever a client calls).
const methodOther = "other"

// apiMethods are the Workload API's RPCs; stream marks the server
// streams, whose latency is that of their first response.
var apiMethods = [...]struct {
	name   string
	stream bool
}{
	{"FetchX509SVID", true},
	{"FetchX509Bundles", true},
	{"FetchJWTSVID", false},
	{"FetchJWTBundles", true},
	{"ValidateJWTSVID", false},
	{"StreamSecrets", true},
	{"DeltaSecrets", true},
	{"FetchSecrets", false},
	{methodOther, false},
}

// methodIndex is the index of method in apiMethods; unknown methods are
// methodOther, the last.
func methodIndex(method string) int {
	switch method {
	case "FetchX509SVID":
		return 0
	case "FetchX509Bundles":
		return 1
	case "FetchJWTSVID":
		return 2
	case "FetchJWTBundles":
		return 3
	case "ValidateJWTSVID":
		return 4
	case "StreamSecrets":
		return 5
	case "DeltaSecrets":
		return 6
	case "FetchSecrets":
		return 7
	}
	return len(apiMethods) - 1
}

// numCodes is the number of gRPC status codes (OK through
// Unauthenticated); a code outside them is counted as Unknown.
const numCodes = int(codes.Unauthenticated) + 1

// latencyBuckets are the buckets of the latency histogram, in seconds:
// from 100µs (a cached SVID) to 10s (a workload waiting for its first
// SVID to be minted).
var latencyBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// PrometheusMeter is a Meter that records the Workload API's calls as
// Prometheus metrics:
//
//   - sigil_agent_workload_api_calls_total{method,code}: calls ended, by
//     RPC (the five Workload API methods, or "other") and gRPC status code
//     name ("OK", "PermissionDenied", ...);
//   - sigil_agent_workload_api_seconds{method}: the latency a workload
//     sees: for the streams (FetchX509SVID, FetchX509Bundles,
//     FetchJWTBundles) the time to their first response, for unary calls
//     the call's duration whatever its outcome. A stream that ends before
//     its first response (a caller without identity) is counted in the
//     calls but not in the histogram;
//   - sigil_agent_sds_resources_refused_total{reason}: SDS resource names
//     asked for and not served, "not_entitled" or "invalid" (SDSMeter);
//   - sigil_agent_sds_rejected_total: SDS responses a client rejected.
//
// The method label counts the SDS methods (StreamSecrets, DeltaSecrets,
// FetchSecrets) beside the Workload API's. The labels take values from
// fixed sets. Every series it records on a
// call is resolved once and kept, so that a call costs a few atomic
// operations and no allocation.
type PrometheusMeter struct {
	calls   *prometheus.CounterVec
	latency *prometheus.HistogramVec
	methods [len(apiMethods)]methodMetrics

	sdsNotEntitled, sdsInvalid, sdsRejected prometheus.Counter
}

// methodMetrics are one method's resolved series.
type methodMetrics struct {
	stream  bool
	latency prometheus.Observer
	// codes are the call counters by code, resolved at the first call
	// that ends with that code, so that only codes that happened are
	// exported.
	codes [numCodes]atomic.Pointer[counterRef]
}

type counterRef struct{ c prometheus.Counter }

var (
	_ Meter    = (*PrometheusMeter)(nil)
	_ SDSMeter = (*PrometheusMeter)(nil)
)

// NewPrometheusMeter returns a PrometheusMeter whose metrics are
// registered with reg.
func NewPrometheusMeter(reg prometheus.Registerer) (*PrometheusMeter, error) {
	m := &PrometheusMeter{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricCalls,
			Help: "Workload API calls ended, by method (the Workload API RPCs, or \"other\") and gRPC status code.",
		}, []string{"method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: MetricLatency,
			Help: "Workload API latency by method: time to the first response for streams " +
				"(FetchX509SVID, FetchX509Bundles, FetchJWTBundles), call duration for unary calls.",
			Buckets: latencyBuckets,
		}, []string{"method"}),
	}
	for i, am := range apiMethods {
		m.methods[i].stream = am.stream
		m.methods[i].latency = m.latency.WithLabelValues(am.name)
	}
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricSDSRefused,
		Help: "SDS resource names asked for and not served, by reason: not_entitled (not the caller's) or invalid (not a resource name).",
	}, []string{"reason"})
	m.sdsNotEntitled = refused.WithLabelValues(SDSRefusedNotEntitled)
	m.sdsInvalid = refused.WithLabelValues(SDSRefusedInvalid)
	rejected := prometheus.NewCounter(prometheus.CounterOpts{
		Name: MetricSDSRejected,
		Help: "SDS responses rejected by the client (NACK).",
	})
	m.sdsRejected = rejected
	for _, c := range []prometheus.Collector{m.calls, m.latency, refused, rejected} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("workloadapi: registering metrics: %w", err)
		}
	}
	return m, nil
}

// CallStarted records nothing: a call is counted when it ends.
func (m *PrometheusMeter) CallStarted(string) {}

// FirstResponse records the latency of a stream's first response.
func (m *PrometheusMeter) FirstResponse(method string, d time.Duration) {
	if mm := &m.methods[methodIndex(method)]; mm.stream {
		mm.latency.Observe(d.Seconds())
	}
}

// CallDone counts the call by method and code, and records the duration
// of a unary call.
func (m *PrometheusMeter) CallDone(method string, code codes.Code, d time.Duration) {
	i := methodIndex(method)
	mm := &m.methods[i]
	if !mm.stream {
		mm.latency.Observe(d.Seconds())
	}
	if code >= codes.Code(numCodes) {
		code = codes.Unknown
	}
	ref := mm.codes[code].Load()
	if ref == nil {
		ref = &counterRef{c: m.calls.WithLabelValues(apiMethods[i].name, code.String())}
		if !mm.codes[code].CompareAndSwap(nil, ref) {
			ref = mm.codes[code].Load()
		}
	}
	ref.c.Inc()
}

// SDSResourceRefused counts a refused SDS resource name by reason.
func (m *PrometheusMeter) SDSResourceRefused(reason string) {
	if reason == SDSRefusedInvalid {
		m.sdsInvalid.Inc()
		return
	}
	m.sdsNotEntitled.Inc()
}

// SDSRejected counts a rejected SDS response.
func (m *PrometheusMeter) SDSRejected() { m.sdsRejected.Inc() }
