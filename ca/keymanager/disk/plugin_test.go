package disk

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/plugin"
)

func body(t *testing.T, src string) hcl.Body {
	t.Helper()
	f, diags := hclsyntax.ParseConfig([]byte(src), "d.hcl", hcl.Pos{Line: 1, Column: 1})
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	return f.Body
}

func TestPluginDirectories(t *testing.T) {
	data := t.TempDir()
	env := plugin.Env{Role: plugin.RoleServer, DataDir: data}
	v, err := newPlugin(body(t, ""), env)
	if err != nil {
		t.Fatal(err)
	}
	st := v.(*Store)
	if st.Dir(ca.KeyScopeAuthorities) != filepath.Join(data, "keys") || st.Dir(ca.KeyScopeClusterIdentity) != filepath.Join(data, "cluster", "keys") || !st.Persistent() {
		t.Fatalf("default store = %+v", st)
	}
	// Building the plugin creates nothing; opening a scope does.
	if _, err := os.Stat(filepath.Join(data, "keys")); !os.IsNotExist(err) {
		t.Fatalf("the key directory exists before OpenKeyManager: %v", err)
	}
	km, err := st.OpenKeyManager(context.Background(), ca.KeyScopeAuthorities)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := km.GenerateKey(context.Background(), "k", ca.KeyTypeECP256); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(data, "keys", "k.key.pem")); err != nil {
		t.Fatalf("key not in <data_dir>/keys: %v", err)
	}
	if _, err := st.OpenKeyManager(context.Background(), "other"); err == nil {
		t.Fatal("an unknown scope was opened")
	}

	v, err = newPlugin(body(t, "directory = \"/a\"\ncluster_directory = \"/b\"\n"), env)
	if err != nil {
		t.Fatal(err)
	}
	if st := v.(*Store); st.Dir(ca.KeyScopeAuthorities) != "/a" || st.Dir(ca.KeyScopeClusterIdentity) != "/b" {
		t.Fatalf("configured store = %+v", st)
	}

	for src, want := range map[string]string{
		"directory = \"\"": "directory: must not be empty",
		"directory = \"/a\"\ncluster_directory = \"/a/\"": "is also the directory",
		"dir = \"/a\"": "Unsupported argument",
	} {
		if _, err := newPlugin(body(t, src), env); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", src, err, want)
		}
	}
	if _, err := newPlugin(body(t, ""), plugin.Env{Role: plugin.RoleServer}); err == nil || !strings.Contains(err.Error(), "required when the server has no data_dir") {
		t.Errorf("no data dir: %v", err)
	}
}

func TestNewStoreRefusesSharedOrEmptyDirs(t *testing.T) {
	if _, err := NewStore(map[ca.KeyScope]string{ca.KeyScopeAuthorities: "/a", ca.KeyScopeClusterIdentity: "/a/."}); err == nil {
		t.Error("two scopes in one directory accepted")
	}
	if _, err := NewStore(map[ca.KeyScope]string{ca.KeyScopeAuthorities: ""}); err == nil {
		t.Error("an empty directory accepted")
	}
}

func writeSecret(t *testing.T, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "keys.pass")
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPluginPassphrase(t *testing.T) {
	const secret = "s3cret passphrase"
	data := t.TempDir()
	env := plugin.Env{Role: plugin.RoleServer, DataDir: data}
	passFile := writeSecret(t, secret+"\n", 0o600)

	// Neither: keys in clear, as before.
	v, err := newPlugin(body(t, ""), env)
	if err != nil {
		t.Fatal(err)
	}
	if v.(*Store).Encrypted() {
		t.Error("a block without a passphrase encrypts")
	}

	// From a file: both scopes encrypted with its content (trailing
	// newline dropped), and the migration command names the file.
	v, err = newPlugin(body(t, "passphrase_file = \""+passFile+"\"\n"), env)
	if err != nil {
		t.Fatal(err)
	}
	st := v.(*Store)
	o := newOptions(st.opts)
	if !st.Encrypted() || string(o.passphrase) != secret {
		t.Errorf("passphrase_file: encrypted %v", st.Encrypted())
	}
	if want := "sigil keys encrypt -data-dir " + data + " -passphrase-file " + passFile; o.migrate != want {
		t.Errorf("migration command %q, want %q", o.migrate, want)
	}

	// From the environment.
	t.Setenv("SIGIL_TEST_KEY_PASSPHRASE", secret)
	v, err = newPlugin(body(t, "passphrase_env = \"SIGIL_TEST_KEY_PASSPHRASE\"\ndirectory = \"/a b\"\n"), env)
	if err != nil {
		t.Fatal(err)
	}
	o = newOptions(v.(*Store).opts)
	if string(o.passphrase) != secret {
		t.Error("passphrase_env: passphrase not read from the environment")
	}
	if want := "sigil keys encrypt -data-dir " + data + " -directory '/a b' -passphrase-env SIGIL_TEST_KEY_PASSPHRASE"; o.migrate != want {
		t.Errorf("migration command %q, want %q", o.migrate, want)
	}

	t.Setenv("SIGIL_TEST_EMPTY", "")
	for src, want := range map[string]string{
		"passphrase_file = \"" + passFile + "\"\npassphrase_env = \"SIGIL_TEST_KEY_PASSPHRASE\"": "passphrase_env: both passphrase_file and passphrase_env are set",
		"passphrase_file = \"\"": "passphrase_file: must not be empty",
		"passphrase_file = \"" + writeSecret(t, secret, 0o644) + "\"": "accessible by group or others",
		"passphrase_file = \"" + writeSecret(t, "\n", 0o600) + "\"":   "is empty",
		"passphrase_file = \"/nonexistent/keys.pass\"":                "/nonexistent/keys.pass: no such file",
		"passphrase_env = \"SIGIL_TEST_UNSET_VARIABLE\"":              "environment variable SIGIL_TEST_UNSET_VARIABLE is not set or empty",
		"passphrase_env = \"SIGIL_TEST_EMPTY\"":                       "SIGIL_TEST_EMPTY is not set or empty",
		"passphrase_env = \"A-B\"":                                    `"A-B" is not an environment variable name`,
		"passphrase = \"inline\"":                                     "Unsupported argument",
	} {
		_, err := newPlugin(body(t, src), env)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", src, err, want)
		}
		if err != nil && strings.Contains(err.Error(), secret) {
			t.Errorf("%q: the error holds the passphrase: %v", src, err)
		}
	}
}

