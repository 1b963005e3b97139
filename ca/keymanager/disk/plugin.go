package disk

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/hashicorp/hcl/v2"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/internal/secretfile"
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
//	  passphrase_file   = "/etc/sigil/keys.pass"  # or passphrase_env = "SIGIL_KEY_PASSPHRASE"
//	}
//
// directory holds the CA and JWT signing keys, cluster_directory the key
// of the cluster identity CA. With passphrase_file (a file checked like
// every secret file: owned by the server's user or root, mode 0600 or
// 0400, small) or passphrase_env (the name of an environment variable),
// the keys of both scopes are encrypted at rest; the passphrase itself is
// never written in the configuration.
type pluginConfig struct {
	Directory        *string `hcl:"directory,optional"`
	ClusterDirectory *string `hcl:"cluster_directory,optional"`
	PassphraseFile   *string `hcl:"passphrase_file,optional"`
	PassphraseEnv    *string `hcl:"passphrase_env,optional"`
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
	pass, src, err := passphrase(body, c)
	if err != nil {
		return nil, err
	}
	if pass == "" {
		return NewStore(dirs)
	}
	cmd := migrationCommand(env.DataDir, dirs, c, src)
	return NewStore(dirs, WithPassphrase([]byte(pass)), WithMigrationCommand(cmd))
}

// passphrase reads the passphrase that passphrase_file or passphrase_env
// names ("" if neither is set) and returns it with the flag that gives it
// to `sigil keys` ("-passphrase-file /etc/sigil/keys.pass").
func passphrase(body hcl.Body, c pluginConfig) (pass, flag string, err error) {
	switch {
	case c.PassphraseFile != nil && c.PassphraseEnv != nil:
		return "", "", plugin.AttrError(body, "passphrase_env", "both passphrase_file and passphrase_env are set: keep one")
	case c.PassphraseFile != nil:
		if *c.PassphraseFile == "" {
			return "", "", plugin.AttrError(body, "passphrase_file", "must not be empty (leave it out to keep the keys in clear)")
		}
		s, err := secretfile.Read(*c.PassphraseFile)
		if err != nil {
			return "", "", plugin.AttrError(body, "passphrase_file", "%v", err)
		}
		if err := CheckPassphrase(s); err != nil {
			return "", "", plugin.AttrError(body, "passphrase_file", "%v", err)
		}
		file := *c.PassphraseFile
		if a, err := filepath.Abs(file); err == nil {
			file = a
		}
		return s, "-passphrase-file " + shellQuote(file), nil
	case c.PassphraseEnv != nil:
		s, err := secretfile.ReadEnv(*c.PassphraseEnv)
		if err != nil {
			return "", "", plugin.AttrError(body, "passphrase_env", "%v", err)
		}
		if err := CheckPassphrase(s); err != nil {
			return "", "", plugin.AttrError(body, "passphrase_env", "%v", err)
		}
		return s, "-passphrase-env " + shellQuote(*c.PassphraseEnv), nil
	}
	return "", "", nil
}

// MinPassphraseLen is the shortest passphrase the key files are
// encrypted with: PBKDF2 slows guessing down, it does not make a short
// passphrase safe.
const MinPassphraseLen = 12

// CheckPassphrase refuses a passphrase shorter than MinPassphraseLen
// bytes; the error never shows the passphrase.
func CheckPassphrase(p string) error {
	if len(p) < MinPassphraseLen {
		return fmt.Errorf("the passphrase is %d bytes long; at least %d are needed", len(p), MinPassphraseLen)
	}
	return nil
}

// migrationCommand is the `sigil keys encrypt` command that encrypts the
// keys of this configuration.
func migrationCommand(dataDir string, dirs map[ca.KeyScope]string, c pluginConfig, passFlag string) string {
	// The command may run from another directory than the server did.
	abs := func(p string) string {
		if a, err := filepath.Abs(p); err == nil {
			return shellQuote(a)
		}
		return shellQuote(p)
	}
	cmd := "sigil keys encrypt -data-dir <server data_dir>"
	if dataDir != "" {
		cmd = "sigil keys encrypt -data-dir " + abs(dataDir)
	}
	if c.Directory != nil {
		cmd += " -directory " + abs(dirs[ca.KeyScopeAuthorities])
	}
	if c.ClusterDirectory != nil {
		cmd += " -cluster-directory " + abs(dirs[ca.KeyScopeClusterIdentity])
	}
	return cmd + " " + passFlag
}

// shellSafe matches words a POSIX shell takes as they are.
var shellSafe = regexp.MustCompile(`^[A-Za-z0-9_@%+=:,./-]+$`)

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if shellSafe.MatchString(s) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
