package policy

import (
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ReservedPath is the path prefix under which Sigil names its own agents
// (/sigil/agent/...) and servers (/sigil/server/...). No registration entry
// hands out an ID under it, so no workload has one.
const ReservedPath = "/sigil/"

// IsReserved reports whether id names a Sigil agent or server rather than
// a workload: its first path segment is "sigil" (in any letter case, so
// that a look-alike such as /SIGIL/agent/x is treated the same way).
//
// A policy matches a reserved ID only by a rule that names it exactly in
// from: trust-domain, prefix and glob patterns never match one, and shadow
// mode never lets one through.
func IsReserved(id spiffeid.ID) bool { return isReservedPath(id.Path()) }

// isReservedPath reports whether a SPIFFE ID path (or a pattern's path)
// starts with the segment "sigil", in any letter case.
func isReservedPath(p string) bool {
	if len(p) < len("/sigil") || p[0] != '/' {
		return false
	}
	first := p[1:]
	if i := strings.IndexByte(first, '/'); i >= 0 {
		first = first[:i]
	}
	return strings.EqualFold(first, "sigil")
}
