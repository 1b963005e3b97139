package memory_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"errors"
	"testing"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/ca/keymanager/memory"
)

func TestKeyManager(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		kt      ca.KeyType
		check   func(any) bool
		wantErr bool
	}{
		{ca.KeyTypeECP256, func(k any) bool { e, ok := k.(*ecdsa.PrivateKey); return ok && e.Curve == elliptic.P256() }, false},
		{ca.KeyTypeECP384, func(k any) bool { e, ok := k.(*ecdsa.PrivateKey); return ok && e.Curve == elliptic.P384() }, false},
		{ca.KeyTypeRSA2048, func(k any) bool { r, ok := k.(*rsa.PrivateKey); return ok && r.N.BitLen() == 2048 }, false},
		{"ed448", nil, true},
		{"", nil, true},
	}
	for _, tt := range tests {
		t.Run(string(tt.kt), func(t *testing.T) {
			m := memory.New()
			if _, err := m.GetKey(ctx, "k"); !errors.Is(err, ca.ErrKeyNotFound) {
				t.Fatalf("GetKey on empty manager: %v, want ErrKeyNotFound", err)
			}
			k, err := m.GenerateKey(ctx, "k", tt.kt)
			if tt.wantErr {
				if err == nil {
					t.Fatal("generated a key of an unsupported type")
				}
				if _, err := m.GetKey(ctx, "k"); !errors.Is(err, ca.ErrKeyNotFound) {
					t.Errorf("failed GenerateKey stored something: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(k) {
				t.Fatalf("wrong key %T", k)
			}
			got, err := m.GetKey(ctx, "k")
			if err != nil || got != k {
				t.Fatalf("GetKey = %v, %v; want the generated key", got, err)
			}
			k2, err := m.GenerateKey(ctx, "k", tt.kt)
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := m.GetKey(ctx, "k"); got != k2 || got == k {
				t.Error("GenerateKey did not replace the key")
			}
		})
	}
}
