package k8spsat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/sigil-id/sigil/attestor/node"
)

// DefaultTokenPath is where the agent reads its projected token unless
// configured otherwise (the projected volume of docs/attestors/k8s_psat.md).
const DefaultTokenPath = "/var/run/secrets/tokens/sigil-agent"

// AgentConfig is the agent half's configuration.
type AgentConfig struct {
	// Cluster is the cluster's name, as the servers' configuration names
	// it.
	Cluster string
	// TokenPath is the projected token's file; default DefaultTokenPath.
	TokenPath string
}

// Validate checks c and fills in the default token path.
func (c *AgentConfig) Validate() error {
	if err := ValidateClusterName(c.Cluster); err != nil {
		return err
	}
	if c.TokenPath == "" {
		c.TokenPath = DefaultTokenPath
	}
	return nil
}

type attestor struct{ cfg AgentConfig }

// NewAttestor returns the agent half. It reads the token file on every
// attestation (the kubelet rotates projected tokens). It implements
// node.ChallengeFree and may attest again (it is not node.SingleUse).
func NewAttestor(cfg AgentConfig) (node.Attestor, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &attestor{cfg: cfg}, nil
}

func (*attestor) Name() string { return Name }

// ChallengeFree reports that the verifier sends no challenge.
func (*attestor) ChallengeFree() bool { return true }

func (a *attestor) Payload(ctx context.Context) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f, err := os.Open(a.cfg.TokenPath)
	if err != nil {
		return nil, fmt.Errorf("k8spsat: reading the service account token: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxTokenBytes+1))
	if err != nil {
		return nil, fmt.Errorf("k8spsat: reading the service account token %s: %w", a.cfg.TokenPath, err)
	}
	if len(b) > MaxTokenBytes {
		return nil, fmt.Errorf("k8spsat: the service account token %s is larger than %d bytes", a.cfg.TokenPath, MaxTokenBytes)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return nil, fmt.Errorf("k8spsat: the service account token %s is empty", a.cfg.TokenPath)
	}
	p, err := json.Marshal(Payload{Cluster: a.cfg.Cluster, Token: tok})
	if err != nil {
		return nil, fmt.Errorf("k8spsat: %w", err)
	}
	if _, err := ParsePayload(p); err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, a.cfg.TokenPath)
	}
	return p, nil
}

// Answer refuses: the verifier sends no challenge.
func (*attestor) Answer(context.Context, []byte) ([]byte, error) {
	return nil, errors.New("k8spsat: the k8s_psat attestor answers no challenge")
}
