package k8spsat

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/sigil-id/sigil/clock"
)

// Config is the server half's configuration.
type Config struct {
	// Clusters are the clusters whose agents may attest; at least one,
	// each name once.
	Clusters []ClusterConfig
	// HTTPTimeout bounds every remote call (discovery, JWKS, TokenReview,
	// node and pod lookups).
	HTTPTimeout time.Duration
	// MaxResponseBytes bounds every remote answer.
	MaxResponseBytes int64
	// KeysMaxAge is how long fetched keys (and the discovery document)
	// are used before they are fetched again.
	KeysMaxAge time.Duration
	// KeysMinRefresh is the least time between two fetches of the keys
	// for a token with an unknown key id: a stream of made-up key ids
	// costs one fetch per interval, not one per attestation.
	KeysMinRefresh time.Duration
	// NodeCacheTTL is how long a node's labels are kept; NodeCacheSize
	// bounds the number of nodes kept per cluster.
	NodeCacheTTL  time.Duration
	NodeCacheSize int
	// Clock is the time source of the caches (nil: the real clock).
	// Token expiry is checked against the attestation's node.State.
	Clock clock.Clock
}

// ClusterConfig is one cluster.
type ClusterConfig struct {
	// Name names the cluster in the agent's configuration, its agent IDs
	// and its cluster selector.
	Name string
	// Audience is the audience the agent's projected token must carry.
	Audience string
	// ServiceAccountAllowList lists the service accounts, as
	// "<namespace>:<name>", whose tokens may attest.
	ServiceAccountAllowList []string
	// Validation is ValidationOIDC or ValidationTokenReview; empty: OIDC
	// when Issuer is set and KubeAPI is not, TokenReview when KubeAPI is
	// set and Issuer is not.
	Validation string
	// Issuer is the cluster's service account issuer (the token's iss,
	// kube-apiserver --service-account-issuer); required for OIDC.
	Issuer string
	// DiscoveryURL is where the OIDC discovery document is fetched;
	// default Issuer + "/.well-known/openid-configuration". Its issuer
	// must be Issuer.
	DiscoveryURL string
	// JWKSURL, when set, is where the keys are fetched, without
	// discovery.
	JWKSURL string
	// CAPath is a PEM bundle of the CAs that the discovery and JWKS
	// servers' certificates chain to; empty: the system's.
	CAPath string
	// KubeAPI is the cluster's API server, for TokenReview and for node
	// labels (and, for tokens that name no node, the pod's node).
	KubeAPI *KubeAPIConfig
	// NodeLabelAllowList lists the node label keys that become
	// agent_node_label selectors; it needs KubeAPI.
	NodeLabelAllowList []string
}

// KubeAPIConfig is how the server reaches a cluster's API server.
type KubeAPIConfig struct {
	// URL is the API server's https URL.
	URL string
	// CAPath is a PEM bundle of the CAs of the API server's certificate;
	// empty: the system's.
	CAPath string
	// TokenPath is a file holding the bearer token the server presents
	// (read on every call: projected tokens rotate).
	TokenPath string
}

// DefaultConfig returns a Config without clusters and with the default
// bounds.
func DefaultConfig() Config {
	return Config{
		HTTPTimeout:      10 * time.Second,
		MaxResponseBytes: 1 << 20,
		KeysMaxAge:       time.Hour,
		KeysMinRefresh:   30 * time.Second,
		NodeCacheTTL:     time.Minute,
		NodeCacheSize:    4096,
	}
}

// Validate checks c and fills in each cluster's Validation.
func (c *Config) Validate() error {
	if len(c.Clusters) == 0 {
		return errors.New("k8spsat: no cluster configured")
	}
	if c.HTTPTimeout <= 0 || c.MaxResponseBytes <= 0 || c.KeysMaxAge <= 0 || c.KeysMinRefresh < 0 || c.NodeCacheTTL < 0 || c.NodeCacheSize < 0 {
		return errors.New("k8spsat: timeouts, sizes and cache bounds must be positive (start from DefaultConfig)")
	}
	seen := map[string]bool{}
	for i := range c.Clusters {
		cc := &c.Clusters[i]
		if err := cc.validate(); err != nil {
			return err
		}
		if seen[cc.Name] {
			return fmt.Errorf("k8spsat: cluster %q configured twice", cc.Name)
		}
		seen[cc.Name] = true
	}
	return nil
}

