package oidc

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const fakeJWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"

func TestAttestorTokenFileIsReadEachTime(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	a, err := NewAttestor(AttestorConfig{TokenPath: path})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Payload(context.Background()); err == nil {
		t.Fatal("Payload with no file succeeded")
	}
	for _, tok := range []string{fakeJWT, fakeJWT + "x"} {
		if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		p, err := a.Payload(context.Background())
		if err != nil || string(p) != tok {
			t.Fatalf("Payload = %q, %v; want %q", p, err, tok)
		}
	}
	for _, bad := range []string{"", "not a jwt", strings.Repeat("a", MaxTokenLen) + ".b.c"} {
		os.WriteFile(path, []byte(bad), 0o600)
		if _, err := a.Payload(context.Background()); err == nil || strings.Contains(err.Error(), bad[:min(len(bad), 8)]+"x") {
			t.Errorf("Payload of %.10q: %v, want an error", bad, err)
		}
	}
	if _, err := a.Answer(context.Background(), []byte("c")); err == nil {
		t.Error("Answer succeeded")
	}
}

func TestAttestorTokenEnv(t *testing.T) {
	env := map[string]string{"TOK": " " + fakeJWT + "\n"}
	a, err := NewAttestor(AttestorConfig{TokenEnv: "TOK", Getenv: func(k string) string { return env[k] }})
	if err != nil {
		t.Fatal(err)
	}
	if p, err := a.Payload(context.Background()); err != nil || string(p) != fakeJWT {
		t.Fatalf("Payload = %q, %v", p, err)
	}
	delete(env, "TOK")
	if _, err := a.Payload(context.Background()); err == nil || !strings.Contains(err.Error(), "TOK") {
		t.Fatalf("Payload with the variable unset: %v", err)
	}
}

func TestAttestorGitHubActions(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "bearer request-token" || r.URL.Query().Get("audience") != "sigil" || r.URL.Query().Get("api-version") != "2.0" {
			http.Error(w, "bad request", http.StatusForbidden)
			return
		}
		json.NewEncoder(w).Encode(map[string]string{"count": "1", "value": fakeJWT})
	}))
	defer srv.Close()
	env := map[string]string{GitHubRequestURLEnv: srv.URL + "/token?api-version=2.0", GitHubRequestTokenEnv: "request-token"}
	a, err := NewAttestor(AttestorConfig{GitHubActionsAudience: "sigil", Getenv: func(k string) string { return env[k] }})
	if err != nil {
		t.Fatal(err)
	}
	if p, err := a.Payload(context.Background()); err != nil || string(p) != fakeJWT {
		t.Fatalf("Payload = %q, %v", p, err)
	}
	env[GitHubRequestTokenEnv] = "wrong"
	if _, err := a.Payload(context.Background()); err == nil || strings.Contains(err.Error(), "wrong") {
		t.Fatalf("Payload with a wrong request token: %v", err)
	}
	delete(env, GitHubRequestURLEnv)
	if _, err := a.Payload(context.Background()); err == nil || !strings.Contains(err.Error(), "id-token: write") {
		t.Fatalf("Payload outside Actions: %v", err)
	}
}
