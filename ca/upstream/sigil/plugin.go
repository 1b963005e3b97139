package sigil

import (
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/sigil-id/sigil/plugin"
)

// PluginName is the name of this upstream authority in configuration.
const PluginName = "sigil"

func init() { plugin.Register(plugin.KindUpstreamAuthority, PluginName, newPlugin) }

// pluginConfig is the block
//
//	upstream_authority "sigil" {
//	  server_address      = "10.0.0.1:8081,10.0.0.2:8081"  # the upstream cluster's node API
//	  workload_api_socket = "/run/sigil-upstream/agent/public/api.sock"
//	  timeout             = "10s"                          # optional
//	}
//
// server_address takes one or more host:port separated by commas, as the
// agent's server_address does.
type pluginConfig struct {
	ServerAddress     *string `hcl:"server_address,optional"`
	WorkloadAPISocket *string `hcl:"workload_api_socket,optional"`
	Timeout           *string `hcl:"timeout,optional"`
}

func newPlugin(body hcl.Body, env plugin.Env) (any, error) {
	var pc pluginConfig
	if err := plugin.DecodeBody(body, &pc); err != nil {
		return nil, err
	}
	cfg := DefaultConfig()
	cfg.TrustDomain = env.TrustDomain
	cfg.Logger = env.Logger
	cfg.Clock = env.Clock
	if pc.ServerAddress == nil {
		return nil, plugin.AttrError(body, "server_address", "is required: host:port of the upstream cluster's node API (several separated by commas)")
	}
	for _, a := range strings.Split(*pc.ServerAddress, ",") {
		if a = strings.TrimSpace(a); a != "" {
			if err := checkAddress(a); err != nil {
				return nil, plugin.AttrError(body, "server_address", "%q is not host:port", a)
			}
			cfg.ServerAddresses = append(cfg.ServerAddresses, a)
		}
	}
	if len(cfg.ServerAddresses) == 0 {
		return nil, plugin.AttrError(body, "server_address", "must name at least one host:port")
	}
	if pc.WorkloadAPISocket == nil || *pc.WorkloadAPISocket == "" {
		return nil, plugin.AttrError(body, "workload_api_socket", "is required: the Workload API socket of the upstream cluster's agent on this machine")
	}
	cfg.WorkloadAPISocket = *pc.WorkloadAPISocket
	if !strings.HasPrefix(cfg.WorkloadAPISocket, "/") {
		return nil, plugin.AttrError(body, "workload_api_socket", "%q must be an absolute path", cfg.WorkloadAPISocket)
	}
	if pc.Timeout != nil {
		d, err := time.ParseDuration(*pc.Timeout)
		if err != nil {
			return nil, plugin.AttrError(body, "timeout", "%q is not a duration (e.g. \"10s\")", *pc.Timeout)
		}
		if d <= 0 {
			return nil, plugin.AttrError(body, "timeout", "%q must be positive", *pc.Timeout)
		}
		cfg.Timeout = d
	}
	return New(cfg)
}
