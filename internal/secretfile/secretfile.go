// Package secretfile reads secrets (join secrets, join tokens, notifier
// keys and webhook URLs) from files the way ssh reads a private key: the
// file must be a regular file owned by the user running sigil (or by
// root), not accessible to group or others, and small.
package secretfile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"regexp"
	"strings"
)

// MaxSize bounds a secret file; secrets are tens to hundreds of bytes.
const MaxSize = 4096

// Read reads the secret in path: a regular file owned by the user running
// sigil or by root, with mode 0600 or 0400, at most MaxSize bytes.
// Surrounding white space (a trailing newline) is dropped; an empty secret
// is an error. Every error starts with the path, says how to fix it, and
// never contains the secret.
func Read(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", pathError(path, err)
	}
	defer f.Close()
	// Check the file that was opened, not the path, so that a swap
	// between the check and the read cannot pass.
	st, err := f.Stat()
	if err != nil {
		return "", pathError(path, err)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("%s is not a regular file", path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return "", fmt.Errorf("%s is accessible by group or others (mode %04o): a secret file must be readable only by its owner; run: chmod 600 %s", path, perm, path)
	}
	if owner, ok := fileOwner(st); ok {
		if uid := os.Geteuid(); int64(owner) != int64(uid) && owner != 0 {
			return "", fmt.Errorf("%s is owned by uid %d, not by the user running sigil (uid %d) or root; run: chown %d %s", path, owner, uid, uid, path)
		}
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		return "", fmt.Errorf("%s: reading: %w", path, err)
	}
	if len(b) > MaxSize {
		return "", fmt.Errorf("%s is larger than %d bytes: it should hold just the secret", path, MaxSize)
	}
	secret := strings.TrimSpace(string(b))
	if secret == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return secret, nil
}

// pathError names path once: "PATH: no such file or directory".
func pathError(path string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", path, pe.Err)
	}
	return fmt.Errorf("%s: %w", path, err)
}

// envName is what an environment variable's name may be.
var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// ReadEnv reads the secret in the environment variable name, the other
// place a secret may come from: an invalid name, an unset or empty
// variable (after dropping surrounding white space) and a value over
// MaxSize bytes are errors naming the variable, never showing its value.
func ReadEnv(name string) (string, error) {
	if !envName.MatchString(name) {
		return "", fmt.Errorf("%q is not an environment variable name", name)
	}
	v := strings.TrimSpace(os.Getenv(name))
	switch {
	case v == "":
		return "", fmt.Errorf("environment variable %s is not set or empty", name)
	case len(v) > MaxSize:
		return "", fmt.Errorf("environment variable %s: longer than %d bytes", name, MaxSize)
	}
	return v, nil
}
