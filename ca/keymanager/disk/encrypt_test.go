package disk_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/ca/keymanager/disk"
	"github.com/sigil-id/sigil/ca/keymanager/internal/signtest"
)

var (
	passA = []byte("correct horse battery staple")
	passB = []byte("not the passphrase")
)

// scopeKeys are a key id per scope, as a server names them.
var scopeKeys = map[ca.KeyScope]string{
	ca.KeyScopeAuthorities:     "x509-ca",
	ca.KeyScopeClusterIdentity: "cluster-ca",
}

func storeDirs(t *testing.T) map[ca.KeyScope]string {
	t.Helper()
	return disk.DefaultDirs(t.TempDir())
}

func dirList(dirs map[ca.KeyScope]string) []string {
	return []string{dirs[ca.KeyScopeAuthorities], dirs[ca.KeyScopeClusterIdentity]}
}

// generate creates the key of each scope in a store over dirs.
func generate(t *testing.T, dirs map[ca.KeyScope]string, opts ...disk.Option) map[ca.KeyScope]crypto.Signer {
	t.Helper()
	st, err := disk.NewStore(dirs, opts...)
	if err != nil {
		t.Fatal(err)
	}
	keys := map[ca.KeyScope]crypto.Signer{}
	for scope, id := range scopeKeys {
		km, err := st.OpenKeyManager(context.Background(), scope)
		if err != nil {
			t.Fatal(err)
		}
		kt := ca.KeyTypeECP256
		if scope == ca.KeyScopeClusterIdentity {
			kt = ca.KeyTypeECP384
		}
		k, err := km.GenerateKey(context.Background(), id, kt)
		if err != nil {
			t.Fatal(err)
		}
		keys[scope] = k
	}
	return keys
}

// reopen opens a store over dirs as a restarted server does and checks
// that each scope's key is the one in want and signs.
func reopen(t *testing.T, dirs map[ca.KeyScope]string, want map[ca.KeyScope]crypto.Signer, opts ...disk.Option) {
	t.Helper()
	st, err := disk.NewStore(dirs, opts...)
	if err != nil {
		t.Fatal(err)
	}
	for scope, id := range scopeKeys {
		km, err := st.OpenKeyManager(context.Background(), scope)
		if err != nil {
			t.Fatalf("%s: %v", scope, err)
		}
		got, err := km.GetKey(context.Background(), id)
		if err != nil {
			t.Fatalf("%s: %v", scope, err)
		}
		if !publicEqual(want[scope], got) {
			t.Fatalf("%s: the reopened key is not the one generated", scope)
		}
		signtest.SignVerify(t, got)
	}
}

// checkEncrypted fails unless every key file in dirs is an encrypted PEM
// holding none of keys in any encoding (DER, base64 of DER, clear PEM).
func checkEncrypted(t *testing.T, dirs map[ca.KeyScope]string, keys map[ca.KeyScope]crypto.Signer) {
	t.Helper()
	var secrets [][]byte
	for _, k := range keys {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		clearPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
		secrets = append(secrets, der, []byte(base64.StdEncoding.EncodeToString(der)[:64]), clearPEM)
		// The private scalar alone (EC keys): its bytes must not appear.
		if ec, ok := k.(interface{ Bytes() ([]byte, error) }); ok {
			if b, err := ec.Bytes(); err == nil {
				secrets = append(secrets, b)
			}
		}
	}
	n := 0
	for _, dir := range dirList(dirs) {
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			path := filepath.Join(dir, e.Name())
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			n++
			fi, _ := os.Stat(path)
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("%s: mode %v, want 0600", path, fi.Mode().Perm())
			}
			block, rest := pem.Decode(data)
			if block == nil || block.Type != "ENCRYPTED PRIVATE KEY" || len(bytes.TrimSpace(rest)) != 0 {
				t.Errorf("%s is not a single encrypted PEM block: %.40q", path, data)
			}
			for _, s := range secrets {
				if bytes.Contains(data, s) {
					t.Errorf("%s holds private key material in clear", path)
				}
			}
		}
	}
	if n != len(keys) {
		t.Errorf("%d files in the key directories, want %d", n, len(keys))
	}
}

