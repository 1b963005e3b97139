package k8s

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/sigil-id/sigil/plugin"
	"github.com/sigil-id/sigil/registration"
)

// The attestor is configured on an agent as
//
//	workload_attestor "k8s" {
//	  kubelet_url         = "https://127.0.0.1:10250"   # default
//	  token_path          = "/var/run/secrets/kubernetes.io/serviceaccount/token"
//	  kubelet_ca_path     = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
//	  skip_kubelet_verify = false
//	  read_only_port      = 0          # e.g. 10255: plain HTTP, no token
//	  node_name           = "node-1"   # pods of other nodes are ignored
//	  proc_root           = "/proc"
//	  cache_ttl           = "5s"
//	  min_refresh         = "500ms"
//	  max_poll            = "10s"
//	  fetch_timeout       = "5s"
//	  max_response_bytes  = 33554432
//	}
//
// with every setting optional. Its selectors have type "k8s"
// (ValidateSelector).
func init() {
	registration.RegisterSelectorType(Name, ValidateSelector)
	plugin.Register(plugin.KindWorkloadAttestor, Name, pluginNew)
}

type hclBlock struct {
	KubeletURL        *string `hcl:"kubelet_url,optional"`
	TokenPath         *string `hcl:"token_path,optional"`
	KubeletCAPath     *string `hcl:"kubelet_ca_path,optional"`
	SkipKubeletVerify bool    `hcl:"skip_kubelet_verify,optional"`
	ReadOnlyPort      int     `hcl:"read_only_port,optional"`
	NodeName          string  `hcl:"node_name,optional"`
	ProcRoot          *string `hcl:"proc_root,optional"`
	CacheTTL          string  `hcl:"cache_ttl,optional"`
	MinRefresh        string  `hcl:"min_refresh,optional"`
	MaxPoll           string  `hcl:"max_poll,optional"`
	FetchTimeout      string  `hcl:"fetch_timeout,optional"`
	MaxResponseBytes  *int64  `hcl:"max_response_bytes,optional"`
}

func pluginNew(body hcl.Body, env plugin.Env) (any, error) {
	var b hclBlock
	if err := plugin.DecodeBody(body, &b); err != nil {
		return nil, err
	}
	c := DefaultConfig()
	c.Clock = env.Clock
	c.Logger = env.Logger
	for _, s := range []struct {
		from *string
		to   *string
	}{{b.KubeletURL, &c.KubeletURL}, {b.TokenPath, &c.TokenPath}, {b.KubeletCAPath, &c.KubeletCAPath}, {b.ProcRoot, &c.ProcRoot}} {
		if s.from != nil {
			*s.to = *s.from
		}
	}
	c.SkipKubeletVerify = b.SkipKubeletVerify
	c.ReadOnlyPort = b.ReadOnlyPort
	c.NodeName = b.NodeName
	if b.MaxResponseBytes != nil {
		c.MaxResponseBytes = *b.MaxResponseBytes
	}
	for _, d := range []struct {
		name string
		s    string
		to   *time.Duration
	}{{"cache_ttl", b.CacheTTL, &c.CacheTTL}, {"min_refresh", b.MinRefresh, &c.MinRefresh},
		{"max_poll", b.MaxPoll, &c.MaxPoll}, {"fetch_timeout", b.FetchTimeout, &c.FetchTimeout}} {
		if d.s == "" {
			continue
		}
		v, err := time.ParseDuration(d.s)
		if err != nil {
			return nil, plugin.AttrError(body, d.name, "%q: want a duration such as \"5s\"", d.s)
		}
		*d.to = v
	}
	return New(c)
}

// selectorKeys are the keys of "k8s" selectors and how many ':'-separated
// parts their values have.
var selectorKeys = map[string]int{
	"ns": 1, "sa": 1, "pod-name": 1, "pod-uid": 1, "pod-label": 2, "pod-owner": 2,
	"container-name": 1, "container-image": 1, "container-image-id": 1, "node-name": 1,
}

// ValidateSelector checks the value of a "k8s" selector: <key>:<value>
// with key one of ns, sa, pod-name, pod-uid, container-name,
// container-image, container-image-id and node-name and a non-empty
// value; pod-label:<label key>:<label value> (the label value may be
// empty); pod-owner:<kind>:<name>.
func ValidateSelector(value string) error {
	key, v, ok := strings.Cut(value, ":")
	parts, known := selectorKeys[key]
	if !ok || !known {
		return errors.New("want k8s:<key>:<value> with key one of ns, sa, pod-name, pod-uid, pod-label, pod-owner, container-name, container-image, container-image-id, node-name")
	}
	if v == "" {
		return fmt.Errorf("%s: empty value", key)
	}
	if parts == 2 {
		first, second, ok := strings.Cut(v, ":")
		if !ok || first == "" {
			if key == "pod-label" {
				return errors.New("pod-label: want pod-label:<key>:<value>")
			}
			return errors.New("pod-owner: want pod-owner:<kind>:<name>")
		}
		if key == "pod-owner" && second == "" {
			return errors.New("pod-owner: empty name")
		}
	}
	return nil
}
