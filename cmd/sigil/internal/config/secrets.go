package config

import (
	"fmt"
	"strings"

	"github.com/sigil-id/sigil/internal/secretfile"
)

// Environment variables that carry secrets. The environment of a process
// is readable only by its own user and root (/proc/<pid>/environ), unlike
// its command line (/proc/<pid>/cmdline), which every local user can read.
const (
	EnvJoinSecret = "SIGIL_JOIN_SECRET"
	EnvJoinToken  = "SIGIL_JOIN_TOKEN"
)

// maxSecretFileSize bounds a secret file; secrets are tens of bytes.
const maxSecretFileSize = secretfile.MaxSize

// ReadSecretFile reads a secret from path, the way ssh reads a private key
// (see package secretfile): a regular file owned by the user running sigil
// (or by root), mode 0600 or 0400, at most 4 KiB. Errors name the key and
// the file, say how to fix it, and never contain the secret.
func ReadSecretFile(key, path string) (string, error) {
	s, err := secretfile.Read(path)
	if err != nil {
		return "", fmt.Errorf("config: %s %w", key, err)
	}
	return s, nil
}

// resolveSecret picks a secret from its three sources: the value itself
// (config file or flag), a file, or the environment variable env, which is
// used only when neither of the others is set. Setting both the value and
// the file is an error.
func resolveSecret(valueKey, fileKey, env, value, file string, getenv func(string) string) (string, error) {
	switch {
	case value != "" && file != "":
		return "", fmt.Errorf("config: both %s and %s are set: keep only %s", valueKey, fileKey, fileKey)
	case file != "":
		return ReadSecretFile(fileKey, file)
	case value != "":
		return value, nil
	case getenv != nil:
		return strings.TrimSpace(getenv(env)), nil
	}
	return "", nil
}

// ResolveJoinSecret sets s.JoinSecret from join_secret, join_secret_file
// (-join-secret-file) or, when neither is set, the SIGIL_JOIN_SECRET
// environment variable read with getenv (os.Getenv; nil skips it).
func (s *Server) ResolveJoinSecret(getenv func(string) string) error {
	v, err := resolveSecret("join_secret", "join_secret_file", EnvJoinSecret, s.JoinSecret, s.JoinSecretFile, getenv)
	if err != nil {
		return err
	}
	s.JoinSecret = v
	return nil
}

// ResolveJoinToken sets a.JoinToken from join_token, join_token_file
// (-join-token-file) or, when neither is set, the SIGIL_JOIN_TOKEN
// environment variable read with getenv (os.Getenv; nil skips it).
func (a *Agent) ResolveJoinToken(getenv func(string) string) error {
	v, err := resolveSecret("join_token", "join_token_file", EnvJoinToken, a.JoinToken, a.JoinTokenFile, getenv)
	if err != nil {
		return err
	}
	a.JoinToken = v
	return nil
}

// cmdlineWarning is logged when a secret is given as a flag.
func cmdlineWarning(flag, fileFlag, env string) string {
	return fmt.Sprintf("-%s puts the secret on the command line, which every local user can read (ps, /proc/<pid>/cmdline); use -%s with a file of mode 0600 or the %s environment variable instead", flag, fileFlag, env)
}

// Warnings returns what the server should log about its flags: a secret
// given on the command line.
func (f *ServerFlags) Warnings() []string {
	if f.fs.Changed("join-secret") {
		return []string{cmdlineWarning("join-secret", "join-secret-file", EnvJoinSecret)}
	}
	return nil
}

// Warnings returns what the agent should log about its flags: a join token
// given on the command line.
func (f *AgentFlags) Warnings() []string {
	if f.fs.Changed("join-token") {
		return []string{cmdlineWarning("join-token", "join-token-file", EnvJoinToken)}
	}
	return nil
}
