package tpm

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/ca/keymanager/internal/signtest"
	"github.com/sigil-id/sigil/plugin"
)

func body(t *testing.T, src string) hcl.Body {
	t.Helper()
	f, diags := hclsyntax.ParseConfig([]byte(src), "t.hcl", hcl.Pos{Line: 1, Column: 1})
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	return f.Body
}

func TestPlugin(t *testing.T) {
	data := t.TempDir()
	env := plugin.Env{Role: plugin.RoleServer, TrustDomain: spiffeid.RequireTrustDomainFromString(testTD), DataDir: data, NodeName: "node-1"}

	// Defaults: /dev/tpmrm0 and <data_dir>/tpm; building opens nothing.
	v, err := newPlugin(body(t, ""), env)
	if err != nil {
		t.Fatal(err)
	}
	st := v.(*Store)
	want := Config{Device: "/dev/tpmrm0", StorageDirectory: filepath.Join(data, "tpm"), TrustDomain: testTD, NodeName: "node-1"}
	if st.cfg != want || !st.Persistent() {
		t.Fatalf("default config %+v, want %+v", st.cfg, want)
	}
	if _, err := os.Stat(filepath.Join(data, "tpm")); !os.IsNotExist(err) {
		t.Fatalf("the storage directory exists before OpenKeyManager: %v", err)
	}

	// Configured: a software TPM's socket and a directory of its own.
	tp := startSWTPM(t)
	dir := filepath.Join(t.TempDir(), "blobs")
	v, err = newPlugin(body(t, "device = \""+tp.socket+"\"\nstorage_directory = \""+dir+"\"\n"), env)
	if err != nil {
		t.Fatal(err)
	}
	st = v.(*Store)
	defer st.Close()
	km, err := st.OpenKeyManager(context.Background(), ca.KeyScopeClusterIdentity)
	if err != nil {
		t.Fatal(err)
	}
	k, err := km.GenerateKey(context.Background(), "cluster-ca", ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	signtest.SignVerify(t, k)
	name, _ := Name(testTD, "node-1", ca.KeyScopeClusterIdentity, "cluster-ca")
	if _, err := os.Stat(filepath.Join(dir, "key-"+name+".tpmobj")); err != nil {
		t.Fatalf("blob not in the configured directory: %v", err)
	}

	// Registered under its directory's name.
	if !slices.Contains(plugin.Names(plugin.KindKeyManager), "tpm") {
		t.Fatalf("the tpm key manager is not registered: %v", plugin.Names(plugin.KindKeyManager))
	}
}

func TestPluginErrors(t *testing.T) {
	env := plugin.Env{Role: plugin.RoleServer, TrustDomain: spiffeid.RequireTrustDomainFromString(testTD), DataDir: t.TempDir()}
	for src, want := range map[string]string{
		`device = ""`:                          "device: must not be empty (leave it out for /dev/tpmrm0)",
		`storage_directory = ""`:               "storage_directory: must not be empty",
		`dev = "/dev/tpm0"`:                    "Unsupported argument",
		`device = 3`:                           "", // HCL converts a number to a string: accepted
		`device = ["/dev/tpm0"]`:               "string required",
		"pin_file = \"/x\"":                    "Unsupported argument",
		`storage_directory = "/a"` + "\nx = 1": "Unsupported argument",
	} {
		_, err := newPlugin(body(t, src), env)
		switch {
		case want == "" && err != nil:
			t.Errorf("%q: %v", src, err)
		case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
			t.Errorf("%q: %v, want %q", src, err, want)
		}
	}
	noData := plugin.Env{Role: plugin.RoleServer, TrustDomain: spiffeid.RequireTrustDomainFromString(testTD)}
	if _, err := newPlugin(body(t, ""), noData); err == nil || !strings.Contains(err.Error(), "storage_directory: is required when the server has no data_dir") {
		t.Errorf("no data dir: %v", err)
	}
	if _, err := newPlugin(body(t, `storage_directory = "/s"`), noData); err != nil {
		t.Errorf("an explicit storage directory without data_dir: %v", err)
	}
}
