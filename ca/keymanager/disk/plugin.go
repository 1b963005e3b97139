package disk

import (
	"path/filepath"

	"github.com/hashicorp/hcl/v2"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/plugin"
)

// PluginName is the name of this key manager in configuration.
const PluginName = "disk"

func init() { plugin.Register(plugin.KindKeyManager, PluginName, newPlugin) }

// pluginConfig is the block
//
//	key_manager "disk" {
//	  directory         = "/var/lib/sigil/server/keys"          # default <data_dir>/keys
//	  cluster_directory = "/var/lib/sigil/server/cluster/keys"  # default <data_dir>/cluster/keys
//	}
//
// directory holds the CA and JWT signing keys, cluster_directory the key
// of the cluster identity CA.
type pluginConfig struct {
	Directory        *string `hcl:"directory,optional"`
	ClusterDirectory *string `hcl:"cluster_directory,optional"`
}

// DefaultDirs are the key directories under a server's data directory:
// where servers have always kept their keys.
func DefaultDirs(dataDir string) map[ca.KeyScope]string {
	return map[ca.KeyScope]string{
		ca.KeyScopeAuthorities:     filepath.Join(dataDir, "keys"),
		ca.KeyScopeClusterIdentity: filepath.Join(dataDir, "cluster", "keys"),
	}
}

func newPlugin(body hcl.Body, env plugin.Env) (any, error) {
	var c pluginConfig
	if err := plugin.DecodeBody(body, &c); err != nil {
		return nil, err
	}
	dirs := DefaultDirs(env.DataDir)
	for _, s := range []struct {
		attr  string
		v     *string
		scope ca.KeyScope
	}{
		{"directory", c.Directory, ca.KeyScopeAuthorities},
		{"cluster_directory", c.ClusterDirectory, ca.KeyScopeClusterIdentity},
	} {
		switch {
		case s.v == nil && env.DataDir == "":
			return nil, plugin.AttrError(body, s.attr, "is required when the server has no data_dir")
		case s.v == nil:
		case *s.v == "":
			return nil, plugin.AttrError(body, s.attr, "must not be empty (leave it out for the default under data_dir)")
		default:
			dirs[s.scope] = *s.v
		}
	}
	if filepath.Clean(dirs[ca.KeyScopeAuthorities]) == filepath.Clean(dirs[ca.KeyScopeClusterIdentity]) {
		return nil, plugin.AttrError(body, "cluster_directory", "%q is also the directory: the cluster identity key needs a directory of its own", dirs[ca.KeyScopeClusterIdentity])
	}
	return NewStore(dirs)
}
