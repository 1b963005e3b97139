package tpm

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/ca/keymanager/internal/signtest"
)

const testTD = "example.org"

// newTestStore returns a Store over tp with its blobs in dir.
func newTestStore(t testing.TB, tp *swtpm, dir string) *Store {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Device, cfg.StorageDirectory, cfg.TrustDomain, cfg.NodeName = tp.socket, dir, testTD, "node-1"
	s, err := NewStore(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// tpmDir is a storage directory that does not exist yet.
func tpmDir(t testing.TB) string { return filepath.Join(t.TempDir(), "tpm") }

func openKM(t testing.TB, s *Store, scope ca.KeyScope) *KeyManager {
	t.Helper()
	km, err := s.OpenKeyManager(context.Background(), scope)
	if err != nil {
		t.Fatal(err)
	}
	return km.(*KeyManager)
}

func publicEqual(a, b crypto.PublicKey) bool {
	return a.(interface{ Equal(crypto.PublicKey) bool }).Equal(b)
}

// TestGenerateGetSignReopen: each key type is created in the TPM, signs
// (verified with the public key), is found again by a new Store on the
// same directory (a restart) and after the TPM itself restarted (a
// reboot), and only a wrapped blob is on disk.
func TestGenerateGetSignReopen(t *testing.T) {
	ctx := context.Background()
	tp := startSWTPM(t)
	dir := filepath.Join(t.TempDir(), "tpm")
	s := newTestStore(t, tp, dir)
	if !s.Persistent() {
		t.Fatal("Persistent() = false")
	}
	km := openKM(t, s, ca.KeyScopeAuthorities)
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("storage directory mode %#o, want 0700", fi.Mode().Perm())
	}
	types := []ca.KeyType{ca.KeyTypeECP256, ca.KeyTypeECP384, ca.KeyTypeRSA2048}
	pubs := map[string]crypto.PublicKey{}
	for _, kt := range types {
		id := "x509-ca-" + string(kt)
		if _, err := km.GetKey(ctx, id); !errors.Is(err, ca.ErrKeyNotFound) {
			t.Fatalf("GetKey before GenerateKey: %v, want ErrKeyNotFound", err)
		}
		k, err := km.GenerateKey(ctx, id, kt)
		if err != nil {
			t.Fatal(err)
		}
		switch pub := k.Public().(type) {
		case *ecdsa.PublicKey:
			if want := map[ca.KeyType]int{ca.KeyTypeECP256: 256, ca.KeyTypeECP384: 384}[kt]; pub.Curve.Params().BitSize != want {
				t.Errorf("%s: curve %s", kt, pub.Curve.Params().Name)
			}
		case *rsa.PublicKey:
			if kt != ca.KeyTypeRSA2048 || pub.N.BitLen() != 2048 {
				t.Errorf("%s: RSA %d bits", kt, pub.N.BitLen())
			}
		}
		signtest.SignVerify(t, k)
		pubs[id] = k.Public()

		name, _ := Name(testTD, "node-1", ca.KeyScopeAuthorities, id)
		blob := filepath.Join(dir, "key-"+name+".tpmobj")
		fi, err := os.Stat(blob)
		if err != nil {
			t.Fatalf("no blob for %s: %v", id, err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("blob mode %#o, want 0600", fi.Mode().Perm())
		}
		b, _ := os.ReadFile(blob)
		if bytes.Contains(b, []byte("PRIVATE KEY")) {
			t.Errorf("blob of %s holds a PEM private key", id)
		}
	}

	check := func(km *KeyManager, when string) {
		t.Helper()
		for id, pub := range pubs {
			k, err := km.GetKey(ctx, id)
			if err != nil {
				t.Fatalf("%s: %v", when, err)
			}
			if !publicEqual(pub, k.Public()) {
				t.Fatalf("%s: key %s differs", when, id)
			}
			signtest.SignVerify(t, k)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	check(openKM(t, newTestStore(t, tp, dir), ca.KeyScopeAuthorities), "after reopening the store")
	tp.restart(t)
	check(openKM(t, newTestStore(t, tp, dir), ca.KeyScopeAuthorities), "after restarting the TPM")

	// The other scope does not see these keys.
	other := openKM(t, newTestStore(t, tp, dir), ca.KeyScopeClusterIdentity)
	if _, err := other.GetKey(ctx, "x509-ca-ec-p256"); !errors.Is(err, ca.ErrKeyNotFound) {
		t.Errorf("the cluster identity scope found an authorities key: %v", err)
	}
}

// TestGenerateReplaces: GenerateKey on an existing id makes a new key
// and the old one is gone, also for a new Store.
func TestGenerateReplaces(t *testing.T) {
	ctx := context.Background()
	tp := startSWTPM(t)
	dir := tpmDir(t)
	km := openKM(t, newTestStore(t, tp, dir), ca.KeyScopeAuthorities)
	k1, err := km.GenerateKey(ctx, "k", ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := km.GenerateKey(ctx, "k", ca.KeyTypeECP384)
	if err != nil {
		t.Fatal(err)
	}
	if publicEqual(k1.Public(), k2.Public()) {
		t.Fatal("GenerateKey returned the old key")
	}
	got, err := openKM(t, newTestStore(t, tp, dir), ca.KeyScopeAuthorities).GetKey(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if !publicEqual(k2.Public(), got.Public()) {
		t.Fatal("a new store finds the replaced key")
	}
	signtest.SignVerify(t, got)
}

// TestDeleteKey: the blob goes, GetKey then says not found (also for a
// new Store), and deleting a missing key is not an error.
func TestDeleteKey(t *testing.T) {
	ctx := context.Background()
	tp := startSWTPM(t)
	dir := tpmDir(t)
	km := openKM(t, newTestStore(t, tp, dir), ca.KeyScopeAuthorities)
	if _, err := km.GenerateKey(ctx, "old", ca.KeyTypeECP256); err != nil {
		t.Fatal(err)
	}
	if _, err := km.GenerateKey(ctx, "kept", ca.KeyTypeECP256); err != nil {
		t.Fatal(err)
	}
	if err := km.DeleteKey(ctx, "old"); err != nil {
		t.Fatal(err)
	}
	name, _ := Name(testTD, "node-1", ca.KeyScopeAuthorities, "old")
	if _, err := os.Stat(filepath.Join(dir, "key-"+name+".tpmobj")); !os.IsNotExist(err) {
		t.Fatalf("the blob is still there: %v", err)
	}
	if _, err := km.GetKey(ctx, "old"); !errors.Is(err, ca.ErrKeyNotFound) {
		t.Fatalf("GetKey after DeleteKey: %v", err)
	}
	km2 := openKM(t, newTestStore(t, tp, dir), ca.KeyScopeAuthorities)
	if _, err := km2.GetKey(ctx, "old"); !errors.Is(err, ca.ErrKeyNotFound) {
		t.Fatalf("a new store: %v", err)
	}
	if _, err := km2.GetKey(ctx, "kept"); err != nil {
		t.Fatalf("the other key went too: %v", err)
	}
	if err := km.DeleteKey(ctx, "old"); err != nil {
		t.Fatalf("deleting a missing key: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("storage directory holds %d files, want 1", len(entries))
	}
}

// TestRefusals: key types and ids the manager cannot take, and digests
// an EC key cannot sign, are refused with clear errors.
func TestRefusals(t *testing.T) {
	ctx := context.Background()
	tp := startSWTPM(t)
	dir := tpmDir(t)
	km := openKM(t, newTestStore(t, tp, dir), ca.KeyScopeAuthorities)
	for _, kt := range []ca.KeyType{"ed25519", "ec-p521", "rsa-4096", ""} {
		if _, err := km.GenerateKey(ctx, "k", kt); err == nil || !strings.Contains(err.Error(), "tpm: key type") || !strings.Contains(err.Error(), "not supported") {
			t.Errorf("GenerateKey(%q): %v", kt, err)
		}
	}
	for _, id := range []string{"", ".", "..", "../x", "a/b", "a b", ".hidden", "a\x00b", strings.Repeat("a", 129)} {
		if _, err := km.GenerateKey(ctx, id, ca.KeyTypeECP256); err == nil || !strings.Contains(err.Error(), "tpm: invalid key id") {
			t.Errorf("GenerateKey(%q): %v", id, err)
		}
		if _, err := km.GetKey(ctx, id); err == nil || errors.Is(err, ca.ErrKeyNotFound) {
			t.Errorf("GetKey(%q): %v, want an invalid-id error", id, err)
		}
		if err := km.DeleteKey(ctx, id); err == nil {
			t.Errorf("DeleteKey(%q) accepted", id)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("refused calls wrote %d files", len(entries))
	}
	k, err := km.GenerateKey(ctx, "p256", ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	d := sha512.Sum384([]byte("x"))
	if _, err := k.Sign(rand.Reader, d[:], crypto.SHA384); err == nil || !strings.Contains(err.Error(), `tpm: sign with key "p256": this key signs SHA-256 digests only, got SHA-384`) {
		t.Errorf("a P-256 key signing SHA-384: %v", err)
	}
	if _, err := newTestStore(t, tp, dir).OpenKeyManager(ctx, "other"); err == nil || !strings.Contains(err.Error(), `tpm: unknown key scope "other"`) {
		t.Errorf("unknown scope: %v", err)
	}
}

// TestBadBlobs: a corrupted blob and a blob made by another TPM are
// refused with an error naming the key (never ErrKeyNotFound, which would
// make the server generate a new key over it).
func TestBadBlobs(t *testing.T) {
	ctx := context.Background()
	tp := startSWTPM(t)
	dir := tpmDir(t)
	km := openKM(t, newTestStore(t, tp, dir), ca.KeyScopeAuthorities)
	if _, err := km.GenerateKey(ctx, "k", ca.KeyTypeECP256); err != nil {
		t.Fatal(err)
	}
	name, _ := Name(testTD, "node-1", ca.KeyScopeAuthorities, "k")
	blob := filepath.Join(dir, "key-"+name+".tpmobj")
	good, err := os.ReadFile(blob)
	if err != nil {
		t.Fatal(err)
	}

	// The same blob in front of another TPM.
	other := startSWTPM(t)
	dir2 := tpmDir(t)
	os.Mkdir(dir2, 0o700)
	if err := os.WriteFile(filepath.Join(dir2, filepath.Base(blob)), good, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = openKM(t, newTestStore(t, other, dir2), ca.KeyScopeAuthorities).GetKey(ctx, "k")
	if err == nil || errors.Is(err, ca.ErrKeyNotFound) || !strings.Contains(err.Error(), `tpm: load key "k"`) || !strings.Contains(err.Error(), "only in the TPM that created it") {
		t.Errorf("a blob from another TPM: %v", err)
	}
	t.Logf("another TPM: %v", err)

	for what, data := range map[string][]byte{
		"not JSON":            []byte("garbage"),
		"truncated":           good[:len(good)/2],
		"wrapped key altered": alterWrappedKey(t, good),
		"empty":               nil,
	} {
		if err := os.WriteFile(blob, data, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := openKM(t, newTestStore(t, tp, dir), ca.KeyScopeAuthorities).GetKey(ctx, "k")
		if err == nil || errors.Is(err, ca.ErrKeyNotFound) || !strings.HasPrefix(err.Error(), `tpm: load key "k"`) {
			t.Errorf("%s: %v", what, err)
		}
		t.Logf("%s: %v", what, err)
	}
}

// alterWrappedKey flips one bit of the wrapped private key inside a
// blob file, keeping its JSON valid: only the TPM's integrity check can
// notice.
func alterWrappedKey(t *testing.T, file []byte) []byte {
	t.Helper()
	var outer map[string]any
	if err := json.Unmarshal(file, &outer); err != nil {
		t.Fatal(err)
	}
	data, err := base64.StdEncoding.DecodeString(outer["data"].(string))
	if err != nil {
		t.Fatal(err)
	}
	var inner map[string]any
	if err := json.Unmarshal(data, &inner); err != nil {
		t.Fatal(err)
	}
	blob, err := base64.StdEncoding.DecodeString(inner["KeyBlob"].(string))
	if err != nil || len(blob) < 16 {
		t.Fatalf("KeyBlob %q: %v", inner["KeyBlob"], err)
	}
	blob[len(blob)-8] ^= 1
	inner["KeyBlob"] = blob
	if data, err = json.Marshal(inner); err != nil {
		t.Fatal(err)
	}
	outer["data"] = data
	out, err := json.Marshal(outer)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestDeviceErrors: a missing device, a path that is no device, and a
// TPM that goes away under a key give clear errors, never a panic.
func TestDeviceErrors(t *testing.T) {
	ctx := context.Background()
	missing := filepath.Join(t.TempDir(), "tpmrm9")
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o600)
	for dev, want := range map[string]string{
		missing: "tpm: TPM device " + missing + " does not exist",
		file:    "is neither a character device nor a unix socket",
	} {
		cfg := DefaultConfig()
		cfg.Device, cfg.StorageDirectory, cfg.TrustDomain = dev, filepath.Join(t.TempDir(), "tpm"), testTD
		s, err := NewStore(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.OpenKeyManager(ctx, ca.KeyScopeAuthorities); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("device %s: %v, want %q", dev, err, want)
		}
		if _, err := os.Stat(cfg.StorageDirectory); !os.IsNotExist(err) {
			t.Errorf("storage directory created for a bad device: %v", err)
		}
	}

	// The TPM stops after the key was loaded: signing fails, naming the
	// key; it works again once the TPM is back.
	tp := startSWTPM(t)
	km := openKM(t, newTestStore(t, tp, tpmDir(t)), ca.KeyScopeAuthorities)
	k, err := km.GenerateKey(ctx, "x509-ca-1", ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	tp.stop()
	d := sha256.Sum256([]byte("x"))
	_, err = k.Sign(rand.Reader, d[:], crypto.SHA256)
	t.Logf("sign without a TPM: %v", err)
	if err == nil || !strings.HasPrefix(err.Error(), `tpm: sign with key "x509-ca-1": `) {
		t.Errorf("sign without a TPM: %v", err)
	}
	if _, err := km.GenerateKey(ctx, "x509-ca-2", ca.KeyTypeECP256); err == nil || !strings.HasPrefix(err.Error(), "tpm: ") {
		t.Errorf("generate without a TPM: %v", err)
	}
	tp.start(t)
	signtest.SignVerify(t, k)
}

// TestConfigAndStorageDirectory: Validate, and a storage directory others
// can read is refused.
func TestConfigAndStorageDirectory(t *testing.T) {
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{StorageDirectory: "/d", TrustDomain: "td"}, "tpm: device is empty"},
		{Config{Device: "/dev/tpmrm0", TrustDomain: "td"}, "tpm: storage directory is empty"},
		{Config{Device: "/dev/tpmrm0", StorageDirectory: "/d"}, "tpm: trust domain is empty"},
	} {
		if _, err := NewStore(c.cfg); err == nil || err.Error() != c.want {
			t.Errorf("%+v: %v, want %q", c.cfg, err, c.want)
		}
	}
	if DefaultConfig().Device != "/dev/tpmrm0" {
		t.Errorf("default device %q", DefaultConfig().Device)
	}

	tp := startSWTPM(t)
	open := filepath.Join(t.TempDir(), "open")
	if err := os.Mkdir(open, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(open, 0o755)
	_, err := newTestStore(t, tp, open).OpenKeyManager(context.Background(), ca.KeyScopeAuthorities)
	if err == nil || !strings.Contains(err.Error(), "has mode 0755") || !strings.Contains(err.Error(), "chmod 0700") {
		t.Errorf("a world-readable storage directory: %v", err)
	}
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o600)
	if _, err := newTestStore(t, tp, file).OpenKeyManager(context.Background(), ca.KeyScopeAuthorities); err == nil || !strings.HasPrefix(err.Error(), "tpm: ") {
		t.Errorf("a file as storage directory: %v", err)
	}
}

// TestNames: key names are deterministic, distinct for every trust
// domain, node, scope and id, and valid file names.
func TestNames(t *testing.T) {
	a, err := Name("example.org", "n1", ca.KeyScopeAuthorities, "x509-ca-1")
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := Name("example.org", "n1", ca.KeyScopeAuthorities, "x509-ca-1"); a != b {
		t.Fatalf("not deterministic: %s %s", a, b)
	}
	if !strings.HasPrefix(a, "authorities.x509-ca-1.") || len(a) != len("authorities.x509-ca-1.")+16 {
		t.Errorf("name %q", a)
	}
	seen := map[string]bool{a: true}
	for _, v := range [][4]string{
		{"example.com", "n1", "authorities", "x509-ca-1"},
		{"example.org", "n2", "authorities", "x509-ca-1"},
		{"example.org", "n1", "cluster_identity", "x509-ca-1"},
		{"example.org", "n1", "authorities", "x509-ca-2"},
	} {
		n, err := Name(v[0], v[1], ca.KeyScope(v[2]), v[3])
		if err != nil || seen[n] {
			t.Errorf("%v: %q %v", v, n, err)
		}
		seen[n] = true
	}
	long, err := Name(strings.Repeat("t", 255), strings.Repeat("n", 255), ca.KeyScopeClusterIdentity, strings.Repeat("i", 128))
	if err != nil || len("key-"+long+".tpmobj") > 255 {
		t.Errorf("the longest name does not fit a file name: %d %v", len(long), err)
	}
	// Ids outside 1 to 128 characters of [A-Za-z0-9._-] not starting
	// with a dot are refused.
	for _, id := range []string{"", strings.Repeat("i", 129), ".x", "a/b", "a b", "é"} {
		if n, err := Name("example.org", "n1", ca.KeyScopeAuthorities, id); err == nil {
			t.Errorf("id %q: name %q", id, n)
		}
	}
}

// TestClose: Close releases the TPM; signers, key managers and the store
// fail from then on, with a clear error.
func TestClose(t *testing.T) {
	ctx := context.Background()
	tp := startSWTPM(t)
	s := newTestStore(t, tp, tpmDir(t))
	km := openKM(t, s, ca.KeyScopeAuthorities)
	k, err := km.GenerateKey(ctx, "k", ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	signtest.SignVerify(t, k)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	d := sha256.Sum256([]byte("x"))
	if _, err := k.Sign(rand.Reader, d[:], crypto.SHA256); err == nil || err.Error() != `tpm: sign with key "k": key manager closed` {
		t.Errorf("Sign after Close: %v", err)
	}
	if _, err := km.GetKey(ctx, "k"); err == nil || err.Error() != "tpm: key manager closed" {
		t.Errorf("GetKey after Close: %v", err)
	}
	if _, err := km.GenerateKey(ctx, "k2", ca.KeyTypeECP256); err == nil || err.Error() != "tpm: key manager closed" {
		t.Errorf("GenerateKey after Close: %v", err)
	}
	if err := km.DeleteKey(ctx, "k"); err == nil {
		t.Error("DeleteKey after Close succeeded")
	}
	if _, err := s.OpenKeyManager(ctx, ca.KeyScopeAuthorities); err == nil {
		t.Error("OpenKeyManager after Close succeeded")
	}
	// The channel refuses to open the device again.
	if _, err := s.ch.Write([]byte{0}); err == nil {
		t.Error("the command channel opened the device after Close")
	}
}

// TestConcurrentSigning: signers are safe for concurrent use (run with
// -race), and a self-signed CA certificate made with a TPM key verifies.
func TestConcurrentSigning(t *testing.T) {
	ctx := context.Background()
	tp := startSWTPM(t)
	km := openKM(t, newTestStore(t, tp, tpmDir(t)), ca.KeyScopeAuthorities)
	var wg sync.WaitGroup
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k, err := km.GetKey(ctx, "shared")
			if errors.Is(err, ca.ErrKeyNotFound) {
				k, err = km.GenerateKey(ctx, "shared", ca.KeyTypeECP256)
			}
			if err != nil {
				t.Error(err)
				return
			}
			for j := 0; j < 5; j++ {
				signtest.SignVerify(t, k)
			}
		}()
	}
	wg.Wait()

	k, err := km.GetKey(ctx, "shared")
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "tpm ca"},
		NotBefore:             time.Unix(1_700_000_000, 0),
		NotAfter:              time.Unix(1_800_000_000, 0),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := cert.CheckSignatureFrom(cert); err != nil {
		t.Fatalf("certificate signed in the TPM does not verify: %v", err)
	}
}

// BenchmarkSign is one ECDSA P-256 signature by the TPM (swtpm over its
// unix socket): load the wrapped key, sign, flush.
func BenchmarkSign(b *testing.B) {
	tp := startSWTPM(b)
	km := openKM(b, newTestStore(b, tp, tpmDir(b)), ca.KeyScopeAuthorities)
	k, err := km.GenerateKey(context.Background(), "bench", ca.KeyTypeECP256)
	if err != nil {
		b.Fatal(err)
	}
	d := sha256.Sum256([]byte("bench"))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := k.Sign(rand.Reader, d[:], crypto.SHA256); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzName: every accepted id gives a name that is one file name of
// [A-Za-z0-9._-] within the file system's limit, starting with its scope.
func FuzzName(f *testing.F) {
	for _, id := range []string{"x509-ca-1", "jwt-key-2", "", "..", "a/b", ".x", "a\x00"} {
		f.Add("example.org", "node-1", id)
	}
	f.Fuzz(func(t *testing.T, td, node, id string) {
		n, err := Name(td, node, ca.KeyScopeClusterIdentity, id)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "tpm: invalid key id") {
				t.Fatalf("error %v", err)
			}
			return
		}
		if !strings.HasPrefix(n, "cluster_identity."+id+".") || len("key-"+n+".tpmobj") > 255 || n == "." || n == ".." {
			t.Fatalf("name %q for id %q", n, id)
		}
		for _, r := range n {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
				t.Fatalf("name %q holds %q", n, r)
			}
		}
	})
}
