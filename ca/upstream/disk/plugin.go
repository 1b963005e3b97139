package disk

import (
	"encoding/hex"
	"strings"

	"github.com/hashicorp/hcl/v2"

	"github.com/sigil-id/sigil/internal/secretfile"
	"github.com/sigil-id/sigil/plugin"
)

// PluginName is the name of this upstream authority in configuration.
const PluginName = "disk"

func init() { plugin.Register(plugin.KindUpstreamAuthority, PluginName, newPlugin) }

// pluginConfig is the block
//
//	upstream_authority "disk" {
//	  cert_file       = "/etc/sigil/upstream/ca.pem"    # signing CA certificate, then its chain
//	  bundle_file     = "/etc/sigil/upstream/root.pem"  # optional: the roots
//	  key_file        = "/etc/sigil/upstream/ca.key"
//	  passphrase_file = "/etc/sigil/upstream/ca.pass"   # or passphrase_env, for an encrypted key_file
//	}
//
// or, with the key in a PKCS#11 token instead of key_file:
//
//	upstream_authority "disk" {
//	  cert_file = "/etc/sigil/upstream/ca.pem"
//	  key_pkcs11 {
//	    module      = "/usr/lib/softhsm/libsofthsm2.so"
//	    token_label = "upstream"               # or slot = <slot ID>
//	    pin_file    = "/etc/sigil/hsm.pin"     # or pin_env = "SIGIL_UPSTREAM_PIN"
//	    key_label   = "upstream-ca"            # and/or key_id = "<CKA_ID in hex>"
//	  }
//	}
//
// Secrets (the passphrase, the PIN) come from files read like every
// secret file (owned by the server's user or root, mode 0600 or 0400) or
// from environment variables, never from the configuration.
type pluginConfig struct {
	CertFile       string       `hcl:"cert_file"`
	BundleFile     *string      `hcl:"bundle_file,optional"`
	KeyFile        *string      `hcl:"key_file,optional"`
	PassphraseFile *string      `hcl:"passphrase_file,optional"`
	PassphraseEnv  *string      `hcl:"passphrase_env,optional"`
	KeyPKCS11      *pkcs11Block `hcl:"key_pkcs11,block"`
}

// pkcs11Block is the key_pkcs11 block.
type pkcs11Block struct {
	Module     string   `hcl:"module"`
	TokenLabel *string  `hcl:"token_label,optional"`
	Slot       *int     `hcl:"slot,optional"`
	PINFile    *string  `hcl:"pin_file,optional"`
	PINEnv     *string  `hcl:"pin_env,optional"`
	KeyLabel   *string  `hcl:"key_label,optional"`
	KeyID      *string  `hcl:"key_id,optional"`
	Body       hcl.Body `hcl:",body"`
}

func newPlugin(body hcl.Body, env plugin.Env) (any, error) {
	var c pluginConfig
	if err := plugin.DecodeBody(body, &c); err != nil {
		return nil, err
	}
	cfg := DefaultConfig()
	cfg.TrustDomain, cfg.Clock, cfg.Logger = env.TrustDomain, env.Clock, env.Logger
	if c.CertFile == "" {
		return nil, plugin.AttrError(body, "cert_file", "must not be empty: the PEM file of the signing CA certificate (and its chain)")
	}
	cfg.CertFile = c.CertFile
	if c.BundleFile != nil {
		if *c.BundleFile == "" {
			return nil, plugin.AttrError(body, "bundle_file", "must not be empty (leave it out to take the roots at the end of cert_file)")
		}
		cfg.BundleFile = *c.BundleFile
	}
	switch {
	case c.KeyFile == nil && c.KeyPKCS11 == nil:
		return nil, plugin.AttrError(body, "key_file", "is required (or a key_pkcs11 block): the signing certificate's private key")
	case c.KeyFile != nil && c.KeyPKCS11 != nil:
		return nil, plugin.AttrError(body, "key_file", "conflicts with the key_pkcs11 block: keep one")
	case c.KeyFile != nil:
		if *c.KeyFile == "" {
			return nil, plugin.AttrError(body, "key_file", "must not be empty")
		}
		cfg.KeyFile = *c.KeyFile
		pass, err := passphrase(body, c)
		if err != nil {
			return nil, err
		}
		cfg.Passphrase = []byte(pass)
	default:
		if c.PassphraseFile != nil || c.PassphraseEnv != nil {
			attr := "passphrase_file"
			if c.PassphraseFile == nil {
				attr = "passphrase_env"
			}
			return nil, plugin.AttrError(body, attr, "is for an encrypted key_file; a key in a PKCS#11 token is unlocked by the token's PIN (pin_file or pin_env)")
		}
		k, err := pkcs11Key(c.KeyPKCS11)
		if err != nil {
			return nil, err
		}
		cfg.PKCS11 = k
	}
	a, err := New(cfg)
	if err != nil {
		return nil, err
	}
	return a, nil
}