// snapshot returns the content of every file in dirs.
func snapshot(t *testing.T, dirs map[ca.KeyScope]string) map[string]string {
	t.Helper()
	files := map[string]string{}
	for _, dir := range dirList(dirs) {
		entries, err := os.ReadDir(dir)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		for _, e := range entries {
			b, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			files[filepath.Join(dir, e.Name())] = string(b)
		}
	}
	return files
}

func TestEncryptedBothScopesSurviveRestart(t *testing.T) {
	t.Parallel()
	dirs := storeDirs(t)
	keys := generate(t, dirs, disk.WithPassphrase(passA))
	checkEncrypted(t, dirs, keys)
	reopen(t, dirs, keys, disk.WithPassphrase(passA))
	st, err := disk.NewStore(dirs, disk.WithPassphrase(passA))
	if err != nil {
		t.Fatal(err)
	}
	if !st.Encrypted() || !st.Persistent() {
		t.Errorf("Encrypted() = %v, Persistent() = %v, want both true", st.Encrypted(), st.Persistent())
	}
	if plain, _ := disk.NewStore(dirs); plain.Encrypted() {
		t.Error("a store without a passphrase reports Encrypted")
	}
}

func TestEncryptedRSAKey(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	m, err := disk.New(dir, disk.WithPassphrase(passA))
	if err != nil {
		t.Fatal(err)
	}
	k, err := m.GenerateKey(context.Background(), "jwt", ca.KeyTypeRSA2048)
	if err != nil {
		t.Fatal(err)
	}
	m2, err := disk.New(dir, disk.WithPassphrase(passA))
	if err != nil {
		t.Fatal(err)
	}
	got, err := m2.GetKey(context.Background(), "jwt")
	if err != nil {
		t.Fatal(err)
	}
	if !publicEqual(k, got) {
		t.Fatal("reloaded RSA key differs")
	}
	signtest.SignVerify(t, got)
}

func TestWrongPassphrase(t *testing.T) {
	t.Parallel()
	dirs := storeDirs(t)
	generate(t, dirs, disk.WithPassphrase(passA))
	before := snapshot(t, dirs)
	st, err := disk.NewStore(dirs, disk.WithPassphrase(passB))
	if err != nil {
		t.Fatal(err)
	}
	for scope, id := range scopeKeys {
		_, err := st.OpenKeyManager(context.Background(), scope)
		want := filepath.Join(dirs[scope], id+".key.pem")
		if err == nil || !strings.Contains(err.Error(), "cannot decrypt key file "+want+": wrong passphrase") {
			t.Errorf("%s: %v, want the wrong passphrase error naming %s", scope, err, want)
		}
		if err != nil && (strings.Contains(err.Error(), string(passA)) || strings.Contains(err.Error(), string(passB))) {
			t.Errorf("%s: the error holds a passphrase: %v", scope, err)
		}
	}
	if after := snapshot(t, dirs); !maps.Equal(before, after) {
		t.Error("a failed open changed the key directories")
	}

	// A key file under another passphrase than the one the open checked
	// fails at GetKey, naming it, and is not reported as missing.
	dir := dirs[ca.KeyScopeAuthorities]
	otherDir := t.TempDir()
	other, err := disk.New(otherDir, disk.WithPassphrase(passB))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.GenerateKey(context.Background(), "z-other", ca.KeyTypeECP256); err != nil {
		t.Fatal(err)
	}
	m, err := disk.New(dir, disk.WithPassphrase(passA))
	if err != nil {
		t.Fatal(err)
	}
	copyFile(t, filepath.Join(otherDir, "z-other.key.pem"), filepath.Join(dir, "z-other.key.pem"))
	_, err = m.GetKey(context.Background(), "z-other")
	if err == nil || errors.Is(err, ca.ErrKeyNotFound) || !strings.Contains(err.Error(), filepath.Join(dir, "z-other.key.pem")+": wrong passphrase") {
		t.Errorf("GetKey of a key under another passphrase: %v", err)
	}
}

