package k8spsat

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/sigil-id/sigil/attestor/node/internal/jwks"
	"github.com/sigil-id/sigil/clock"
)

// cluster is one configured cluster with its clients and caches.
type cluster struct {
	cfg     ClusterConfig
	allowed map[string]bool
	keys    *jwks.KeySet // OIDC validation only
	api     *kubeAPI     // nil without kube_api
	nodes   nodeCache    // node labels
}

func newCluster(cc ClusterConfig, cfg Config) (*cluster, error) {
	c := &cluster{cfg: cc, allowed: map[string]bool{}}
	for _, sa := range cc.ServiceAccountAllowList {
		c.allowed[sa] = true
	}
	c.nodes = nodeCache{ttl: cfg.NodeCacheTTL, max: cfg.NodeCacheSize, clk: cfg.Clock, m: map[string]nodeEntry{}}
	if cc.Validation == ValidationOIDC {
		hc, err := newHTTPClient(cc.CAPath, cfg.HTTPTimeout, cfg.MaxResponseBytes)
		if err != nil {
			return nil, fmt.Errorf("k8spsat: cluster %q: %w", cc.Name, err)
		}
		c.keys = jwks.New(jwks.Config{
			IssuerURL: cc.Issuer, DiscoveryURL: cc.DiscoveryURL, JWKSURL: cc.JWKSURL, HTTPSOnly: true,
			Algs: signingAlgs, Client: hc, Clock: cfg.Clock, Timeout: cfg.HTTPTimeout,
			Refresh: cfg.KeysMinRefresh, CacheTTL: cfg.KeysMaxAge, MaxStale: maxStale,
		})
	}
	if cc.KubeAPI != nil {
		hc, err := newHTTPClient(cc.KubeAPI.CAPath, cfg.HTTPTimeout, cfg.MaxResponseBytes)
		if err != nil {
			return nil, fmt.Errorf("k8spsat: cluster %q: kube_api: %w", cc.Name, err)
		}
		c.api = &kubeAPI{cluster: cc.Name, base: strings.TrimSuffix(cc.KubeAPI.URL, "/"), tokenPath: cc.KubeAPI.TokenPath,
			audience: cc.Audience, get: getter{hc: hc, max: cfg.MaxResponseBytes}}
	}
	return c, nil
}

// newHTTPClient returns a client that trusts the CAs in caPath (the
// system's when empty), follows no redirect (only configured URLs are
// fetched), gives up after timeout and reads at most maxBytes of an
// answer (jwks.NewClient). It honours HTTPS_PROXY and
// NO_PROXY like any Go client.
func newHTTPClient(caPath string, timeout time.Duration, maxBytes int64) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	if caPath != "" {
		pem, err := os.ReadFile(caPath)
		if err != nil {
			return nil, fmt.Errorf("reading ca_path: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_path %s holds no PEM certificate", caPath)
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	return jwks.NewClient(tr, timeout, maxBytes), nil
}

// getter makes bounded requests.
type getter struct {
	hc  *http.Client
	max int64
}

// do sends req and decodes a 2xx JSON answer of at most g.max bytes into
// out. Errors name the URL and the status, never the request's body or
// credentials.
func (g getter) do(req *http.Request, out any) error {
	resp, err := g.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", req.Method, req.URL.Redacted(), unwrapURLError(err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, g.max+1))
	if err != nil {
		return fmt.Errorf("%s %s: reading the answer: %w", req.Method, req.URL.Redacted(), err)
	}
	if int64(len(body)) > g.max {
		return fmt.Errorf("%s %s: answer larger than %d bytes", req.Method, req.URL.Redacted(), g.max)
	}
	if resp.StatusCode/100 != 2 {
		return &statusError{method: req.Method, url: req.URL.Redacted(), code: resp.StatusCode}
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("%s %s: answer is not the expected JSON: %w", req.Method, req.URL.Redacted(), err)
	}
	return nil
}

// unwrapURLError drops *url.Error's own "Get \"url\":" prefix, which the
// caller already gives.
func unwrapURLError(err error) error {
	var ue interface{ Unwrap() error }
	if errors.As(err, &ue) {
		if inner := ue.Unwrap(); inner != nil {
			return inner
		}
	}
	return err
}

type statusError struct {
	method, url string
	code        int
}

func (e *statusError) Error() string {
	return fmt.Sprintf("%s %s: %d %s", e.method, e.url, e.code, http.StatusText(e.code))
}

func (g getter) getJSON(ctx context.Context, url, bearer string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	return g.do(req, out)
}

// maxStale is how long known keys are used while they cannot be fetched.
const maxStale = 24 * time.Hour

// kubeAPI is a cluster's API server.
type kubeAPI struct {
	cluster, base, tokenPath, audience string
	get                                getter
}

func (a *kubeAPI) bearer() (string, error) {
	f, err := os.Open(a.tokenPath)
	if err != nil {
		return "", fmt.Errorf("k8spsat: cluster %q: kube_api token: %w", a.cluster, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxTokenBytes+1))
	if err != nil || len(b) > MaxTokenBytes {
		return "", fmt.Errorf("k8spsat: cluster %q: kube_api token %s is unreadable or too large", a.cluster, a.tokenPath)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fmt.Errorf("k8spsat: cluster %q: kube_api token %s is empty", a.cluster, a.tokenPath)
	}
	return t, nil
}

// TokenReview is the authentication.k8s.io/v1 TokenReview object, as far
// as the attestor uses it.
type TokenReview struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Spec       TokenReviewSpec   `json:"spec"`
	Status     TokenReviewStatus `json:"status"`
}

