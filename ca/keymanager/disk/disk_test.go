package disk_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/ca/keymanager/disk"
)

func TestGenerateAndReload(t *testing.T) {
	ctx := context.Background()
	for _, kt := range []ca.KeyType{ca.KeyTypeECP256, ca.KeyTypeECP384, ca.KeyTypeRSA2048} {
		t.Run(string(kt), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "keys", "nested")
			m, err := disk.New(dir)
			if err != nil {
				t.Fatal(err)
			}
			fi, err := os.Stat(dir)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o700 {
				t.Errorf("directory mode %v, want 0700", fi.Mode().Perm())
			}
			if _, err := m.GetKey(ctx, "x509-ca"); !errors.Is(err, ca.ErrKeyNotFound) {
				t.Fatalf("GetKey before GenerateKey: %v, want ErrKeyNotFound", err)
			}
			k, err := m.GenerateKey(ctx, "x509-ca", kt)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "x509-ca.key.pem")
			fi, err = os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
			}
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			block, _ := pem.Decode(data)
			if block == nil || block.Type != "PRIVATE KEY" {
				t.Fatalf("key file is not a PKCS#8 PEM: %q", data[:min(len(data), 40)])
			}
			if _, err := x509.ParsePKCS8PrivateKey(block.Bytes); err != nil {
				t.Fatalf("key file is not PKCS#8: %v", err)
			}
			entries, _ := os.ReadDir(dir)
			if len(entries) != 1 {
				t.Errorf("directory holds %d files, want 1 (temporary file left behind?)", len(entries))
			}

			// A new manager on the same directory (a restart) finds the key.
			m2, err := disk.New(dir)
			if err != nil {
				t.Fatal(err)
			}
			got, err := m2.GetKey(ctx, "x509-ca")
			if err != nil {
				t.Fatal(err)
			}
			if !publicEqual(k, got) {
				t.Fatal("reloaded key differs")
			}
			switch kt {
			case ca.KeyTypeRSA2048:
				if _, ok := got.(*rsa.PrivateKey); !ok {
					t.Errorf("reloaded %T", got)
				}
			default:
				if _, ok := got.(*ecdsa.PrivateKey); !ok {
					t.Errorf("reloaded %T", got)
				}
			}

			// Regenerating replaces the file.
			k3, err := m2.GenerateKey(ctx, "x509-ca", kt)
			if err != nil {
				t.Fatal(err)
			}
			m3, _ := disk.New(dir)
			got3, err := m3.GetKey(ctx, "x509-ca")
			if err != nil {
				t.Fatal(err)
			}
			if !publicEqual(k3, got3) || publicEqual(k, got3) {
				t.Error("GenerateKey did not replace the key on disk")
			}
		})
	}
}

func publicEqual(a, b crypto.Signer) bool {
	return a.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(b.Public())
}

func TestRefusesBadIDs(t *testing.T) {
	ctx := context.Background()
	base := t.TempDir()
	dir := filepath.Join(base, "keys")
	m, err := disk.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"", ".", "..", "../x509-ca", "a/b", `a\b`, "/etc/passwd", "a/../../b", "x..y", "a\x00b"} {
		t.Run(id, func(t *testing.T) {
			if _, err := m.GenerateKey(ctx, id, ca.KeyTypeECP256); err == nil {
				t.Errorf("GenerateKey accepted id %q", id)
			}
			if _, err := m.GetKey(ctx, id); err == nil || errors.Is(err, ca.ErrKeyNotFound) {
				t.Errorf("GetKey(%q) = %v, want an invalid-id error", id, err)
			}
		})
	}
	files, _ := os.ReadDir(base)
	if len(files) != 1 {
		t.Errorf("files written outside the key directory: %v", files)
	}
}

func TestCorruptKeyFile(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		content string
		wantErr string
	}{
		{"not pem", "hello", "not a single PEM"},
		{"wrong pem type", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a single PEM"},
		{"bad pkcs8", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "key file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "k.key.pem"), []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			m, err := disk.New(dir)
			if err != nil {
				t.Fatal(err)
			}
			_, err = m.GetKey(ctx, "k")
			if err == nil || errors.Is(err, ca.ErrKeyNotFound) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("err = %v, want %q (and not ErrKeyNotFound)", err, tt.wantErr)
			}
		})
	}
}

func TestNewRefusesFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := disk.New(f); err == nil {
		t.Error("New accepted a regular file as directory")
	}
	if _, err := disk.New(""); err == nil {
		t.Error("New accepted an empty directory name")
	}
}

func TestConcurrentUse(t *testing.T) {
	ctx := context.Background()
	m, err := disk.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 5; j++ {
				if _, err := m.GenerateKey(ctx, "k", ca.KeyTypeECP256); err != nil {
					t.Error(err)
				}
				if _, err := m.GetKey(ctx, "k"); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
}
