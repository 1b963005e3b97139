// Package softhsmtest creates SoftHSM2 tokens for tests: each in a
// directory of its own (a softhsm2.conf whose directories.tokendir is a
// test temporary directory), initialized with softhsm2-util. Tests that
// need a token fail, not skip, when SoftHSM2 is not installed, with the
// apt-get command that installs it.
package softhsmtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
)

// Default PINs of the tokens New creates.
const (
	PIN   = "1234"
	SOPIN = "5678"
)

// modules are where Debian and Ubuntu install the SoftHSM2 module.
var modules = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
}

// InstallHint is how to get SoftHSM2 on Debian or Ubuntu.
const InstallHint = "install SoftHSM2: apt-get install -y --no-install-recommends softhsm2"

// Find returns the path of softhsm2-util and of the SoftHSM2 module, or
// an error saying how to install them.
func Find() (util, module string, err error) {
	util, err = exec.LookPath("softhsm2-util")
	if err != nil {
		return "", "", fmt.Errorf("softhsm2-util is not in PATH: %s", InstallHint)
	}
	for _, m := range modules {
		if fi, err := os.Stat(m); err == nil && fi.Mode().IsRegular() {
			return util, m, nil
		}
	}
	return "", "", fmt.Errorf("the SoftHSM2 module (libsofthsm2.so) is in none of %v: %s", modules, InstallHint)
}

// Module returns the path of the SoftHSM2 module, failing t (with the
// apt-get hint) if SoftHSM2 is not installed.
func Module(t testing.TB) string {
	t.Helper()
	_, m, err := Find()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// Token is an initialized SoftHSM2 token.
type Token struct {
	Label  string
	PIN    string
	Slot   int    // its slot ID
	Module string // the SoftHSM2 module
	Conf   string // its softhsm2.conf (SOFTHSM2_CONF)
	Dir    string // its token directory
}

var slotRE = regexp.MustCompile(`reassigned to slot (\d+)`)

// New creates a token labelled label (user PIN PIN, SO PIN SOPIN) in a
// directory of its own under t.TempDir(). The process's SOFTHSM2_CONF is
// not changed: see Setenv and Env.
func New(t testing.TB, label string) *Token {
	t.Helper()
	util, module, err := Find()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.Mkdir(tokens, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	text := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", tokens)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	tk := &Token{Label: label, PIN: PIN, Module: module, Conf: conf, Dir: tokens}
	cmd := exec.Command(util, "--init-token", "--free", "--label", label, "--pin", PIN, "--so-pin", SOPIN)
	cmd.Env = append(os.Environ(), tk.Env())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("softhsm2-util --init-token: %v\n%s", err, out)
	}
	m := slotRE.FindSubmatch(out)
	if m == nil {
		t.Fatalf("softhsm2-util --init-token: no slot in its output:\n%s", out)
	}
	if tk.Slot, err = strconv.Atoi(string(m[1])); err != nil {
		t.Fatalf("softhsm2-util --init-token: slot %q: %v", m[1], err)
	}
	return tk
}

// Env is the environment variable that points SoftHSM2 at the token:
// SOFTHSM2_CONF=<Conf>.
func (tk *Token) Env() string { return "SOFTHSM2_CONF=" + tk.Conf }

// Setenv points this process's SoftHSM2 at the token for the rest of the
// test. SoftHSM2 reads SOFTHSM2_CONF when the module is initialized, the
// first time a process opens it (again after the last user closed it),
// so every store of the test must be closed before the test ends.
func (tk *Token) Setenv(t testing.TB) {
	t.Helper()
	t.Setenv("SOFTHSM2_CONF", tk.Conf)
}

// WritePIN writes the token's PIN to a file (mode 0600) in a temporary
// directory and returns its path.
func (tk *Token) WritePIN(t testing.TB) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "hsm.pin")
	if err := os.WriteFile(p, []byte(tk.PIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