// TestPluginMigrationHint is the message an operator sees when turning
// encryption on over existing keys: the exact command to run.
func TestPluginMigrationHint(t *testing.T) {
	data := t.TempDir()
	env := plugin.Env{Role: plugin.RoleServer, DataDir: data}
	plain, err := newPlugin(body(t, ""), env)
	if err != nil {
		t.Fatal(err)
	}
	km, err := plain.(*Store).OpenKeyManager(context.Background(), ca.KeyScopeAuthorities)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := km.GenerateKey(context.Background(), "x509-ca", ca.KeyTypeECP256); err != nil {
		t.Fatal(err)
	}
	passFile := writeSecret(t, "migration hint passphrase", 0o400)
	v, err := newPlugin(body(t, "passphrase_file = \""+passFile+"\"\n"), env)
	if err != nil {
		t.Fatal(err)
	}
	_, err = v.(*Store).OpenKeyManager(context.Background(), ca.KeyScopeAuthorities)
	want := "ca/keymanager/disk: key file " + filepath.Join(data, "keys", "x509-ca.key.pem") + " is not encrypted but a passphrase is configured; with the server stopped, encrypt the existing keys with: sigil keys encrypt -data-dir " + data + " -passphrase-file " + passFile
	if err == nil || err.Error() != want {
		t.Errorf("error\n%v\nwant\n%s", err, want)
	}
}

func TestShellQuote(t *testing.T) {
	for in, want := range map[string]string{
		"/var/lib/sigil":   "/var/lib/sigil",
		"/a b":             "'/a b'",
		"it's":             `'it'\''s'`,
		"$HOME/x":          `'$HOME/x'`,
		"/etc/k.pass;rm x": "'/etc/k.pass;rm x'",
	} {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %s, want %s", in, got, want)
		}
	}
}

// TestPluginMigrationCommandAbsolute: a relative data_dir or passphrase
// file is resolved in the command, which may run from another directory.
func TestPluginMigrationCommandAbsolute(t *testing.T) {
	cwd := t.TempDir()
	t.Chdir(cwd)
	if err := os.WriteFile("keys.pass", []byte("a long enough passphrase"), 0o600); err != nil {
		t.Fatal(err)
	}
	v, err := newPlugin(body(t, "passphrase_file = \"keys.pass\"\n"), plugin.Env{Role: plugin.RoleServer, DataDir: "data"})
	if err != nil {
		t.Fatal(err)
	}
	o := newOptions(v.(*Store).opts)
	if want := "sigil keys encrypt -data-dir " + filepath.Join(cwd, "data") + " -passphrase-file " + filepath.Join(cwd, "keys.pass"); o.migrate != want {
		t.Errorf("migration command %q, want %q", o.migrate, want)
	}
}

// TestPluginShortPassphrase: a passphrase under MinPassphraseLen bytes is
// refused, from a file and from the environment, without showing it.
func TestPluginShortPassphrase(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "short.pass")
	if err := os.WriteFile(file, []byte("elevenbytes"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SIGIL_TEST_SHORT_PASSPHRASE", "elevenbytes")
	for _, src := range []string{"passphrase_file = \"" + file + "\"\n", "passphrase_env = \"SIGIL_TEST_SHORT_PASSPHRASE\"\n"} {
		_, err := newPlugin(body(t, src), plugin.Env{Role: plugin.RoleServer, DataDir: dir})
		if err == nil || !strings.Contains(err.Error(), "the passphrase is 11 bytes long; at least 12 are needed") || strings.Contains(err.Error(), "elevenbytes") {
			t.Errorf("%s: %v", strings.TrimSpace(src), err)
		}
	}
	if _, err := EncryptFiles([]string{dir}, []byte("elevenbytes")); err == nil || !strings.Contains(err.Error(), "at least 12") {
		t.Errorf("EncryptFiles with a short passphrase: %v", err)
	}
}