func TestClearKeyRefusedWithMigrationCommand(t *testing.T) {
	t.Parallel()
	dirs := storeDirs(t)
	generate(t, dirs)
	before := snapshot(t, dirs)
	const cmd = "sigil keys encrypt -data-dir /var/lib/sigil/server -passphrase-file /etc/sigil/keys.pass"
	st, err := disk.NewStore(dirs, disk.WithPassphrase(passA), disk.WithMigrationCommand(cmd))
	if err != nil {
		t.Fatal(err)
	}
	for scope, id := range scopeKeys {
		_, err := st.OpenKeyManager(context.Background(), scope)
		path := filepath.Join(dirs[scope], id+".key.pem")
		if err == nil || !strings.Contains(err.Error(), path+" is not encrypted") || !strings.HasSuffix(err.Error(), ": "+cmd) {
			t.Errorf("%s: %v, want the refusal naming %s and ending with the migration command", scope, err, path)
		}
	}
	if after := snapshot(t, dirs); !maps.Equal(before, after) {
		t.Error("a refused open changed the key directories")
	}

	// Without WithMigrationCommand, the command is given with placeholders.
	if _, err := disk.New(dirs[ca.KeyScopeAuthorities], disk.WithPassphrase(passA)); err == nil || !strings.Contains(err.Error(), disk.DefaultMigrationCommand) {
		t.Errorf("default migration command: %v", err)
	}

	// A clear file that appears after the open is refused by GetKey.
	dir := t.TempDir()
	m, err := disk.New(dir, disk.WithPassphrase(passA), disk.WithMigrationCommand(cmd))
	if err != nil {
		t.Fatal(err)
	}
	copyFile(t, filepath.Join(dirs[ca.KeyScopeAuthorities], "x509-ca.key.pem"), filepath.Join(dir, "x509-ca.key.pem"))
	if _, err := m.GetKey(context.Background(), "x509-ca"); err == nil || errors.Is(err, ca.ErrKeyNotFound) || !strings.Contains(err.Error(), "is not encrypted") || !strings.Contains(err.Error(), cmd) {
		t.Errorf("GetKey of a clear key file: %v", err)
	}
}

func TestEncryptedKeyRefusedWithoutPassphrase(t *testing.T) {
	t.Parallel()
	dirs := storeDirs(t)
	generate(t, dirs, disk.WithPassphrase(passA))
	st, err := disk.NewStore(dirs)
	if err != nil {
		t.Fatal(err)
	}
	for scope, id := range scopeKeys {
		_, err := st.OpenKeyManager(context.Background(), scope)
		path := filepath.Join(dirs[scope], id+".key.pem")
		if err == nil || !strings.Contains(err.Error(), path+" is encrypted and no passphrase is configured: set passphrase_file or passphrase_env") {
			t.Errorf("%s: %v", scope, err)
		}
	}
	dir := t.TempDir()
	m, err := disk.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	copyFile(t, filepath.Join(dirs[ca.KeyScopeAuthorities], "x509-ca.key.pem"), filepath.Join(dir, "x509-ca.key.pem"))
	if _, err := m.GetKey(context.Background(), "x509-ca"); err == nil || errors.Is(err, ca.ErrKeyNotFound) || !strings.Contains(err.Error(), "no passphrase is configured") {
		t.Errorf("GetKey of an encrypted key file without a passphrase: %v", err)
	}
}

