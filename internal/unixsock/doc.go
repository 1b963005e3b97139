// Package unixsock creates the unix sockets that Sigil's daemons serve on
// (the server's admin API and the agent's SPIFFE Workload API) so that no
// other local user can take them over.
//
// Whoever can write to a directory on a socket's path can replace the
// socket, and so impersonate the admin API or hand workloads a false trust
// bundle. Listen therefore refuses a socket path any of whose directories,
// from / down, is writable by another user (group or other write), unless
// it is sticky and owned by root like /tmp (never the socket's own
// directory), or is owned by anyone but root and the user running the
// process; symbolic links on the path must be owned by root or that user
// too, and their targets are checked the same way. Missing directories are
// created with the mode the caller asks for (0700 for a private socket,
// 0755 for a public one).
//
// Listen never removes a socket that another process serves. It holds an
// exclusive flock on "<socket>.lock" for as long as the listener is open;
// the lock file records the holder's pid and data directory, so that a
// second process started on the same path is refused with a message naming
// them. A socket left by a process that died (no lock held, nothing
// answering) is removed. On Close the socket is removed only if it is still
// the one this listener created (same device and inode).
//
// The default socket paths live under RuntimeDir: /run/sigil for root and
// for a service user without $XDG_RUNTIME_DIR (systemd's
// RuntimeDirectory=sigil creates it owned by that user), and
// $XDG_RUNTIME_DIR/sigil for any other user. There is no fallback under a
// shared temporary directory: a user with neither gets a clear error
// saying what to set.
package unixsock
