// Package k8spsat is the Kubernetes projected service account token (PSAT)
// node attestor, both halves.
//
// The agent runs in a pod (normally of a DaemonSet) whose service account
// token is projected into a file with an audience meant for Sigil; it sends
// that token and the name of its cluster. The server verifies the token
// against the configuration of that cluster, in one of two ways:
//
//   - "oidc": the token's signature against the cluster's service account
//     issuer keys (OIDC discovery and JWKS, fetched only from configured
//     URLs and cached), and its issuer, audience and expiry, with
//     github.com/coreos/go-oidc/v3;
//   - "token_review": the cluster's API server judges the token (a
//     TokenReview, authentication.k8s.io/v1), which also checks that the
//     pod it is bound to still exists.
//
// In both, the token's service account must be in the cluster's allow
// list. The agent ID is <cluster>/<node uid or name> (the SPIFFE ID
// spiffe://<td>/sigil/agent/k8s_psat/<cluster>/<node>), and the selectors
// are k8s_psat:cluster:<name>, agent_ns, agent_sa, agent_pod_name,
// agent_pod_uid, agent_node_name and, where the server has API access and
// a label allow list, agent_node_label:<key>:<value>.
//
// The token is not recorded as used: the pod legitimately attests again
// with the same token (after an eviction or an expired SVID) while the
// token is valid, and a token is bound to its pod, its audience and a short
// lifetime (see docs/attestors/k8s_psat.md).
package k8spsat

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/attestor/node/internal/jwks"
	"github.com/sigil-id/sigil/clock"
)

// Name is the attestor name.
const Name = "k8s_psat"

// RefusedMessage is what an agent is told about a well-formed token that
// is refused, whatever the reason (the reason goes to the server's log).
const RefusedMessage = "kubernetes service account token refused"

// Validation modes of a cluster.
const (
	ValidationOIDC        = "oidc"
	ValidationTokenReview = "token_review"
)

// Limits on evidence.
const (
	// MaxTokenBytes bounds the token an agent may send.
	MaxTokenBytes = 16 << 10
	// MaxPayloadBytes bounds the whole payload.
	MaxPayloadBytes = MaxTokenBytes + 1024
	// MaxClusterNameLen bounds a cluster name.
	MaxClusterNameLen = 63
)

// Selector kinds: a selector's value is "<kind>:<rest>".
const (
	SelectorCluster   = "cluster"
	SelectorNS        = "agent_ns"
	SelectorSA        = "agent_sa"
	SelectorPodName   = "agent_pod_name"
	SelectorPodUID    = "agent_pod_uid"
	SelectorNodeName  = "agent_node_name"
	SelectorNodeLabel = "agent_node_label"
)

// signingAlgs are the asymmetric algorithms a token may be signed with.
// "none" and the HMAC algorithms are never accepted.
var signingAlgs = []jose.SignatureAlgorithm{jose.RS256, jose.RS384, jose.RS512, jose.ES256, jose.ES384, jose.ES512, jose.PS256, jose.PS384, jose.PS512}

// Payload is the agent's evidence, sent as JSON.
type Payload struct {
	// Cluster is the name of the agent's cluster, as the server's
	// configuration names it.
	Cluster string `json:"cluster"`
	// Token is the projected service account token (a JWT).
	Token string `json:"token"`
}

