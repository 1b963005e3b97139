// Package federation speaks the SPIFFE Trust Domain and Bundle
// specification: it encodes and decodes SPIFFE bundle documents, serves
// the local trust domain's bundle on a bundle endpoint (profiles
// https_spiffe and https_web), fetches foreign bundles from their
// endpoints with bounded time and memory, and refreshes the bundles of
// federation relationships at their refresh hints.
//
// It holds no state of its own: bundles and relationships are the
// replicated store's (package raftstore), read and written through the
// small interfaces below, so the package is tested without a server.
package federation
