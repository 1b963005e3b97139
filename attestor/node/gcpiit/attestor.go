package gcpiit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// AttestorConfig configures the agent half.
type AttestorConfig struct {
	// Audience is the audience to request the token for; it must be the
	// server's. Required.
	Audience string
	// MetadataURL is the metadata server's identity endpoint;
	// DefaultMetadataURL.
	MetadataURL string
	// Timeout bounds one request to the metadata server.
	Timeout time.Duration
}

// DefaultAttestorConfig returns the metadata server's endpoint and a
// timeout; Audience is left to the operator.
func DefaultAttestorConfig() AttestorConfig {
	return AttestorConfig{MetadataURL: DefaultMetadataURL, Timeout: 10 * time.Second}
}

// Validate checks c.
func (c AttestorConfig) Validate() error {
	if c.Audience == "" {
		return errors.New("gcpiit: audience is required (the server's audience)")
	}
	p, err := url.Parse(c.MetadataURL)
	if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
		return fmt.Errorf("gcpiit: metadata_url %q is not an http(s) URL", c.MetadataURL)
	}
	if c.Timeout <= 0 {
		return fmt.Errorf("gcpiit: timeout %v: want a positive duration", c.Timeout)
	}
	return nil
}

// Attestor is the agent half: it fetches an instance identity token
// (format=full) from the metadata server for each attestation.
type Attestor struct {
	cfg    AttestorConfig
	client *http.Client
}

// NewAttestor returns the agent half configured by c.
func NewAttestor(c AttestorConfig) (*Attestor, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &Attestor{cfg: c, client: &http.Client{
		Timeout:       c.Timeout,
		Transport:     &http.Transport{Proxy: nil}, // the metadata server is never reached through a proxy
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}, nil
}

// Name is the attestor name.
func (*Attestor) Name() string { return Name }

// ChallengeFree reports that the verifier sends no challenge.
func (*Attestor) ChallengeFree() bool { return true }

// Payload fetches a new instance identity token.
func (a *Attestor) Payload(ctx context.Context) ([]byte, error) {
	u, _ := url.Parse(a.cfg.MetadataURL)
	q := u.Query()
	q.Set("audience", a.cfg.Audience)
	q.Set("format", "full")
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("gcpiit: %w", err)
	}
	req.Header.Set("Metadata-Flavor", "Google")
	resp, err := a.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("gcpiit: fetching the instance identity token (is this a Compute Engine instance?): %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxTokenLen+1))
	if err != nil {
		return nil, fmt.Errorf("gcpiit: reading the instance identity token: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("gcpiit: the metadata server answered %s", resp.Status)
	}
	if resp.Header.Get("Metadata-Flavor") != "Google" {
		return nil, errors.New("gcpiit: the answer lacks the header Metadata-Flavor: Google: not a Compute Engine metadata server")
	}
	tok, err := ParseToken(bytes.TrimSpace(body))
	if err != nil {
		return nil, fmt.Errorf("the metadata server's answer: %w", err)
	}
	return []byte(tok), nil
}

// Answer fails: the verifier sends no challenge.
func (*Attestor) Answer(context.Context, []byte) ([]byte, error) {
	return nil, errors.New("gcpiit: the gcp_iit verifier sends no challenge")
}