// ParsePayload decodes and checks the shape of an agent's payload: a JSON
// object with a valid cluster name and a compact JWS of at most
// MaxTokenBytes. Errors never contain the token.
func ParsePayload(b []byte) (Payload, error) {
	var p Payload
	if len(b) > MaxPayloadBytes {
		return p, fmt.Errorf("k8spsat: payload of %d bytes is too large (at most %d)", len(b), MaxPayloadBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return Payload{}, errors.New("k8spsat: payload is not a JSON object {cluster, token}")
	}
	if dec.More() {
		return Payload{}, errors.New("k8spsat: payload has trailing data")
	}
	if err := ValidateClusterName(p.Cluster); err != nil {
		return Payload{}, err
	}
	if p.Token == "" {
		return Payload{}, errors.New("k8spsat: payload has no token")
	}
	if len(p.Token) > MaxTokenBytes {
		return Payload{}, fmt.Errorf("k8spsat: token of %d bytes is too large (at most %d)", len(p.Token), MaxTokenBytes)
	}
	if strings.Count(p.Token, ".") != 2 {
		return Payload{}, errors.New("k8spsat: token is not a compact JWT (three dot-separated parts)")
	}
	return p, nil
}

// ValidateClusterName checks a cluster name: 1 to 63 letters, digits, '.',
// '-' or '_' (it is a segment of agent SPIFFE IDs).
func ValidateClusterName(name string) error {
	if name == "" {
		return errors.New("k8spsat: cluster name is empty")
	}
	if len(name) > MaxClusterNameLen {
		return fmt.Errorf("k8spsat: cluster name of %d bytes is too long (at most %d)", len(name), MaxClusterNameLen)
	}
	if err := spiffeid.ValidatePathSegment(name); err != nil || name == "." || name == ".." {
		return fmt.Errorf("k8spsat: cluster name %q: want letters, digits, '.', '-' and '_'", name)
	}
	return nil
}

// Identity is what a verified token says of the agent's pod.
type Identity struct {
	Namespace      string
	ServiceAccount string
	PodName        string
	PodUID         string
	NodeName       string
	NodeUID        string
}

// k8sClaims is the "kubernetes.io" claim of a projected token:
//
//	"kubernetes.io": {"namespace": "...", "serviceaccount": {"name", "uid"},
//	  "pod": {"name", "uid"}, "node": {"name", "uid"}}
//
// (node since Kubernetes 1.30).
type k8sClaims struct {
	K8s *struct {
		Namespace      string   `json:"namespace"`
		ServiceAccount *nameUID `json:"serviceaccount"`
		Pod            *nameUID `json:"pod"`
		Node           *nameUID `json:"node"`
	} `json:"kubernetes.io"`
	Subject string `json:"sub"`
}

type nameUID struct {
	Name string `json:"name"`
	UID  string `json:"uid"`
}

// identityFromClaims reads the pod's identity from a verified token's
// claims. The subject must agree with the namespace and service account.
func identityFromClaims(raw []byte) (Identity, error) {
	var c k8sClaims
	if err := json.Unmarshal(raw, &c); err != nil {
		return Identity{}, errors.New("claims are not a JSON object")
	}
	if c.K8s == nil || c.K8s.Namespace == "" || c.K8s.ServiceAccount == nil || c.K8s.ServiceAccount.Name == "" {
		return Identity{}, errors.New("token has no kubernetes.io namespace and service account (not a service account token)")
	}
	if strings.Contains(c.K8s.Namespace, ":") || strings.Contains(c.K8s.ServiceAccount.Name, ":") {
		return Identity{}, errors.New("token's namespace or service account name contains ':' (not a Kubernetes name)")
	}
	if c.K8s.Pod == nil || c.K8s.Pod.Name == "" || c.K8s.Pod.UID == "" {
		return Identity{}, errors.New("token is not bound to a pod (not a projected token)")
	}
	if want := "system:serviceaccount:" + c.K8s.Namespace + ":" + c.K8s.ServiceAccount.Name; c.Subject != want {
		return Identity{}, fmt.Errorf("token subject %q does not match its service account %q", c.Subject, want)
	}
	id := Identity{Namespace: c.K8s.Namespace, ServiceAccount: c.K8s.ServiceAccount.Name, PodName: c.K8s.Pod.Name, PodUID: c.K8s.Pod.UID}
	if c.K8s.Node != nil {
		id.NodeName, id.NodeUID = c.K8s.Node.Name, c.K8s.Node.UID
	}
	return id, nil
}

// verifier is the server half.
type verifier struct {
	clusters map[string]*cluster
	clk      clock.Clock
}

// NewVerifier returns the server half for cfg, which it validates. It
// makes no remote call: discovery, keys and API calls happen on the first
// attestation that needs them.
func NewVerifier(cfg Config) (node.Verifier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.New()
	}
	v := &verifier{clusters: map[string]*cluster{}, clk: cfg.Clock}
	for _, cc := range cfg.Clusters {
		c, err := newCluster(cc, cfg)
		if err != nil {
			return nil, err
		}
		v.clusters[cc.Name] = c
	}
	return v, nil
}

func (*verifier) Name() string { return Name }

func refused(format string, args ...any) error {
	return fmt.Errorf("k8spsat: %w", &node.RefusedError{Public: RefusedMessage, Reason: fmt.Sprintf(format, args...)})
}

