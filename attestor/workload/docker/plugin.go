package docker

import (
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/sigil-id/sigil/plugin"
	"github.com/sigil-id/sigil/registration"
)

// The attestor is configured as workload_attestor "docker" { … } with
// every key optional (docs/workload-attestors/docker.md):
//
//	workload_attestor "docker" {
//	  socket_path        = "/var/run/docker.sock"
//	  api_version        = "1.41"
//	  env_allow_list     = ["APP_ROLE"]
//	  proc_root          = "/proc"
//	  timeout            = "3s"
//	  max_response_bytes = 1048576
//	}
//
// Its selectors have type "docker" (ValidateSelector).
func init() {
	registration.RegisterSelectorType(Name, ValidateSelector)
	plugin.Register(plugin.KindWorkloadAttestor, Name, pluginNew)
}

type block struct {
	SocketPath       *string  `hcl:"socket_path,optional"`
	APIVersion       *string  `hcl:"api_version,optional"`
	EnvAllowList     []string `hcl:"env_allow_list,optional"`
	ProcRoot         *string  `hcl:"proc_root,optional"`
	Timeout          *string  `hcl:"timeout,optional"`
	MaxResponseBytes *int64   `hcl:"max_response_bytes,optional"`
}

func pluginNew(body hcl.Body, _ plugin.Env) (any, error) {
	var b block
	if err := plugin.DecodeBody(body, &b); err != nil {
		return nil, err
	}
	c := DefaultConfig()
	if b.SocketPath != nil {
		c.SocketPath = *b.SocketPath
	}
	if b.APIVersion != nil {
		c.APIVersion = *b.APIVersion
	}
	c.EnvAllowList = b.EnvAllowList
	if b.ProcRoot != nil {
		c.ProcRoot = *b.ProcRoot
	}
	if b.Timeout != nil {
		d, err := time.ParseDuration(*b.Timeout)
		if err != nil {
			return nil, plugin.AttrError(body, "timeout", "timeout %q: want a duration such as \"3s\"", *b.Timeout)
		}
		c.Timeout = d
	}
	if b.MaxResponseBytes != nil {
		c.MaxResponseBytes = *b.MaxResponseBytes
	}
	return New(c)
}