func TestMigrationEncryptThenDecrypt(t *testing.T) {
	t.Parallel()
	dirs := storeDirs(t)
	keys := generate(t, dirs)
	clearFiles := snapshot(t, dirs)

	// A wrong passphrase cannot exist for clear files, but an empty one is
	// refused.
	if _, err := disk.EncryptFiles(dirList(dirs), nil); err == nil {
		t.Error("EncryptFiles accepted an empty passphrase")
	}
	done, err := disk.EncryptFiles(dirList(dirs), passA)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(done)
	want := []string{
		filepath.Join(dirs[ca.KeyScopeClusterIdentity], "cluster-ca.key.pem"),
		filepath.Join(dirs[ca.KeyScopeAuthorities], "x509-ca.key.pem"),
	}
	slices.Sort(want)
	if !slices.Equal(done, want) {
		t.Errorf("EncryptFiles rewrote %v, want %v", done, want)
	}
	checkEncrypted(t, dirs, keys)
	reopen(t, dirs, keys, disk.WithPassphrase(passA))

	// A rerun has nothing left to do; with another passphrase it fails
	// and changes nothing.
	encFiles := snapshot(t, dirs)
	if done, err := disk.EncryptFiles(dirList(dirs), passA); err != nil || len(done) != 0 {
		t.Errorf("second EncryptFiles: %v, %v", done, err)
	}
	if done, err := disk.EncryptFiles(dirList(dirs), passB); err == nil || len(done) != 0 || !strings.Contains(err.Error(), "wrong passphrase") {
		t.Errorf("EncryptFiles over files under another passphrase: %v, %v", done, err)
	}
	if _, err := disk.DecryptFiles(dirList(dirs), passB); err == nil || !strings.Contains(err.Error(), "wrong passphrase") {
		t.Errorf("DecryptFiles with a wrong passphrase: %v", err)
	}
	if after := snapshot(t, dirs); !maps.Equal(encFiles, after) {
		t.Error("a failed migration changed the key files")
	}

	done, err = disk.DecryptFiles(dirList(dirs), passA)
	if err != nil || len(done) != 2 {
		t.Fatalf("DecryptFiles: %v, %v", done, err)
	}
	reopen(t, dirs, keys)
	if after := snapshot(t, dirs); len(after) != len(clearFiles) {
		t.Errorf("after decryption %d files, want %d", len(after), len(clearFiles))
	}
}

func TestMigrationAllOrNothing(t *testing.T) {
	t.Parallel()
	// One scope in clear, the other encrypted under another passphrase:
	// EncryptFiles fails on the second before rewriting the first.
	dirs := storeDirs(t)
	a, err := disk.New(dirs[ca.KeyScopeAuthorities])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.GenerateKey(context.Background(), "x509-ca", ca.KeyTypeECP256); err != nil {
		t.Fatal(err)
	}
	c, err := disk.New(dirs[ca.KeyScopeClusterIdentity], disk.WithPassphrase(passB))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.GenerateKey(context.Background(), "cluster-ca", ca.KeyTypeECP256); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, dirs)
	done, err := disk.EncryptFiles(dirList(dirs), passA)
	if err == nil || len(done) != 0 || !strings.Contains(err.Error(), filepath.Join(dirs[ca.KeyScopeClusterIdentity], "cluster-ca.key.pem")) {
		t.Errorf("EncryptFiles: %v, %v; want an error naming the cluster key", done, err)
	}
	if after := snapshot(t, dirs); !maps.Equal(before, after) {
		t.Error("a failed EncryptFiles rewrote some files")
	}
	// A damaged key file stops it too.
	if err := os.WriteFile(filepath.Join(dirs[ca.KeyScopeClusterIdentity], "cluster-ca.key.pem"), []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := disk.EncryptFiles(dirList(dirs), passA); err == nil || !strings.Contains(err.Error(), "not a single PEM") {
		t.Errorf("EncryptFiles over a damaged file: %v", err)
	}
	// Directories that do not exist hold no keys.
	if done, err := disk.EncryptFiles([]string{filepath.Join(t.TempDir(), "none")}, passA); err != nil || len(done) != 0 {
		t.Errorf("EncryptFiles of a missing directory: %v, %v", done, err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestDamagedEncryptedKeyFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	m, err := disk.New(dir, disk.WithPassphrase(passA))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.GenerateKey(context.Background(), "k", ca.KeyTypeECP256); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "k.key.pem")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	block.Bytes = block.Bytes[:len(block.Bytes)/2] // truncated
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = disk.New(dir, disk.WithPassphrase(passA))
	if err == nil || !strings.Contains(err.Error(), "cannot decrypt key file "+path+": wrong passphrase or damaged file (") {
		t.Errorf("a truncated encrypted key file: %v", err)
	}
}
