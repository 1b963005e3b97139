// Package audit is Sigil's record of security-relevant actions: an
// identity issued or refused, an agent attested or banned, an entry or an
// authority changed. Each is one typed Event (who did what to which
// subject, with which outcome) handed to a Sink. The default sink writes
// the event to the daemon's zap logger; alerting and flow logs subscribe
// by adding their own sink next to it with Multi.
//
// A Sink must not block for long and must be safe for concurrent use: the
// event is emitted on the request path, after the action took effect.
package audit

import (
	"time"
)

// Outcome says how an audited action ended.
type Outcome string

const (
	// Success: the action was done (an SVID issued, an entry created).
	Success Outcome = "success"
	// Denied: the caller was refused (not authorized, bad proof).
	Denied Outcome = "denied"
	// Failure: the action was allowed but did not complete (a rotation
	// step that failed).
	Failure Outcome = "failure"
)

// Who names the actors that are not a SPIFFE ID.
const (
	// Admin is the operator on the admin API's unix socket.
	Admin = "admin"
)

// Event is one audited action.
type Event struct {
	// What names the action in snake_case ("x509_svid_issued",
	// "entry_created"). It is stable: consumers match on it, and the zap
	// sink writes it as the "audit" field.
	What string
	// Who did it: an agent's or a server's SPIFFE ID, an admin's SPIFFE
	// ID (the TCP admin API), or Admin (the admin socket).
	Who string
	// Subject is what it was done to: an entry ID, a SPIFFE ID, an
	// authority ID. Empty when the action has no single subject.
	Subject string
	// Outcome is how it ended; empty means Success.
	Outcome Outcome
	// Message is the human-readable log line ("entry created"); What
	// when empty.
	Message string
	// Fields are the details, in order (see String, Int, Time, ...).
	Fields []Field
}

// Field is one detail of an event. Its Value is one of string, []string,
// int, int64, uint64, bool, time.Time, time.Duration or error; use the
// constructors so that a field keeps its type from one event to the next.
type Field struct {
	Key   string
	Value any
}

// String is a string field.
func String(key, v string) Field { return Field{key, v} }

// Strings is a string list field.
func Strings(key string, v []string) Field { return Field{key, v} }

// Int is an integer field.
func Int(key string, v int) Field { return Field{key, v} }

// Uint64 is an unsigned integer field.
func Uint64(key string, v uint64) Field { return Field{key, v} }

// Bool is a boolean field.
func Bool(key string, v bool) Field { return Field{key, v} }

// Time is a point in time.
func Time(key string, v time.Time) Field { return Field{key, v} }

// Duration is a length of time.
func Duration(key string, v time.Duration) Field { return Field{key, v} }

// Err is the error that refused or failed the action, under the key
// "error".
func Err(err error) Field { return Field{"error", err} }

// Sink receives audit events.
type Sink interface {
	Audit(Event)
}

// SinkFunc adapts a function to a Sink.
type SinkFunc func(Event)

// Audit calls f(ev).
func (f SinkFunc) Audit(ev Event) { f(ev) }

// Multi returns a sink that hands every event to each of sinks in order.
// Nil sinks are skipped.
func Multi(sinks ...Sink) Sink {
	out := make(multi, 0, len(sinks))
	for _, s := range sinks {
		if s != nil {
			out = append(out, s)
		}
	}
	return out
}

type multi []Sink

func (m multi) Audit(ev Event) {
	for _, s := range m {
		s.Audit(ev)
	}
}

// Nop is a sink that drops every event.
var Nop Sink = SinkFunc(func(Event) {})
