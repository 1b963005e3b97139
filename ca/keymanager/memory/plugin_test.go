package memory

import (
	"context"
	"errors"
	"testing"

	"github.com/sigil-id/sigil/ca"
)

// Each OpenKeyManager is a fresh, empty manager: nothing outlives a run.
func TestStore(t *testing.T) {
	ctx := context.Background()
	st := NewStore()
	if st.Persistent() {
		t.Fatal("memory store claims persistence")
	}
	km, err := st.OpenKeyManager(ctx, ca.KeyScopeAuthorities)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := km.GenerateKey(ctx, "k", ca.KeyTypeECP256); err != nil {
		t.Fatal(err)
	}
	again, err := st.OpenKeyManager(ctx, ca.KeyScopeAuthorities)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := again.GetKey(ctx, "k"); !errors.Is(err, ca.ErrKeyNotFound) {
		t.Fatalf("a key outlived its manager: %v", err)
	}
	if _, err := st.OpenKeyManager(ctx, ""); err == nil {
		t.Fatal("empty scope opened")
	}
}
