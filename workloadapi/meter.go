package workloadapi

import (
	"time"

	"google.golang.org/grpc/codes"
)

// Meter receives the Workload API's instrumentation. Methods are called
// concurrently and must not block. method is the RPC's short name, e.g.
// "FetchX509SVID".
type Meter interface {
	// CallStarted is called when a call arrives, before attestation.
	CallStarted(method string)
	// FirstResponse is called when a streaming call sends its first
	// response, with the time since the call arrived: the latency a
	// workload sees.
	FirstResponse(method string, d time.Duration)
	// CallDone is called when a call ends, with its status code and
	// total duration (for streams, the stream's lifetime).
	CallDone(method string, code codes.Code, d time.Duration)
}

// NopMeter is a Meter that records nothing.
type NopMeter struct{}

// CallStarted does nothing.
func (NopMeter) CallStarted(string) {}

// FirstResponse does nothing.
func (NopMeter) FirstResponse(string, time.Duration) {}

// CallDone does nothing.
func (NopMeter) CallDone(string, codes.Code, time.Duration) {}
