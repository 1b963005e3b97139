// Package policy is Sigil's identity-based authorization policy: which
// SPIFFE IDs may call which services, HTTP routes and gRPC methods.
//
// A policy denies by default. Its rules only allow: a call is allowed when
// one rule's from list matches the caller's SPIFFE ID, its to list matches
// the target, and its time conditions (if any) hold.
//
// # File format (HCL)
//
//	# mode = "shadow"   # allow everything, record what would be denied
//
//	rule "web-reads-users" {
//	  description = "the web tier reads user profiles"
//	  from    = ["spiffe://prod.example/ns/*/sa/web"]
//	  to      = ["http:GET,HEAD /v1/users/**"]
//	  service = "users"            # optional: only calls to service "users"
//	}
//
//	rule "billing-grpc" {
//	  from = ["spiffe://prod.example/billing/**"]
//	  to   = ["grpc:/billing.v1.Ledger/*", "service:ledger-admin"]
//	  shadow = true                # being rolled out: record, do not enforce
//	}
//
//	rule "oncall-business-hours" {
//	  from = ["spiffe://prod.example/oncall/tool"]
//	  to   = ["service:db-admin"]
//	  not_after = "2026-12-31T00:00:00Z"
//	  time_window {
//	    days     = ["mon", "tue", "wed", "thu", "fri"]
//	    start    = "08:00"
//	    end      = "18:00"
//	    timezone = "Europe/Paris"
//	  }
//	}
//
// From patterns:
//
//	spiffe://td/a/b        exactly this ID
//	spiffe://td/a/**       /a and every ID under it (path prefix at a segment boundary)
//	spiffe://td/ns/*/sa/w  glob: "*" is one path segment, or part of one ("w-*")
//	spiffe://td            every ID of trust domain td (also spiffe://td/**)
//
// Sigil's own agents and servers (IDs under the reserved path /sigil/, see
// IsReserved) are not workloads: only a rule naming the exact ID matches
// one; trust-domain, prefix and glob patterns never do, and shadow mode
// never lets one through.
//
// To patterns:
//
//	service:NAME                 any call to the service an enforcement point names NAME
//	http:GET /v1/users/*         HTTP methods (GET,POST or *) and a path pattern
//	grpc:/pkg.Service/Method     a gRPC full method; /pkg.Service/* for every method
//
// Path patterns use the same glob rules ("**" only as the last segment).
// A connection-level check (a raw TLS server) has no method or path, so
// only service: targets match it.
//
// # Shadow mode
//
// With mode = "shadow", nothing is denied: calls no rule allows get the
// ShadowDeny effect, are let through and are counted and logged as
// "would deny". A rule with shadow = true puts its targets in shadow: a
// call to one of them that no rule allows is a ShadowDeny attributed to
// that rule, while calls to other targets are enforced as usual. This is
// how a new rule for a service is rolled out: write it in shadow, watch
// the would-deny counts, then remove the shadow flag.
//
// # Performance
//
// Compile indexes rules by trust domain, exact ID, path prefix, and glob
// (grouped by segment count and keyed on a literal segment), and within
// those by target service; globs are compiled once. Decide does a few map
// lookups and does not allocate; with 1,000 rules it takes well under a
// microsecond (see BenchmarkDecide).
//
// # Reloading
//
// Watch loads a file and reloads it when it changes; an edit that does not
// parse or compile is rejected with a clear error and the last good policy
// stays in force. Lint finds shadowed and duplicate rules for CI gates
// (`sigil policy lint`), and `sigil policy test` asks one question of a file.
package policy