// passphrase reads the passphrase that passphrase_file or passphrase_env
// names ("" if neither is set).
func passphrase(body hcl.Body, c pluginConfig) (string, error) {
	switch {
	case c.PassphraseFile != nil && c.PassphraseEnv != nil:
		return "", plugin.AttrError(body, "passphrase_env", "conflicts with passphrase_file: keep one")
	case c.PassphraseFile != nil:
		if *c.PassphraseFile == "" {
			return "", plugin.AttrError(body, "passphrase_file", "must not be empty (leave it out for a key_file in clear)")
		}
		s, err := secretfile.Read(*c.PassphraseFile)
		if err != nil {
			return "", plugin.AttrError(body, "passphrase_file", "%v", err)
		}
		return s, nil
	case c.PassphraseEnv != nil:
		s, err := secretfile.ReadEnv(*c.PassphraseEnv)
		if err != nil {
			return "", plugin.AttrError(body, "passphrase_env", "%v", err)
		}
		return s, nil
	}
	return "", nil
}

// pkcs11Key decodes the key_pkcs11 block and reads the PIN.
func pkcs11Key(b *pkcs11Block) (*PKCS11Key, error) {
	body := b.Body
	if err := PKCS11Available(); err != nil {
		r := body.MissingItemRange() // the block's opening line
		return nil, hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "key_pkcs11: " + err.Error(), Subject: &r}}
	}
	k := &PKCS11Key{Module: b.Module}
	if b.Module == "" {
		return nil, plugin.AttrError(body, "module", "must not be empty: the path of the PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so")
	}
	switch {
	case b.TokenLabel == nil && b.Slot == nil:
		return nil, plugin.AttrError(body, "token_label", "is required (or slot): which token holds the key")
	case b.TokenLabel != nil && b.Slot != nil:
		return nil, plugin.AttrError(body, "slot", "conflicts with token_label: set one of them")
	case b.TokenLabel != nil && *b.TokenLabel == "":
		return nil, plugin.AttrError(body, "token_label", "must not be empty")
	case b.TokenLabel != nil:
		k.TokenLabel = *b.TokenLabel
	case *b.Slot < 0:
		return nil, plugin.AttrError(body, "slot", "must not be negative")
	default:
		k.Slot = b.Slot
	}
	switch {
	case b.PINFile == nil && b.PINEnv == nil:
		return nil, plugin.AttrError(body, "pin_file", "is required (or pin_env): the token's user PIN is never written in the configuration")
	case b.PINFile != nil && b.PINEnv != nil:
		return nil, plugin.AttrError(body, "pin_env", "conflicts with pin_file: set one of them")
	case b.PINFile != nil:
		if *b.PINFile == "" {
			return nil, plugin.AttrError(body, "pin_file", "must not be empty")
		}
		pin, err := secretfile.Read(*b.PINFile)
		if err != nil {
			return nil, plugin.AttrError(body, "pin_file", "%v", err)
		}
		k.PIN = pin
	default:
		pin, err := secretfile.ReadEnv(*b.PINEnv)
		if err != nil {
			return nil, plugin.AttrError(body, "pin_env", "%v", err)
		}
		k.PIN = pin
	}
	if b.KeyLabel == nil && b.KeyID == nil {
		return nil, plugin.AttrError(body, "key_label", "is required (or key_id): which key pair of the token signs")
	}
	if b.KeyLabel != nil {
		if *b.KeyLabel == "" {
			return nil, plugin.AttrError(body, "key_label", "must not be empty")
		}
		k.KeyLabel = *b.KeyLabel
	}
	if b.KeyID != nil {
		id, err := hex.DecodeString(strings.ReplaceAll(*b.KeyID, ":", ""))
		if err != nil || len(id) == 0 {
			return nil, plugin.AttrError(body, "key_id", "%q is not a CKA_ID in hexadecimal (as pkcs11-tool --id takes it, e.g. \"a1b2\")", *b.KeyID)
		}
		k.KeyID = id
	}
	return k, nil
}
