package oidc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// The GitHub Actions environment variables of a job with
// `permissions: id-token: write`.
const (
	GitHubRequestURLEnv   = "ACTIONS_ID_TOKEN_REQUEST_URL"
	GitHubRequestTokenEnv = "ACTIONS_ID_TOKEN_REQUEST_TOKEN"
)

// AttestorConfig configures the agent half: exactly one token source.
type AttestorConfig struct {
	// TokenPath is a file holding the token, read at every attestation
	// (a projected service account token is rotated in place).
	TokenPath string
	// TokenEnv is the name of an environment variable holding the token.
	TokenEnv string
	// GitHubActionsAudience, when set, requests a token for this audience
	// from the GitHub Actions OIDC endpoint (ACTIONS_ID_TOKEN_REQUEST_URL
	// with the bearer ACTIONS_ID_TOKEN_REQUEST_TOKEN).
	GitHubActionsAudience string
	// Getenv reads the environment (default os.Getenv).
	Getenv func(string) string
	// Client carries the GitHub Actions request (default: a client with a
	// 10s timeout).
	Client *http.Client
}

// Attestor is the agent half. It implements node.ChallengeFree; it is not
// node.SingleUse: a fresh token attests the node again.
type Attestor struct{ cfg AttestorConfig }

// NewAttestor checks c and returns the agent half.
func NewAttestor(c AttestorConfig) (*Attestor, error) {
	n := 0
	for _, s := range []string{c.TokenPath, c.TokenEnv, c.GitHubActionsAudience} {
		if s != "" {
			n++
		}
	}
	if n != 1 {
		return nil, errors.New("oidc: configure exactly one token source: token_path, token_env or github_actions_audience")
	}
	if c.Getenv == nil {
		c.Getenv = os.Getenv
	}
	if c.Client == nil {
		c.Client = &http.Client{Timeout: 10 * time.Second}
	}
	return &Attestor{cfg: c}, nil
}

// Name returns "oidc".
func (*Attestor) Name() string { return Name }

// Payload returns the token, read afresh from its source. Errors never
// contain the token.
func (a *Attestor) Payload(ctx context.Context) ([]byte, error) {
	var token string
	switch {
	case a.cfg.TokenPath != "":
		f, err := os.Open(a.cfg.TokenPath)
		if err != nil {
			return nil, fmt.Errorf("oidc: reading the token: %w", err)
		}
		defer f.Close()
		b, err := io.ReadAll(io.LimitReader(f, MaxTokenLen+1024))
		if err != nil {
			return nil, fmt.Errorf("oidc: reading the token: %w", err)
		}
		token = string(b)
	case a.cfg.TokenEnv != "":
		token = a.cfg.Getenv(a.cfg.TokenEnv)
		if token == "" {
			return nil, fmt.Errorf("oidc: environment variable %s is empty or unset", a.cfg.TokenEnv)
		}
	default:
		var err error
		if token, err = a.github(ctx); err != nil {
			return nil, err
		}
	}
	token = strings.TrimSpace(token)
	if token == "" {
		return nil, errors.New("oidc: the token is empty")
	}
	if len(token) > MaxTokenLen {
		return nil, fmt.Errorf("oidc: the token is over %d bytes", MaxTokenLen)
	}
	if strings.Count(token, ".") != 2 {
		return nil, errors.New("oidc: the token is not a JWT (want three dot-separated parts)")
	}
	return []byte(token), nil
}

// github requests a token from the GitHub Actions OIDC endpoint.
func (a *Attestor) github(ctx context.Context) (string, error) {
	reqURL, bearer := a.cfg.Getenv(GitHubRequestURLEnv), a.cfg.Getenv(GitHubRequestTokenEnv)
	if reqURL == "" || bearer == "" {
		return "", fmt.Errorf("oidc: %s and %s are not set: give the job `permissions: id-token: write`", GitHubRequestURLEnv, GitHubRequestTokenEnv)
	}
	u, err := url.Parse(reqURL)
	if err != nil {
		return "", fmt.Errorf("oidc: %s is not a URL", GitHubRequestURLEnv)
	}
	q := u.Query()
	q.Set("audience", a.cfg.GitHubActionsAudience)
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return "", fmt.Errorf("oidc: GitHub Actions token request: %w", err)
	}
	req.Header.Set("Authorization", "bearer "+bearer)
	req.Header.Set("Accept", "application/json")
	resp, err := a.cfg.Client.Do(req)
	if err != nil {
		return "", fmt.Errorf("oidc: GitHub Actions token request: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("oidc: GitHub Actions token request: %s", resp.Status)
	}
	var body struct {
		Value string `json:"value"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&body); err != nil {
		return "", errors.New("oidc: GitHub Actions token response is not JSON with a value")
	}
	return body.Value, nil
}

// Answer refuses: the oidc verifier sends no challenge.
func (*Attestor) Answer(context.Context, []byte) ([]byte, error) {
	return nil, errors.New("oidc: the oidc attestor answers no challenge, but the server sent one")
}

// ChallengeFree reports true: the token alone is the evidence.
func (*Attestor) ChallengeFree() bool { return true }
