package filesink

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/hashicorp/hcl/v2"

	"github.com/sigil-id/sigil/plugin"
)

// PluginName is the name of this audit sink in configuration.
const PluginName = "file"

func init() { plugin.Register(plugin.KindAuditSink, PluginName, newPlugin) }

// pluginConfig is the block
//
//	audit_sink "file" {
//	  path      = "/var/log/sigil/audit.log"  # required
//	  max_size  = "100MiB"                    # bytes, or with B, KiB, MiB, GiB
//	  max_files = 5                           # rotated files kept
//	}
type pluginConfig struct {
	Path     string  `hcl:"path"`
	MaxSize  *string `hcl:"max_size,optional"`
	MaxFiles *int    `hcl:"max_files,optional"`
}

// minPluginSize is the smallest max_size the plugin takes: a smaller file
// would hold a handful of lines.
const minPluginSize = 4 << 10

func newPlugin(body hcl.Body, env plugin.Env) (any, error) {
	var c pluginConfig
	if err := plugin.DecodeBody(body, &c); err != nil {
		return nil, err
	}
	cfg := DefaultConfig()
	cfg.Path, cfg.Clock, cfg.Logger = c.Path, env.Clock, env.Logger
	if c.Path == "" {
		return nil, plugin.AttrError(body, "path", "must not be empty")
	}
	if c.MaxSize != nil {
		n, err := ParseSize(*c.MaxSize)
		if err != nil {
			return nil, plugin.AttrError(body, "max_size", "%v", err)
		}
		if n < minPluginSize {
			return nil, plugin.AttrError(body, "max_size", "%q is below the minimum of 4KiB", *c.MaxSize)
		}
		cfg.MaxSize = n
	}
	if c.MaxFiles != nil {
		if *c.MaxFiles < 1 || *c.MaxFiles > 1000 {
			return nil, plugin.AttrError(body, "max_files", "%d: want 1 to 1000 rotated files", *c.MaxFiles)
		}
		cfg.MaxFiles = *c.MaxFiles
	}
	return New(cfg)
}

// ParseSize reads a size in bytes: a whole number, optionally followed by
// B, KiB, MiB or GiB ("100MiB", "4096", "64 KiB").
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"B", 1}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("%q is not a size: want a positive whole number of bytes, or one with B, KiB, MiB or GiB (\"100MiB\")", s)
	}
	return n * mult, nil
}
