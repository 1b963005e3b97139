package tpm

import (
	"path/filepath"

	"github.com/hashicorp/hcl/v2"

	"github.com/sigil-id/sigil/plugin"
)

// PluginName is the name of this key manager in configuration.
const PluginName = "tpm"

func init() { plugin.Register(plugin.KindKeyManager, PluginName, newPlugin) }

// pluginConfig is the block
//
//	key_manager "tpm" {
//	  device            = "/dev/tpmrm0"              # the default
//	  storage_directory = "/var/lib/sigil/server/tpm" # default <data_dir>/tpm
//	}
//
// device is the TPM (a character device, or a software TPM's unix
// socket); storage_directory holds the wrapped key blobs of both scopes.
type pluginConfig struct {
	Device           *string `hcl:"device,optional"`
	StorageDirectory *string `hcl:"storage_directory,optional"`
}

// DefaultStorageDirectory is the storage directory under a server's data
// directory.
func DefaultStorageDirectory(dataDir string) string { return filepath.Join(dataDir, "tpm") }

func newPlugin(body hcl.Body, env plugin.Env) (any, error) {
	var c pluginConfig
	if err := plugin.DecodeBody(body, &c); err != nil {
		return nil, err
	}
	cfg := DefaultConfig()
	cfg.TrustDomain, cfg.NodeName = env.TrustDomain.Name(), env.NodeName
	switch {
	case c.Device == nil:
	case *c.Device == "":
		return nil, plugin.AttrError(body, "device", "must not be empty (leave it out for %s)", DefaultDevice)
	default:
		cfg.Device = *c.Device
	}
	switch {
	case c.StorageDirectory == nil && env.DataDir == "":
		return nil, plugin.AttrError(body, "storage_directory", "is required when the server has no data_dir")
	case c.StorageDirectory == nil:
		cfg.StorageDirectory = DefaultStorageDirectory(env.DataDir)
	case *c.StorageDirectory == "":
		return nil, plugin.AttrError(body, "storage_directory", "must not be empty (leave it out for the default under data_dir)")
	default:
		cfg.StorageDirectory = *c.StorageDirectory
	}
	return NewStore(cfg)
}
