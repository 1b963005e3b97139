package integration

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.step.sm/crypto/pemutil"
)

// TestKeyManagerDiskEncrypted runs a real server with its keys (CA, JWT
// and cluster identity) encrypted at rest (key_manager "disk" with
// passphrase_file): an agent gets an
// SVID signed by a key that is on disk only encrypted, `sigil keys
// encrypt` refuses to run beside the live server, a restart with a wrong
// passphrase fails with a message naming the key file and changes
// nothing, and a restart with the right one serves SVIDs from the same CA.
func TestKeyManagerDiskEncrypted(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	const passphrase = "integration passphrase for the CA keys"
	root := t.TempDir()
	passFile := filepath.Join(root, "keys.pass")
	wrongFile := filepath.Join(root, "wrong.pass")
	if err := os.WriteFile(passFile, []byte(passphrase+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(wrongFile, []byte("not the passphrase\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A cluster of one (cluster_address set), so that the server has a
	// cluster identity key too.
	clusterAddr := freeAddr(t)
	s := newServerWith(t, filepath.Join(root, "server"), fmt.Sprintf(`
  cluster_address   = %q
  advertise_address = %q
  join_secret       = %q
  plugins {
    node_attestor "join_token" {}
    key_manager "disk" {
      passphrase_file = %q
    }
  }`, clusterAddr, clusterAddr, haJoinSecret, passFile))
	data := filepath.Join(s.dir, "data")
	s.start()
	a := newAgent(t, s, filepath.Join(root, "agent"))
	a.start()
	want := "spiffe://" + trustDomain + "/it/encrypted"
	createEntry(t, s, want, a.id, uidSelector(t))
	leaf := fetchID(t, a.socket, want).SVIDs[0].Certificates[0]

	// Every key file is encrypted; decrypted with the passphrase, one of
	// them is the CA key that signed the SVID; none of the keys is
	// anywhere in the data directory in clear.
	keys := map[string]crypto.Signer{}
	for _, dir := range []string{filepath.Join(data, "keys"), filepath.Join(data, "cluster", "keys")} {
		files, err := filepath.Glob(filepath.Join(dir, "*.key.pem"))
		if err != nil || len(files) == 0 {
			t.Fatalf("no key files in %s: %v", dir, err)
		}
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if block, _ := pem.Decode(b); block == nil || block.Type != "ENCRYPTED PRIVATE KEY" {
				t.Fatalf("%s is not an encrypted PEM key", f)
			}
			k, err := pemutil.ParseKey(b, pemutil.WithPassword([]byte(passphrase)))
			if err != nil {
				t.Fatalf("%s does not decrypt with the passphrase: %v", f, err)
			}
			keys[f] = k.(crypto.Signer)
		}
	}
	signer := ""
	for f, k := range keys {
		c := &x509.Certificate{PublicKey: k.Public()}
		if c.CheckSignature(leaf.SignatureAlgorithm, leaf.RawTBSCertificate, leaf.Signature) == nil {
			signer = f
		}
	}
	if signer == "" {
		t.Fatalf("the SVID was not signed by any of the keys on disk (%d)", len(keys))
	}
	scanForKeys(t, data, keys)

	// The migration command refuses to touch a live server's keys.
	out, err := sigilErr("keys", "encrypt", "-data-dir", data, "-passphrase-file", passFile)
	if err == nil || !strings.Contains(out, "a server is running on the data directory "+data) {
		t.Errorf("sigil keys encrypt beside a running server: %v\n%s", err, out)
	}

	bundle := s.cli("bundle", "show")
	s.p.stop()
	before := keyFileContents(t, data)

	// A wrong passphrase: the server exits with the key file named.
	setPassFile(t, s, passFile, wrongFile)
	p := startProc(t, "server-wrong-passphrase", filepath.Join(s.dir, "server-wrong.log"), nil, sigilBin, "server", "-config", s.config)
	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
		t.Fatal("the server with a wrong passphrase did not exit")
	}
	if p.err == nil {
		t.Fatal("the server with a wrong passphrase exited with status 0")
	}
	logb, _ := os.ReadFile(p.log)
	if !bytes.Contains(logb, []byte("ca/keymanager/disk: cannot decrypt key file "+filepath.Join(data))) || !bytes.Contains(logb, []byte("wrong passphrase")) {
		t.Errorf("the failed start does not say which key file did not decrypt:\n%s", tail(string(logb), 3000))
	}
	t.Logf("the server with a wrong passphrase said: %s", lastLine(logb))
	if bytes.Contains(logb, []byte(passphrase)) {
		t.Error("the log holds the passphrase")
	}
	after := keyFileContents(t, data)
	if len(after) != len(before) {
		t.Errorf("key files before the failed start %d, after %d", len(before), len(after))
	}
	for f, c := range before {
		if after[f] != c {
			t.Errorf("%s changed in the failed start", f)
		}
	}

	// The right passphrase: the same CA serves again.
	setPassFile(t, s, wrongFile, passFile)
	s.start()
	if got := s.cli("bundle", "show"); got != bundle {
		t.Error("the bundle changed across the restart: the CA keys were not reused")
	}
	want2 := "spiffe://" + trustDomain + "/it/encrypted-after-restart"
	createEntry(t, s, want2, a.id, uidSelector(t))
	leaf2 := fetchID(t, a.socket, want2).SVIDs
	var got2 *x509.Certificate
	for _, sv := range leaf2 {
		if sv.ID.String() == want2 {
			got2 = sv.Certificates[0]
		}
	}
	if got2 == nil {
		t.Fatal("no SVID for the second entry")
	}
	c := &x509.Certificate{PublicKey: keys[signer].Public()}
	if err := c.CheckSignature(got2.SignatureAlgorithm, got2.RawTBSCertificate, got2.Signature); err != nil {
		t.Errorf("after the restart the SVID is not signed by the key in %s: %v", signer, err)
	}
}

// setPassFile replaces the passphrase file named in the server's config.
func setPassFile(t *testing.T, s *server, from, to string) {
	t.Helper()
	b, err := os.ReadFile(s.config)
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.Replace(string(b), fmt.Sprintf("%q", from), fmt.Sprintf("%q", to), 1)
	if cfg == string(b) {
		t.Fatalf("%s does not name %s", s.config, from)
	}
	if err := os.WriteFile(s.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
}

// keyFileContents returns the content of every file in data's key
// directories (those that exist).
func keyFileContents(t *testing.T, data string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, dir := range []string{filepath.Join(data, "keys"), filepath.Join(data, "cluster", "keys")} {
		entries, err := os.ReadDir(dir)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Fatal(err)
		}
		for _, e := range entries {
			b, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			m[filepath.Join(dir, e.Name())] = string(b)
		}
	}
	return m
}

// scanForKeys fails if any file under dir holds one of keys in clear
// (PKCS#8 DER, its base64 as in a PEM file).
func scanForKeys(t *testing.T, dir string, keys map[string]crypto.Signer) {
	t.Helper()
	var needles [][]byte
	for _, k := range keys {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		pemText := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
		lines := bytes.Split(pemText, []byte("\n"))
		needles = append(needles, der, lines[1])
	}
	scanned := 0
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		scanned++
		for _, n := range needles {
			if bytes.Contains(b, n) {
				t.Errorf("%s holds a private key in clear", path)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if scanned == 0 {
		t.Fatalf("nothing scanned in %s", dir)
	}
}

// lastLine returns the last non-empty line of b.
func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

// TestKeyManagerDiskMigration is the operator's path to encryption: a
// server that kept its keys in clear, stopped, is configured with a
// passphrase_file; it refuses to start and prints the migration command;
// that command, run as printed, encrypts the keys; the server then starts
// with the same CA.
func TestKeyManagerDiskMigration(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	root := t.TempDir()
	passFile := filepath.Join(root, "keys.pass")
	if err := os.WriteFile(passFile, []byte("migration passphrase\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := newServerWith(t, filepath.Join(root, "server"), `
  plugins {
    node_attestor "join_token" {}
    key_manager "disk" {}
  }`)
	data := filepath.Join(s.dir, "data")
	s.start()
	bundle := s.cli("bundle", "show")
	s.p.stop()
	before := keyFileContents(t, data)
	if len(before) == 0 {
		t.Fatal("no key files after the first run")
	}
	for f, c := range before {
		if !strings.HasPrefix(c, "-----BEGIN PRIVATE KEY-----") {
			t.Fatalf("%s is not a key in clear before the migration", f)
		}
	}

	b, err := os.ReadFile(s.config)
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.Replace(string(b), `key_manager "disk" {}`, fmt.Sprintf(`key_manager "disk" { passphrase_file = %q }`, passFile), 1)
	if err := os.WriteFile(s.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startProc(t, "server-refused", filepath.Join(s.dir, "server-refused.log"), nil, sigilBin, "server", "-config", s.config)
	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
		t.Fatal("the server did not refuse its keys in clear")
	}
	logb, _ := os.ReadFile(p.log)
	msg := lastLine(logb)
	const lead = "encrypt the existing keys with: "
	i := strings.Index(msg, lead)
	if p.err == nil || i < 0 || !strings.Contains(msg, " is not encrypted but a passphrase is configured") {
		t.Fatalf("the server did not refuse the keys in clear with the migration command (exit %v): %s", p.err, msg)
	}
	command := msg[i+len(lead):]
	want := "sigil keys encrypt -data-dir " + data + " -passphrase-file " + passFile
	if command != want {
		t.Fatalf("migration command %q, want %q", command, want)
	}
	if after := keyFileContents(t, data); len(after) != len(before) {
		t.Fatal("the refused start changed the key files")
	}

	out := sigil(t, strings.Fields(command)[1:]...)
	if !strings.Contains(out, fmt.Sprintf("%d key files encrypted", len(before))) {
		t.Errorf("sigil keys encrypt: %s", out)
	}
	for f, c := range keyFileContents(t, data) {
		if !strings.HasPrefix(c, "-----BEGIN ENCRYPTED PRIVATE KEY-----") {
			t.Errorf("%s is not encrypted after the migration", f)
		}
	}

	s.start()
	if got := s.cli("bundle", "show"); got != bundle {
		t.Error("the bundle changed across the migration: the CA keys were not kept")
	}
}
