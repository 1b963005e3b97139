package unixsock

import (
	"os"
	"path/filepath"
)

// Default locations, relative to RuntimeDir.
const (
	// SystemRuntimeDir is RuntimeDir for root and for users without
	// $XDG_RUNTIME_DIR.
	SystemRuntimeDir = "/run/sigil"
	// AdminSocketName is the server's admin API socket, in a 0700
	// directory.
	AdminSocketName = "server/private/admin.sock"
	// WorkloadSocketName is the agent's Workload API socket, in a 0755
	// directory.
	WorkloadSocketName = "agent/public/api.sock"
	// AgentAdminSocketName is the agent's admin API socket, in a 0700
	// directory.
	AgentAdminSocketName = "agent/private/admin.sock"
)

// RuntimeDir is the directory under which Sigil's sockets live by default:
// SystemRuntimeDir for root, $XDG_RUNTIME_DIR/sigil for any other user who
// has $XDG_RUNTIME_DIR set (to an absolute path), and SystemRuntimeDir
// otherwise, which works for a service user given /run/sigil (systemd:
// RuntimeDirectory=sigil) and fails with a clear message for anyone else.
func RuntimeDir() string { return runtimeDir(os.Geteuid(), os.Getenv("XDG_RUNTIME_DIR")) }

func runtimeDir(euid int, xdg string) string {
	if euid != 0 && xdg != "" && filepath.IsAbs(xdg) {
		return filepath.Join(filepath.Clean(xdg), "sigil")
	}
	return SystemRuntimeDir
}

// DefaultAdminSocket is where a server run by the current user serves the
// admin API unless configured otherwise.
func DefaultAdminSocket() string { return filepath.Join(RuntimeDir(), AdminSocketName) }

// DefaultWorkloadSocket is where an agent run by the current user serves
// the Workload API unless configured otherwise.
func DefaultWorkloadSocket() string { return filepath.Join(RuntimeDir(), WorkloadSocketName) }

// ClientSocket is where a client run by the current user looks for the
// socket named name (AdminSocketName, WorkloadSocketName) by default: in
// the user's own runtime directory when a socket is there (a daemon or
// `sigil dev` the user runs), else in SystemRuntimeDir (a system daemon).
func ClientSocket(name string) string { return clientSocket(name, RuntimeDir()) }

func clientSocket(name, runtimeDir string) string {
	system := filepath.Join(SystemRuntimeDir, name)
	own := filepath.Join(runtimeDir, name)
	if own == system {
		return system
	}
	if fi, err := os.Lstat(own); err == nil && fi.Mode().Type() == os.ModeSocket {
		return own
	}
	return system
}

// DefaultAgentAdminSocket is where an agent run by the current user serves
// its admin API unless configured otherwise.
func DefaultAgentAdminSocket() string { return filepath.Join(RuntimeDir(), AgentAdminSocketName) }
