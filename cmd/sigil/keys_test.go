package main

import (
	"bytes"
	"context"
	"crypto"
	"os"
	"path/filepath"
	"strings"
	"testing"

	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/ca/keymanager/disk"
	"github.com/sigil-id/sigil/cmd/sigil/internal/cli"
)

// keysServerDir is a stopped server's data directory: its Raft database
// and a key in each scope of the disk key manager, in clear.
func keysServerDir(t *testing.T) (dataDir string, keys map[ca.KeyScope]crypto.Signer) {
	t.Helper()
	dataDir = filepath.Join(t.TempDir(), "server")
	if err := os.MkdirAll(filepath.Join(dataDir, "raft"), 0o700); err != nil {
		t.Fatal(err)
	}
	db, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(dataDir, "raft", "raft.db")})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	st, err := disk.NewStore(disk.DefaultDirs(dataDir))
	if err != nil {
		t.Fatal(err)
	}
	keys = map[ca.KeyScope]crypto.Signer{}
	for _, scope := range []ca.KeyScope{ca.KeyScopeAuthorities, ca.KeyScopeClusterIdentity} {
		km, err := st.OpenKeyManager(context.Background(), scope)
		if err != nil {
			t.Fatal(err)
		}
		if keys[scope], err = km.GenerateKey(context.Background(), "k-"+string(scope), ca.KeyTypeECP256); err != nil {
			t.Fatal(err)
		}
	}
	return dataDir, keys
}

func runSigil(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = cli.Execute(newRootCommand(), args, &out, &errb)
	return code, out.String(), errb.String()
}

// keyFilesContent returns the content of each key file of dataDir.
func keyFilesContent(t *testing.T, dataDir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, dir := range disk.DefaultDirs(dataDir) {
		matches, _ := filepath.Glob(filepath.Join(dir, "*"))
		for _, f := range matches {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			m[f] = string(b)
		}
	}
	return m
}

// checkKeys opens dataDir's key store with opts and checks that it holds
// keys, with the same public keys.
func checkKeys(t *testing.T, dataDir string, keys map[ca.KeyScope]crypto.Signer, opts ...disk.Option) {
	t.Helper()
	st, err := disk.NewStore(disk.DefaultDirs(dataDir), opts...)
	if err != nil {
		t.Fatal(err)
	}
	for scope, k := range keys {
		km, err := st.OpenKeyManager(context.Background(), scope)
		if err != nil {
			t.Fatalf("%s: %v", scope, err)
		}
		got, err := km.GetKey(context.Background(), "k-"+string(scope))
		if err != nil {
			t.Fatalf("%s: %v", scope, err)
		}
		if !k.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(got.Public()) {
			t.Fatalf("%s: a different key after the migration", scope)
		}
	}
}

