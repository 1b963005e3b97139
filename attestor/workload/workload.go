// Package workload defines the plugin interface of workload attestors: the
// agent-side code that turns a local process into selectors, which the
// Workload API then matches against registration entries.
//
// Each attestor lives in its own subpackage (unix, and later k8s, docker,
// systemd) and is selected by name from the agent's configuration.
package workload

import (
	"context"
	"errors"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// Attestor derives selectors for a local process.
type Attestor interface {
	// Name is the attestor's name as used in configuration; it is also
	// the type of the selectors it returns.
	Name() string
	// Attest returns the selectors of the process with the given pid.
	// An error wrapping ErrProcessGone means that the process does not
	// exist (any more).
	Attest(ctx context.Context, pid int32) ([]*sigilv1.Selector, error)
}

// ErrProcessGone is wrapped by attestor errors when the process to attest
// does not exist.
var ErrProcessGone = errors.New("process does not exist")
