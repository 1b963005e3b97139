package pkcs11

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/plugin"
)

func body(t *testing.T, src string) hcl.Body {
	t.Helper()
	f, diags := hclsyntax.ParseConfig([]byte(src), "p.hcl", hcl.Pos{Line: 1, Column: 1})
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	return f.Body
}

func TestPlugin(t *testing.T) {
	tk := token(t)
	env := plugin.Env{Role: plugin.RoleServer, TrustDomain: td, NodeName: "s1", DataDir: t.TempDir()}
	pinFile := tk.WritePIN(t)

	// pin_file, token_label, a prefix: the store works.
	v, err := newPlugin(body(t, `
module           = "`+tk.Module+`"
token_label      = "sigil"
pin_file         = "`+pinFile+`"
key_label_prefix = "ca-1"
`), env)
	if err != nil {
		t.Fatal(err)
	}
	s := v.(*Store)
	t.Cleanup(func() { s.Close() })
	if s.cfg.PIN != tk.PIN || s.cfg.KeyLabelPrefix != "ca-1" || s.cfg.NodeName != "s1" || s.cfg.TrustDomain != td {
		t.Fatalf("config = %v", s.cfg)
	}
	km, err := s.OpenKeyManager(context.Background(), ca.KeyScopeAuthorities)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := km.GenerateKey(context.Background(), "k", ca.KeyTypeECP256); err != nil {
		t.Fatal(err)
	}

	// pin_env and slot.
	t.Setenv("SIGIL_TEST_HSM_PIN", tk.PIN)
	v, err = newPlugin(body(t, `
module  = "`+tk.Module+`"
slot    = `+strconv.Itoa(tk.Slot)+`
pin_env = "SIGIL_TEST_HSM_PIN"
`), env)
	if err != nil {
		t.Fatal(err)
	}
	s2 := v.(*Store)
	t.Cleanup(func() { s2.Close() })
	if s2.cfg.Slot == nil || *s2.cfg.Slot != tk.Slot || s2.cfg.KeyLabelPrefix != DefaultKeyLabelPrefix {
		t.Fatalf("config = %v", s2.cfg)
	}
	if _, err := s2.OpenKeyManager(context.Background(), ca.KeyScopeClusterIdentity); err != nil {
		t.Fatal(err)
	}
}

// TestPluginErrors: each configuration mistake is refused at its line
// with a clear message, and no error holds the PIN.
func TestPluginErrors(t *testing.T) {
	tk := token(t)
	env := plugin.Env{Role: plugin.RoleServer, TrustDomain: td, NodeName: "s1"}
	dir := t.TempDir()
	pinFile := tk.WritePIN(t)
	openPIN := filepath.Join(dir, "open.pin")
	if err := os.WriteFile(openPIN, []byte(tk.PIN), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(openPIN, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SIGIL_TEST_EMPTY_PIN", "")
	mod := `module = "` + tk.Module + `"` + "\n"
	tok := `token_label = "sigil"` + "\n"
	pin := `pin_file = "` + pinFile + `"` + "\n"
	for src, want := range map[string]string{
		tok + pin:                        `Missing required argument; The argument "module" is required`,
		`module = ""` + "\n" + tok + pin: "p.hcl:1,10-12: module: must not be empty",
		`module = "/nonexistent/lib.so"` + "\n" + tok + pin: "module: /nonexistent/lib.so does not exist (for SoftHSM2: apt-get install softhsm2)",
		mod + pin:                                             "token_label: is required (or slot): which token holds the keys",
		mod + tok + "slot = 1\n" + pin:                        "p.hcl:3,8-9: slot: conflicts with token_label",
		mod + `token_label = ""` + "\n" + pin:                 "token_label: must not be empty",
		mod + "slot = -2\n" + pin:                             "slot: must not be negative",
		mod + `slot = "x"` + "\n" + pin:                       "Unsuitable value type",
		mod + tok:                                             "pin_file: is required (or pin_env): the token's user PIN is never written in the configuration",
		mod + tok + pin + `pin_env = "X"` + "\n":              "pin_env: conflicts with pin_file",
		mod + tok + `pin_file = ""` + "\n":                    "pin_file: must not be empty",
		mod + tok + `pin_file = "` + openPIN + `"` + "\n":     "pin_file: " + openPIN + " is accessible by group or others (mode 0644)",
		mod + tok + `pin_file = "` + dir + `/none"` + "\n":    "pin_file: " + dir + "/none: no such file or directory",
		mod + tok + `pin_env = ""` + "\n":                     "pin_env: must not be empty",
		mod + tok + `pin_env = "SIGIL_TEST_UNSET_PIN"` + "\n": "pin_env: environment variable SIGIL_TEST_UNSET_PIN is not set or empty",
		mod + tok + `pin_env = "SIGIL_TEST_EMPTY_PIN"` + "\n": "pin_env: environment variable SIGIL_TEST_EMPTY_PIN is not set or empty",
		mod + tok + pin + `key_label_prefix = "a/b"` + "\n":   `key_label_prefix: "a/b" holds '/'`,
		mod + tok + pin + `key_label_prefix = ""` + "\n":      "key_label_prefix: must be 1 to 16 characters",
		mod + tok + pin + `pin = "1234"` + "\n":               `Unsupported argument; An argument named "pin" is not expected here`,
	} {
		_, err := newPlugin(body(t, src), env)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v\nwant %s", src, err, want)
			continue
		}
		if strings.Contains(err.Error(), tk.PIN) {
			t.Errorf("%s: the error holds the PIN: %v", src, err)
		}
	}
	noNode := env
	noNode.NodeName = ""
	if _, err := newPlugin(body(t, mod+tok+pin), noNode); err == nil || err.Error() != "pkcs11: the server has no node name, which names its keys in the token" {
		t.Errorf("no node name: %v", err)
	}
}

// TestPluginRegistered: the plugin builds through the registry as a
// server's key manager.
func TestPluginRegistered(t *testing.T) {
	found := false
	for _, n := range plugin.Names(plugin.KindKeyManager) {
		found = found || n == PluginName
	}
	if !found {
		t.Fatalf("key managers %v lack %q", plugin.Names(plugin.KindKeyManager), PluginName)
	}
}