func TestKeysEncryptDecrypt(t *testing.T) {
	const secret = "keys command passphrase"
	dataDir, keys := keysServerDir(t)
	passFile := filepath.Join(t.TempDir(), "keys.pass")
	if err := os.WriteFile(passFile, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	clearFiles := keyFilesContent(t, dataDir)

	// A running server holds its Raft database: the command refuses.
	db, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(dataDir, "raft", "raft.db")})
	if err != nil {
		t.Fatal(err)
	}
	code, _, stderr := runSigil("keys", "encrypt", "-data-dir", dataDir, "-passphrase-file", passFile)
	if code == 0 || !strings.Contains(stderr, "sigil: keys: a server is running on the data directory "+dataDir) {
		t.Errorf("with the server running: code %d, %q", code, stderr)
	}
	db.Close()
	if got := keyFilesContent(t, dataDir); len(got) != 2 || got[filepath.Join(dataDir, "keys", "k-authorities.key.pem")] != clearFiles[filepath.Join(dataDir, "keys", "k-authorities.key.pem")] {
		t.Fatal("the refused command changed the key files")
	}

	code, stdout, stderr := runSigil("keys", "encrypt", "-data-dir", dataDir, "-passphrase-file", passFile)
	if code != 0 {
		t.Fatalf("keys encrypt: code %d, %s", code, stderr)
	}
	for _, f := range []string{filepath.Join(dataDir, "keys", "k-authorities.key.pem"), filepath.Join(dataDir, "cluster", "keys", "k-cluster_identity.key.pem")} {
		if !strings.Contains(stdout, "encrypted "+f+"\n") {
			t.Errorf("output does not list %s: %q", f, stdout)
		}
		fi, err := os.Stat(f)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, mode %v", f, err, fi.Mode().Perm())
		}
		b, _ := os.ReadFile(f)
		if !bytes.HasPrefix(b, []byte("-----BEGIN ENCRYPTED PRIVATE KEY-----")) {
			t.Errorf("%s is not encrypted", f)
		}
	}
	if !strings.HasSuffix(stdout, "2 key files encrypted\n") {
		t.Errorf("output %q", stdout)
	}
	checkKeys(t, dataDir, keys, disk.WithPassphrase([]byte(secret)))

	// Again: nothing to do.
	if code, stdout, _ := runSigil("keys", "encrypt", "-data-dir", dataDir, "-passphrase-file", passFile); code != 0 || !strings.HasPrefix(stdout, "no key file to encrypt") {
		t.Errorf("second run: code %d, %q", code, stdout)
	}

	// Decrypt with a wrong passphrase (from the environment): nothing
	// changes.
	encFiles := keyFilesContent(t, dataDir)
	t.Setenv("SIGIL_TEST_WRONG", "wrong")
	code, _, stderr = runSigil("keys", "decrypt", "-data-dir", dataDir, "-passphrase-env", "SIGIL_TEST_WRONG")
	if code == 0 || !strings.Contains(stderr, "sigil: keys: ca/keymanager/disk: cannot decrypt key file ") || !strings.Contains(stderr, "wrong passphrase") {
		t.Errorf("decrypt with a wrong passphrase: code %d, %q", code, stderr)
	}
	for f, c := range keyFilesContent(t, dataDir) {
		if encFiles[f] != c {
			t.Errorf("%s changed after a failed decrypt", f)
		}
	}
	t.Setenv("SIGIL_TEST_RIGHT", secret)
	if code, stdout, stderr := runSigil("keys", "decrypt", "-data-dir", dataDir, "-passphrase-env", "SIGIL_TEST_RIGHT"); code != 0 || !strings.HasSuffix(stdout, "2 key files decrypted\n") {
		t.Fatalf("decrypt: code %d, %q %q", code, stdout, stderr)
	}
	checkKeys(t, dataDir, keys)
}

