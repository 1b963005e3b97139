//go:build !cgo

package pkcs11

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/sigil-id/sigil/plugin"
)

// Run by TestStaticBuildWithoutCgo (cmd/sigil) under CGO_ENABLED=0: the
// plugin still registers, and refuses at configuration, before reading
// anything, with the error that names the build; NewStore too.
func TestPluginWithoutCgo(t *testing.T) {
	if err := Available(); !errors.Is(err, ErrNoCgo) {
		t.Fatalf("Available() = %v, want ErrNoCgo", err)
	}
	found := false
	for _, n := range plugin.Names(plugin.KindKeyManager) {
		found = found || n == PluginName
	}
	if !found {
		t.Fatalf("key_manager %q is not registered without cgo: %v", PluginName, plugin.Names(plugin.KindKeyManager))
	}
	module := filepath.Join(t.TempDir(), "libsofthsm2.so")
	if err := os.WriteFile(module, []byte("not a library"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := plugin.Env{Role: plugin.RoleServer, TrustDomain: td, NodeName: "s1", DataDir: t.TempDir()}
	const want = "this sigil was built without cgo: the pkcs11 key manager is not available; use a build with cgo (make build)"
	_, err := newPlugin(body(t, `
module      = "`+module+`"
token_label = "sigil"
pin_env     = "SIGIL_TEST_NO_SUCH_PIN"
`), env)
	if err == nil || err.Error() != want || !errors.Is(err, ErrNoCgo) {
		t.Fatalf("newPlugin error = %v, want %q", err, want)
	}

	cfg := DefaultConfig()
	cfg.Module, cfg.TokenLabel, cfg.PIN, cfg.TrustDomain, cfg.NodeName = module, "sigil", "1234", td, "s1"
	if _, err := NewStore(cfg); err == nil || err.Error() != "pkcs11: "+want || !errors.Is(err, ErrNoCgo) {
		t.Fatalf("NewStore error = %v, want pkcs11: %s", err, want)
	}
}