func (cc *ClusterConfig) validate() error {
	if err := ValidateClusterName(cc.Name); err != nil {
		return err
	}
	errf := func(format string, args ...any) error {
		return fmt.Errorf("k8spsat: cluster %q: "+format, append([]any{cc.Name}, args...)...)
	}
	if cc.Audience == "" {
		return errf("audience is required (the audience of the agents' projected tokens)")
	}
	if len(cc.ServiceAccountAllowList) == 0 {
		return errf("service_account_allow_list is empty: no agent could attest")
	}
	for _, sa := range cc.ServiceAccountAllowList {
		ns, name, ok := strings.Cut(sa, ":")
		if !ok || ns == "" || name == "" || strings.Contains(name, ":") {
			return errf("service account %q: want <namespace>:<name>", sa)
		}
	}
	if cc.Validation == "" {
		switch {
		case cc.Issuer != "" && cc.KubeAPI == nil:
			cc.Validation = ValidationOIDC
		case cc.Issuer == "" && cc.KubeAPI != nil:
			cc.Validation = ValidationTokenReview
		case cc.Issuer != "":
			return errf("both issuer and kube_api are set: say validation = %q or %q", ValidationOIDC, ValidationTokenReview)
		default:
			return errf("set issuer (OIDC validation) or kube_api (TokenReview)")
		}
	}
	switch cc.Validation {
	case ValidationOIDC:
		if cc.Issuer == "" {
			return errf("validation %q needs issuer", ValidationOIDC)
		}
		if _, err := url.Parse(cc.Issuer); err != nil {
			return errf("issuer %q is not a URL", cc.Issuer)
		}
		for name, u := range map[string]string{"discovery_url": cc.DiscoveryURL, "jwks_url": cc.JWKSURL} {
			if u != "" {
				if err := checkHTTPS(u); err != nil {
					return errf("%s: %v", name, err)
				}
			}
		}
		if cc.JWKSURL == "" && cc.DiscoveryURL == "" {
			if err := checkHTTPS(cc.Issuer); err != nil {
				return errf("issuer (discovery is fetched from it unless discovery_url or jwks_url is set): %v", err)
			}
		}
	case ValidationTokenReview:
		if cc.KubeAPI == nil {
			return errf("validation %q needs kube_api", ValidationTokenReview)
		}
		if cc.Issuer != "" || cc.DiscoveryURL != "" || cc.JWKSURL != "" {
			return errf("issuer, discovery_url and jwks_url are for validation %q", ValidationOIDC)
		}
	default:
		return errf("validation %q: want %q or %q", cc.Validation, ValidationOIDC, ValidationTokenReview)
	}
	if cc.KubeAPI != nil {
		if err := checkHTTPS(cc.KubeAPI.URL); err != nil {
			return errf("kube_api url: %v", err)
		}
		if cc.KubeAPI.TokenPath == "" {
			return errf("kube_api token_path is required (the server's bearer token for the API server)")
		}
	}
	if len(cc.NodeLabelAllowList) > 0 && cc.KubeAPI == nil {
		return errf("node_label_allow_list needs kube_api (labels are read from the API server)")
	}
	for _, k := range cc.NodeLabelAllowList {
		if k == "" {
			return errf("node_label_allow_list has an empty key")
		}
		if strings.ContainsAny(k, ":\n\r\x00") {
			return errf("node label key %q may not contain ':' or control characters", k)
		}
	}
	return nil
}

func checkHTTPS(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%q is not a URL", raw)
	}
	if u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("%q: want an https URL", raw)
	}
	return nil
}