// TestKeysRekey: `sigil keys rekey` changes the passphrase in one step;
// a wrong current passphrase, the same passphrase, a short one and key
// files in clear are refused and change nothing.
func TestKeysRekey(t *testing.T) {
	dataDir, keys := keysServerDir(t)
	dir := t.TempDir()
	write := func(name, secret string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(secret+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	oldFile, newFile := write("old.pass", "the old passphrase"), write("new.pass", "the new passphrase")
	wrongFile, shortFile := write("wrong.pass", "not the passphrase"), write("short.pass", "short")

	// Key files in clear are refused: encrypt first.
	code, _, stderr := runSigil("keys", "rekey", "-data-dir", dataDir, "-passphrase-file", oldFile, "-new-passphrase-file", newFile)
	if code == 0 || !strings.Contains(stderr, "is in clear: encrypt the key files first") {
		t.Fatalf("rekey of clear files: code %d, %q", code, stderr)
	}
	if code, _, stderr := runSigil("keys", "encrypt", "-data-dir", dataDir, "-passphrase-file", oldFile); code != 0 {
		t.Fatalf("encrypt: %s", stderr)
	}
	before := keyFilesContent(t, dataDir)
	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"wrong current": {[]string{"-passphrase-file", wrongFile, "-new-passphrase-file", newFile}, "wrong passphrase"},
		"same":          {[]string{"-passphrase-file", oldFile, "-new-passphrase-file", oldFile}, "the new passphrase is the current one"},
		"short new":     {[]string{"-passphrase-file", oldFile, "-new-passphrase-file", shortFile}, "new passphrase"},
		"no new":        {[]string{"-passphrase-file", oldFile}, "-new-passphrase-file or -new-passphrase-env is required"},
		"both new":      {[]string{"-passphrase-file", oldFile, "-new-passphrase-file", newFile, "-new-passphrase-env", "X"}, "keep one"},
	} {
		code, _, stderr := runSigil(append([]string{"keys", "rekey", "-data-dir", dataDir}, tc.args...)...)
		if code == 0 || !strings.Contains(stderr, tc.want) {
			t.Errorf("%s: code %d, %q, want %q", name, code, stderr, tc.want)
		}
	}
	if after := keyFilesContent(t, dataDir); len(after) != len(before) {
		t.Fatal("a refused rekey changed the key files")
	} else {
		for f, c := range after {
			if before[f] != c {
				t.Fatalf("%s changed after a refused rekey", f)
			}
		}
	}

	code, stdout, stderr := runSigil("keys", "rekey", "-data-dir", dataDir, "-passphrase-file", oldFile, "-new-passphrase-file", newFile)
	if code != 0 || !strings.HasSuffix(stdout, "2 key files rekeyed\n") {
		t.Fatalf("rekey: code %d, %q %q", code, stdout, stderr)
	}
	for f, c := range keyFilesContent(t, dataDir) {
		if !strings.HasPrefix(c, "-----BEGIN ENCRYPTED PRIVATE KEY-----") || c == before[f] {
			t.Errorf("%s not re-encrypted", f)
		}
	}
	checkKeys(t, dataDir, keys, disk.WithPassphrase([]byte("the new passphrase")))
	st, err := disk.NewStore(disk.DefaultDirs(dataDir), disk.WithPassphrase([]byte("the old passphrase")))
	if err == nil {
		if km, err := st.OpenKeyManager(context.Background(), ca.KeyScopeAuthorities); err == nil {
			if _, err := km.GetKey(context.Background(), "k-authorities"); err == nil {
				t.Fatal("the old passphrase still opens the keys")
			}
		}
	}
}

func TestKeysCommandErrors(t *testing.T) {
	dataDir, _ := keysServerDir(t)
	passFile := filepath.Join(t.TempDir(), "keys.pass")
	os.WriteFile(passFile, []byte("p"), 0o644)
	os.Chmod(passFile, 0o644)
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"keys", "encrypt", "-passphrase-file", passFile}, "keys: -data-dir is required"},
		{[]string{"keys", "encrypt", "-data-dir", dataDir}, "keys: -passphrase-file or -passphrase-env is required"},
		{[]string{"keys", "encrypt", "-data-dir", dataDir, "-passphrase-file", passFile, "-passphrase-env", "X"}, "both -passphrase-file and -passphrase-env are set"},
		{[]string{"keys", "encrypt", "-data-dir", dataDir, "-passphrase-file", passFile}, "keys: passphrase: " + passFile + " is accessible by group or others"},
		{[]string{"keys", "encrypt", "-data-dir", dataDir, "-passphrase-env", "SIGIL_TEST_UNSET_VARIABLE"}, "environment variable SIGIL_TEST_UNSET_VARIABLE is not set or empty"},
		{[]string{"keys", "encrypt", "-data-dir", dataDir, "-passphrase", "inline"}, "unknown flag -passphrase (see 'sigil keys encrypt -help')"},
	} {
		code, _, stderr := runSigil(tt.args...)
		if code == 0 || !strings.Contains(stderr, tt.want) || strings.Count(stderr, "\n") != 1 {
			t.Errorf("%q: code %d, stderr %q, want %q", tt.args, code, stderr, tt.want)
		}
	}
}
