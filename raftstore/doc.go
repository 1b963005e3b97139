// Package raftstore is Sigil's replicated state machine: the registration
// entries, attested nodes, join tokens, use-once credential records and
// trust bundles of one trust domain, kept identical on every server by Raft (hashicorp/raft, with a
// bolt log and stable store and file snapshots on disk).
//
// Federation state lives here too: the relationships with foreign trust
// domains (at most MaxFederationRelationships), their bundles (rows of the
// bundles table keyed by the foreign trust domain, with modify_index and
// updated_at set by the store), each relationship's refresh status, and
// the partners that fetched the local bundle. Entries name the foreign
// trust domains they federate with (at most MaxFederatesWith), each of
// which must have a relationship or a bundle when the entry is written.
//
// Writes are typed commands (storepb.Command) proposed with Store.Apply; the
// leader appends them to the Raft log and every server applies them, in log
// order, to an indexed in-memory database (go-memdb; the registration
// entries are one row of it, ordered copy-on-write trees of the entries'
// protobuf records: entrytable.go, entryrec.go). Entries read through a
// Reader are decoded copies the caller owns.
// Reads go through a Reader, a consistent, immutable view of that database
// that also collects the watch channels of every query run through it, so
// a caller can block until the answer to its queries may have changed
// (Reader.WatchSet; an entry query watches every entry) and then read
// again. Store.Changed is a coarser broadcast fired after
// every applied change.
//
// # Determinism contract
//
// Applying a command must produce the same state on every server, on every
// replay of the log and after restoring any snapshot. The state machine
// therefore:
//
//   - never reads the clock: every time-dependent decision (join token
//     expiry, creation times) uses Command.Timestamp, stamped once by the
//     proposer in Store.Apply;
//   - uses no randomness and never lets map iteration order reach the
//     state or a result: batch items are applied in order, lists are kept
//     sorted;
//   - validates everything it is given and refuses bad input (undecodable
//     bytes, a missing or unknown operation, invalid entries, nodes, tokens
//     or certificates) with a CommandError and no change at all. Batch
//     commands refuse item by item; a refused item changes nothing;
//   - never mutates a stored object in place: an object handed out by a
//     Reader stays valid and unchanged for as long as the caller holds it.
//     Callers must treat every returned value as read-only.
//
// Snapshots carry the whole state with a checksum; a snapshot that is
// corrupt or holds an invalid record is refused and the state is left as it
// was.
package raftstore