// TokenReviewSpec is a TokenReview's spec.
type TokenReviewSpec struct {
	Token     string   `json:"token"`
	Audiences []string `json:"audiences,omitempty"`
}

// TokenReviewStatus is a TokenReview's status.
type TokenReviewStatus struct {
	Authenticated bool     `json:"authenticated"`
	User          UserInfo `json:"user"`
	Audiences     []string `json:"audiences,omitempty"`
	Error         string   `json:"error,omitempty"`
}

// UserInfo is a TokenReview's authenticated user.
type UserInfo struct {
	Username string              `json:"username"`
	UID      string              `json:"uid"`
	Groups   []string            `json:"groups"`
	Extra    map[string][]string `json:"extra"`
}

// The extra keys of a service account user (Kubernetes 1.30 adds the node).
const (
	ExtraPodName  = "authentication.kubernetes.io/pod-name"
	ExtraPodUID   = "authentication.kubernetes.io/pod-uid"
	ExtraNodeName = "authentication.kubernetes.io/node-name"
	ExtraNodeUID  = "authentication.kubernetes.io/node-uid"
)

// IdentityFromTokenReview reads the pod's identity from a TokenReview
// status that authenticated a token for audience.
func IdentityFromTokenReview(st TokenReviewStatus, audience string) (Identity, error) {
	if !st.Authenticated {
		if st.Error != "" {
			return Identity{}, fmt.Errorf("the API server did not authenticate the token: %.200s", st.Error)
		}
		return Identity{}, errors.New("the API server did not authenticate the token")
	}
	if !contains(st.Audiences, audience) {
		return Identity{}, fmt.Errorf("the token is not for audience %q", audience)
	}
	rest, ok := strings.CutPrefix(st.User.Username, "system:serviceaccount:")
	ns, sa, ok2 := strings.Cut(rest, ":")
	if !ok || !ok2 || ns == "" || sa == "" || strings.Contains(sa, ":") {
		return Identity{}, fmt.Errorf("user %q is not a service account", st.User.Username)
	}
	one := func(k string) string {
		if v := st.User.Extra[k]; len(v) == 1 {
			return v[0]
		}
		return ""
	}
	id := Identity{Namespace: ns, ServiceAccount: sa, PodName: one(ExtraPodName), PodUID: one(ExtraPodUID),
		NodeName: one(ExtraNodeName), NodeUID: one(ExtraNodeUID)}
	if id.PodName == "" || id.PodUID == "" {
		return Identity{}, errors.New("the token is not bound to a pod (not a projected token)")
	}
	return id, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// verifyTokenReview has the cluster's API server review the token.
func (c *cluster) verifyTokenReview(ctx context.Context, token string) (Identity, error) {
	a := c.api
	bearer, err := a.bearer()
	if err != nil {
		return Identity{}, err
	}
	body, err := json.Marshal(TokenReview{APIVersion: "authentication.k8s.io/v1", Kind: "TokenReview",
		Spec: TokenReviewSpec{Token: token, Audiences: []string{a.audience}}})
	if err != nil {
		return Identity{}, fmt.Errorf("k8spsat: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.base+"/apis/authentication.k8s.io/v1/tokenreviews", bytes.NewReader(body))
	if err != nil {
		return Identity{}, fmt.Errorf("k8spsat: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Authorization", "Bearer "+bearer)
	var tr TokenReview
	if err := a.get.do(req, &tr); err != nil {
		return Identity{}, fmt.Errorf("k8spsat: cluster %q: token review: %w", c.cfg.Name, err)
	}
	id, err := IdentityFromTokenReview(tr.Status, a.audience)
	if err != nil {
		return Identity{}, refused("cluster %q: token review: %v", c.cfg.Name, err)
	}
	return id, nil
}

// objectMeta is the part of a Node or Pod the attestor reads.
type objectMeta struct {
	Metadata struct {
		Name   string            `json:"name"`
		UID    string            `json:"uid"`
		Labels map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec struct {
		NodeName string `json:"nodeName"`
	} `json:"spec"`
}

// podNode returns the node of the pod ns/name, which must have uid (the
// token's pod: a pod of the same name created later is another pod).
func (a *kubeAPI) podNode(ctx context.Context, ns, name, uid string) (string, error) {
	bearer, err := a.bearer()
	if err != nil {
		return "", err
	}
	var pod objectMeta
	err = a.get.getJSON(ctx, a.base+"/api/v1/namespaces/"+pathEscape(ns)+"/pods/"+pathEscape(name), bearer, &pod)
	var se *statusError
	if errors.As(err, &se) && se.code == http.StatusNotFound {
		return "", refused("cluster %q: pod %s/%s no longer exists", a.cluster, ns, name)
	}
	if err != nil {
		return "", fmt.Errorf("k8spsat: cluster %q: pod lookup: %w", a.cluster, err)
	}
	if pod.Metadata.UID != uid {
		return "", refused("cluster %q: pod %s/%s is not the pod the token is bound to (uid %q, token %q)", a.cluster, ns, name, pod.Metadata.UID, uid)
	}
	if pod.Spec.NodeName == "" {
		return "", refused("cluster %q: pod %s/%s is not scheduled on a node", a.cluster, ns, name)
	}
	return pod.Spec.NodeName, nil
}

func pathEscape(s string) string {
	// Kubernetes names are DNS labels or subdomains; anything else is
	// refused by the API server, and must not change the path.
	return strings.NewReplacer("/", "%2F", "?", "%3F", "#", "%23", "%", "%25").Replace(s)
}

// nodeCache keeps node labels for ttl, at most max nodes.
type nodeCache struct {
	ttl time.Duration
	max int
	clk clock.Clock
	mu  sync.Mutex
	m   map[string]nodeEntry
}

type nodeEntry struct {
	uid    string
	labels map[string]string
	at     time.Time
}

// nodeLabels returns the allowed labels of the node name; a non-empty uid
// (from the token) must be the node's.
func (c *cluster) nodeLabels(ctx context.Context, name, uid string) (map[string]string, error) {
	nc := &c.nodes
	now := nc.clk.Now()
	nc.mu.Lock()
	e, ok := nc.m[name]
	nc.mu.Unlock()
	if !ok || now.Sub(e.at) >= nc.ttl || (uid != "" && e.uid != uid) {
		bearer, err := c.api.bearer()
		if err != nil {
			return nil, err
		}
		var n objectMeta
		err = c.api.get.getJSON(ctx, c.api.base+"/api/v1/nodes/"+pathEscape(name), bearer, &n)
		var se *statusError
		if errors.As(err, &se) && se.code == http.StatusNotFound {
			return nil, refused("cluster %q: node %s does not exist", c.cfg.Name, name)
		}
		if err != nil {
			return nil, fmt.Errorf("k8spsat: cluster %q: node lookup: %w", c.cfg.Name, err)
		}
		e = nodeEntry{uid: n.Metadata.UID, labels: map[string]string{}, at: now}
		for _, k := range c.cfg.NodeLabelAllowList {
			if v, ok := n.Metadata.Labels[k]; ok && v != "" {
				e.labels[k] = v
			}
		}
		nc.mu.Lock()
		if len(nc.m) >= nc.max {
			clear(nc.m) // a full cache starts over: bounded, and rare
		}
		if nc.max > 0 && nc.ttl > 0 {
			nc.m[name] = e
		}
		nc.mu.Unlock()
	}
	if uid != "" && e.uid != uid {
		return nil, refused("cluster %q: node %s has uid %q, the token names %q (the node was replaced)", c.cfg.Name, name, e.uid, uid)
	}
	return e.labels, nil
}
