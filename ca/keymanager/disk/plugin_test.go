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
