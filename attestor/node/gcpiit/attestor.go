package gcpiit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/sigil-id/sigil/attestor/node/internal/metadata"
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
	if err := metadata.CheckURL(c.MetadataURL); err != nil {
		return fmt.Errorf("gcpiit: %w", err)
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
	client *metadata.Client
}

// NewAttestor returns the agent half configured by c.
func NewAttestor(c AttestorConfig) (*Attestor, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &Attestor{cfg: c, client: metadata.NewClient(c.Timeout)}, nil
}

// Name is the attestor name.
func (*Attestor) Name() string { return Name }

// ChallengeFree reports that the verifier sends no challenge.
func (*Attestor) ChallengeFree() bool { return true }

// Payload fetches a new instance identity token.
func (a *Attestor) Payload(ctx context.Context) ([]byte, error) {
	resp, err := a.client.Get(ctx, a.cfg.MetadataURL,
		url.Values{"audience": {a.cfg.Audience}, "format": {"full"}},
		http.Header{"Metadata-Flavor": {"Google"}}, MaxTokenLen+1)
	if err != nil {
		return nil, fmt.Errorf("gcpiit: fetching the instance identity token (is this a Compute Engine instance?): %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("gcpiit: the metadata server answered %s", resp.Status)
	}
	if resp.Header.Get("Metadata-Flavor") != "Google" {
		return nil, errors.New("gcpiit: the answer lacks the header Metadata-Flavor: Google: not a Compute Engine metadata server")
	}
	tok, err := ParseToken(bytes.TrimSpace(resp.Body))
	if err != nil {
		return nil, fmt.Errorf("the metadata server's answer: %w", err)
	}
	return []byte(tok), nil
}

// Answer fails: the verifier sends no challenge.
func (*Attestor) Answer(context.Context, []byte) ([]byte, error) {
	return nil, errors.New("gcpiit: the gcp_iit verifier sends no challenge")
}