func (v *verifier) Verify(ctx context.Context, state node.State, ex node.Exchange) (*node.Result, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p, err := ParsePayload(ex.Payload())
	if err != nil {
		return nil, err
	}
	c, ok := v.clusters[p.Cluster]
	if !ok {
		return nil, refused("unknown cluster %q", p.Cluster)
	}
	// The algorithm check comes before any remote call: "none" and HMAC
	// tokens never reach the keys or the API server.
	jws, err := jose.ParseSigned(p.Token, signingAlgs)
	if err != nil {
		return nil, refused("cluster %q: token is not a JWS signed with an accepted asymmetric algorithm", p.Cluster)
	}
	if len(jws.Signatures) != 1 {
		return nil, refused("cluster %q: token has %d signatures, want 1", p.Cluster, len(jws.Signatures))
	}
	now := v.clk.Now
	if state != nil {
		now = state.Now
	}
	var id Identity
	switch c.cfg.Validation {
	case ValidationOIDC:
		id, err = c.verifyOIDC(ctx, p.Token, now)
	default:
		id, err = c.verifyTokenReview(ctx, p.Token)
	}
	if err != nil {
		return nil, err
	}
	if !c.allowed[id.Namespace+":"+id.ServiceAccount] {
		return nil, refused("cluster %q: service account %s:%s is not in the allow list", p.Cluster, id.Namespace, id.ServiceAccount)
	}
	var labels map[string]string
	if c.api != nil && (id.NodeName == "" || len(c.cfg.NodeLabelAllowList) > 0) {
		if id.NodeName == "" {
			// A token of Kubernetes before 1.30 names no node: the pod
			// does (and must still be the one the token is bound to).
			if id.NodeName, err = c.api.podNode(ctx, id.Namespace, id.PodName, id.PodUID); err != nil {
				return nil, err
			}
		}
		if len(c.cfg.NodeLabelAllowList) > 0 {
			if labels, err = c.nodeLabels(ctx, id.NodeName, id.NodeUID); err != nil {
				return nil, err
			}
		}
	}
	nodeSeg := id.NodeUID
	if nodeSeg == "" {
		nodeSeg = id.NodeName
	}
	if nodeSeg == "" {
		return nil, refused("cluster %q: the token names no node (Kubernetes before 1.30) and the server has no kube_api to ask", p.Cluster)
	}
	if spiffeid.ValidatePathSegment(nodeSeg) != nil || nodeSeg == "." || nodeSeg == ".." {
		return nil, fmt.Errorf("k8spsat: cluster %q: node %q is not a valid SPIFFE ID path segment", p.Cluster, nodeSeg)
	}
	sels := []*sigilv1.Selector{
		sel(SelectorCluster, p.Cluster),
		sel(SelectorNS, id.Namespace),
		sel(SelectorSA, id.ServiceAccount),
		sel(SelectorPodName, id.PodName),
		sel(SelectorPodUID, id.PodUID),
	}
	if id.NodeName != "" {
		sels = append(sels, sel(SelectorNodeName, id.NodeName))
	}
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		sels = append(sels, sel(SelectorNodeLabel, k+":"+labels[k]))
	}
	return &node.Result{ID: p.Cluster + "/" + nodeSeg, Selectors: sels}, nil
}

func sel(kind, value string) *sigilv1.Selector {
	return &sigilv1.Selector{Type: Name, Value: kind + ":" + value}
}

// ValidateSelector checks the value of a k8s_psat selector: a known kind,
// a colon and a non-empty rest (for agent_node_label, "<key>:<value>").
func ValidateSelector(value string) error {
	kind, rest, ok := strings.Cut(value, ":")
	if !ok || rest == "" {
		return fmt.Errorf("k8spsat: selector value %q: want <kind>:<value>", value)
	}
	switch kind {
	case SelectorCluster, SelectorNS, SelectorSA, SelectorPodName, SelectorPodUID, SelectorNodeName:
		return nil
	case SelectorNodeLabel:
		if k, _, ok := strings.Cut(rest, ":"); !ok || k == "" {
			return fmt.Errorf("k8spsat: selector value %q: want agent_node_label:<key>:<value>", value)
		}
		return nil
	}
	return fmt.Errorf("k8spsat: selector value %q: unknown kind %q (known: cluster, agent_ns, agent_sa, agent_pod_name, agent_pod_uid, agent_node_name, agent_node_label)", value, kind)
}

// verifyOIDC checks the token's signature against the cluster's keys and
// its issuer, audience and expiry with go-oidc.
func (c *cluster) verifyOIDC(ctx context.Context, token string, now func() time.Time) (Identity, error) {
	v := oidc.NewVerifier(c.cfg.Issuer, c.keys, &oidc.Config{
		ClientID:             c.cfg.Audience,
		SupportedSigningAlgs: algNames(),
		Now:                  now,
	})
	tok, err := jwks.Verify(ctx, v, token)
	if err != nil {
		if errors.Is(err, jwks.ErrUnavailable) {
			// The keys could not be fetched: fail closed, but as an
			// error of the platform, not a refusal of the agent.
			return Identity{}, fmt.Errorf("k8spsat: cluster %q: fetching the keys: %w", c.cfg.Name, err)
		}
		if ctx.Err() != nil {
			return Identity{}, fmt.Errorf("k8spsat: cluster %q: %w", c.cfg.Name, err)
		}
		var exp *oidc.TokenExpiredError
		if errors.As(err, &exp) {
			return Identity{}, refused("cluster %q: token expired at %s", c.cfg.Name, exp.Expiry.UTC().Format(time.RFC3339))
		}
		return Identity{}, refused("cluster %q: %v", c.cfg.Name, err)
	}
	var raw json.RawMessage
	if err := tok.Claims(&raw); err != nil {
		return Identity{}, refused("cluster %q: %v", c.cfg.Name, err)
	}
	id, err := identityFromClaims(raw)
	if err != nil {
		return Identity{}, refused("cluster %q: %v", c.cfg.Name, err)
	}
	return id, nil
}

func algNames() []string {
	out := make([]string, len(signingAlgs))
	for i, a := range signingAlgs {
		out[i] = string(a)
	}
	return out
}
