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

// Caller is a process that connected to the Workload API, as the kernel
// described it when it connected. The ids are those of the connecting
// process at connect(2) time (SO_PEERCRED, SO_PEERGROUPS), not what
// /proc says now: a process that changes its credentials afterwards, by
// setuid(2) or by exec'ing a set-user-ID program, keeps the identity it
// connected with, and the Workload API refuses it when it notices the
// change.
type Caller struct {
	// PID is the caller's process id in the agent's pid namespace.
	PID int32
	// UID and GID are the caller's effective user and group ids at
	// connect time.
	UID, GID uint32
	// Groups are the caller's supplementary groups at connect time, or
	// nil when the kernel did not report them (then attestors may read
	// them from /proc).
	Groups []uint32
}

// Attestor derives selectors for a local process.
type Attestor interface {
	// Name is the attestor's name as used in configuration; it is also
	// the type of the selectors it returns.
	Name() string
	// Attest returns the selectors of the calling process. Credentials
	// must be taken from c, never re-read from /proc: the caller is
	// judged as it was when it connected. An error wrapping
	// ErrProcessGone means that the process does not exist (any more).
	Attest(ctx context.Context, c Caller) ([]*sigilv1.Selector, error)
}

// ErrProcessGone is wrapped by attestor errors when the process to attest
// does not exist.
var ErrProcessGone = errors.New("process does not exist")
