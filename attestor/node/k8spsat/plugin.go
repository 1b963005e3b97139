package k8spsat

import (
	"github.com/hashicorp/hcl/v2"

	"github.com/sigil-id/sigil/plugin"
	"github.com/sigil-id/sigil/registration"
)

// The attestor is configured as node_attestor "k8s_psat" { ... }. On a
// server, one cluster block per cluster:
//
//	node_attestor "k8s_psat" {
//	  cluster "prod" {
//	    audience                   = "sigil-server"
//	    service_account_allow_list = ["sigil:sigil-agent"]
//	    issuer                     = "https://kubernetes.default.svc.cluster.local"
//	    jwks_url                   = "https://10.0.0.1:6443/openid/v1/jwks"  # optional
//	    ca_path                    = "/etc/sigil/prod-ca.crt"                # optional
//	    kube_api {                                                           # TokenReview, node labels
//	      url        = "https://10.0.0.1:6443"
//	      ca_path    = "/etc/sigil/prod-ca.crt"
//	      token_path = "/etc/sigil/prod-reviewer.token"
//	    }
//	    node_label_allow_list = ["topology.kubernetes.io/zone"]
//	  }
//	}
//
// On an agent: cluster = "prod" and optionally token_path. The node
// selectors it produces have type "k8s_psat" (ValidateSelector).
func init() {
	registration.RegisterSelectorType(Name, ValidateSelector)
	plugin.Register(plugin.KindNodeAttestor, Name, pluginNew)
}

type hclServer struct {
	Clusters []hclCluster `hcl:"cluster,block"`
}

type hclCluster struct {
	Name                    string      `hcl:"name,label"`
	Audience                string      `hcl:"audience"`
	ServiceAccountAllowList []string    `hcl:"service_account_allow_list"`
	Validation              string      `hcl:"validation,optional"`
	Issuer                  string      `hcl:"issuer,optional"`
	DiscoveryURL            string      `hcl:"discovery_url,optional"`
	JWKSURL                 string      `hcl:"jwks_url,optional"`
	CAPath                  string      `hcl:"ca_path,optional"`
	KubeAPI                 *hclKubeAPI `hcl:"kube_api,block"`
	NodeLabelAllowList      []string    `hcl:"node_label_allow_list,optional"`
}

type hclKubeAPI struct {
	URL       string `hcl:"url"`
	CAPath    string `hcl:"ca_path,optional"`
	TokenPath string `hcl:"token_path"`
}

type hclAgent struct {
	Cluster   string `hcl:"cluster"`
	TokenPath string `hcl:"token_path,optional"`
}

// pluginNew builds the half of env.Role.
func pluginNew(body hcl.Body, env plugin.Env) (any, error) {
	if env.Role == plugin.RoleAgent {
		var a hclAgent
		if err := plugin.DecodeBody(body, &a); err != nil {
			return nil, err
		}
		return NewAttestor(AgentConfig{Cluster: a.Cluster, TokenPath: a.TokenPath})
	}
	var s hclServer
	if err := plugin.DecodeBody(body, &s); err != nil {
		return nil, err
	}
	cfg := DefaultConfig()
	cfg.Clock = env.Clock
	for _, c := range s.Clusters {
		cc := ClusterConfig{
			Name: c.Name, Audience: c.Audience, ServiceAccountAllowList: c.ServiceAccountAllowList,
			Validation: c.Validation, Issuer: c.Issuer, DiscoveryURL: c.DiscoveryURL, JWKSURL: c.JWKSURL,
			CAPath: c.CAPath, NodeLabelAllowList: c.NodeLabelAllowList,
		}
		if c.KubeAPI != nil {
			cc.KubeAPI = &KubeAPIConfig{URL: c.KubeAPI.URL, CAPath: c.KubeAPI.CAPath, TokenPath: c.KubeAPI.TokenPath}
		}
		cfg.Clusters = append(cfg.Clusters, cc)
	}
	return NewVerifier(cfg)
}
