package k8s

import (
	"errors"
	"fmt"
	"net/url"
	"time"

	"go.uber.org/zap"

	"github.com/sigil-id/sigil/clock"
)

// Defaults of Config.
const (
	DefaultKubeletURL       = "https://127.0.0.1:10250"
	DefaultTokenPath        = "/var/run/secrets/kubernetes.io/serviceaccount/token"
	DefaultKubeletCAPath    = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
	DefaultProcRoot         = "/proc"
	DefaultCacheTTL         = 5 * time.Second
	DefaultMinRefresh       = 500 * time.Millisecond
	DefaultMaxPoll          = 10 * time.Second
	DefaultFetchTimeout     = 5 * time.Second
	DefaultMaxResponseBytes = 32 << 20
)

const (
	// maxTokenBytes bounds the token file.
	maxTokenBytes = 64 << 10
	// firstBackoff and maxBackoff bound the waits between lookups of a
	// container the kubelet does not list yet.
	firstBackoff = 200 * time.Millisecond
	maxBackoff   = 2 * time.Second
	// The read-only port is on loopback.
	maxReadOnlyPort = 65535
	readOnlyHost    = "127.0.0.1"
)

// Config configures the k8s workload attestor. Start from DefaultConfig.
type Config struct {
	// KubeletURL is the base URL of the kubelet's authenticated HTTPS
	// API; /pods is fetched under it. It must be https.
	KubeletURL string
	// TokenPath is the file holding the bearer token sent to the
	// kubelet (the agent's service account token); it is re-read on
	// every fetch, since projected tokens rotate.
	TokenPath string
	// KubeletCAPath is a PEM file of the CA certificates that the
	// kubelet's serving certificate must chain to. Ignored when
	// SkipKubeletVerify is set.
	KubeletCAPath string
	// SkipKubeletVerify skips verification of the kubelet's serving
	// certificate (kubelets with self-signed certificates). It must be
	// set explicitly and is logged as a warning.
	SkipKubeletVerify bool
	// ReadOnlyPort, when non-zero, makes the attestor use the kubelet's
	// unauthenticated plain-HTTP read-only port on 127.0.0.1 instead of
	// KubeletURL (no token, no TLS). Explicit only; logged as a warning.
	ReadOnlyPort int
	// NodeName, when set, is the node the agent runs on: pods whose
	// spec.nodeName differs are ignored.
	NodeName string
	// ProcRoot is where the proc filesystem is mounted: the attestor
	// reads <ProcRoot>/<pid>/cgroup.
	ProcRoot string
	// CacheTTL is how long a fetched pod list answers lookups before it
	// is fetched again.
	CacheTTL time.Duration
	// MinRefresh is the shortest interval between two fetches of the
	// pod list: lookups of containers it does not hold (starting
	// containers, or a flood of unknown ones) fetch at most this often.
	MinRefresh time.Duration
	// MaxPoll bounds how long a container the kubelet does not (yet)
	// list is waited for, with backoff, before attestation fails.
	MaxPoll time.Duration
	// FetchTimeout bounds one fetch of the pod list.
	FetchTimeout time.Duration
	// MaxResponseBytes caps the size of the kubelet's /pods response.
	MaxResponseBytes int64
	// Clock is the attestor's clock (cache ages, retry waits).
	Clock clock.Clock
	// Logger receives the warnings about insecure settings. Optional.
	Logger *zap.Logger
}

// DefaultConfig returns the default configuration.
func DefaultConfig() Config {
	return Config{
		KubeletURL:       DefaultKubeletURL,
		TokenPath:        DefaultTokenPath,
		KubeletCAPath:    DefaultKubeletCAPath,
		ProcRoot:         DefaultProcRoot,
		CacheTTL:         DefaultCacheTTL,
		MinRefresh:       DefaultMinRefresh,
		MaxPoll:          DefaultMaxPoll,
		FetchTimeout:     DefaultFetchTimeout,
		MaxResponseBytes: DefaultMaxResponseBytes,
		Clock:            clock.New(),
	}
}

// Validate checks c.
func (c Config) Validate() error {
	if c.ReadOnlyPort != 0 {
		if c.ReadOnlyPort < 1 || c.ReadOnlyPort > maxReadOnlyPort {
			return fmt.Errorf("k8s: read_only_port %d: want 1..%d", c.ReadOnlyPort, maxReadOnlyPort)
		}
	} else {
		u, err := url.Parse(c.KubeletURL)
		if err != nil {
			return fmt.Errorf("k8s: kubelet_url %q: %w", c.KubeletURL, err)
		}
		if u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			return fmt.Errorf("k8s: kubelet_url %q: want https://host:port (the kubelet's read-only port is read_only_port)", c.KubeletURL)
		}
		if c.TokenPath == "" {
			return errors.New("k8s: token_path is empty")
		}
		if !c.SkipKubeletVerify && c.KubeletCAPath == "" {
			return errors.New("k8s: kubelet_ca_path is empty: set it, or skip_kubelet_verify = true")
		}
	}
	if c.ProcRoot == "" {
		return errors.New("k8s: proc_root is empty")
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"cache_ttl", c.CacheTTL}, {"min_refresh", c.MinRefresh}, {"max_poll", c.MaxPoll}, {"fetch_timeout", c.FetchTimeout}} {
		if d.v <= 0 {
			return fmt.Errorf("k8s: %s %v: want a positive duration", d.name, d.v)
		}
	}
	if c.MinRefresh > c.CacheTTL {
		return fmt.Errorf("k8s: min_refresh %v is longer than cache_ttl %v", c.MinRefresh, c.CacheTTL)
	}
	if c.MaxResponseBytes <= 0 {
		return fmt.Errorf("k8s: max_response_bytes %d: want a positive size", c.MaxResponseBytes)
	}
	if c.Clock == nil {
		return errors.New("k8s: no clock")
	}
	return nil
}
