package main

import "github.com/sigil-id/sigil/registration"

// The load benchmarks give their entries "bench:<n>" selectors, which no
// workload has, so that the agent mints them as background work. The
// server refuses selector types it does not know; this in-process server
// learns this one the way an attestor plugin would teach it its own.
func init() { registration.RegisterSelectorType("bench", nil) }
