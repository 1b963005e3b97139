package config

import (
	"fmt"
	"slices"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"

	"github.com/sigil-id/sigil/plugin"
)

// Plugins is what a configuration file says about a daemon's plugins:
// its plugins block, if any, and where the flat keys that stand for
// plugins (key_manager; join_token, join_token_file) are written.
type Plugins struct {
	// Blocks are the plugin blocks of the plugins block, in file order.
	Blocks []plugin.Block
	// Block is the plugins block; nil when there is none.
	Block *hcl.Range
	// Daemon is the server or agent block.
	Daemon hcl.Range
	// flat maps a flat key to where it is written.
	flat map[string]hcl.Range
}

// hclPlugins captures a plugins block; plugin.ParseBlocks reads it.
type hclPlugins struct {
	Body hcl.Body `hcl:",remain"`
}

// flatKeys are the flat keys that stand for plugins.
var flatKeys = []string{"key_manager", "join_token", "join_token_file"}

// readPlugins builds the Plugins of the daemon block of type typ (server
// or agent) from the parsed file, adding top, a top-level plugins block.
func readPlugins(body *hclsyntax.Body, typ string, own, top *hclPlugins) (*Plugins, error) {
	p := &Plugins{flat: map[string]hcl.Range{}}
	var topRange, ownRange *hcl.Range
	for _, b := range body.Blocks {
		switch b.Type {
		case typ:
			p.Daemon = b.DefRange()
			for _, k := range flatKeys {
				if a, ok := b.Body.Attributes[k]; ok {
					p.flat[k] = a.SrcRange
				}
			}
			for _, pb := range b.Body.Blocks {
				if pb.Type == "plugins" {
					r := pb.DefRange()
					ownRange = &r
				}
			}
		case "plugins":
			r := b.DefRange()
			topRange = &r
		}
	}
	src, at := own, ownRange
	if top != nil {
		if own != nil {
			return nil, fmt.Errorf("%s: plugins: the %s block has a plugins block of its own (%s): keep one", pos(*topRange), typ, pos(*ownRange))
		}
		src, at = top, topRange
	}
	if src == nil {
		return p, nil
	}
	blocks, err := plugin.ParseBlocks(src.Body)
	if err != nil {
		return nil, err
	}
	p.Blocks, p.Block = blocks, at
	return p, nil
}

func pos(r hcl.Range) string { return fmt.Sprintf("%s:%d", r.Filename, r.Start.Line) }

// flatAt says where a flat key was set: "file:line: key = value", or
// "-flag value" when no file sets it (a command-line flag did).
func (p *Plugins) flatAt(key, flag, value string) string {
	if p != nil {
		if r, ok := p.flat[key]; ok {
			return fmt.Sprintf("%s: %s = %q", pos(r), key, value)
		}
	}
	return fmt.Sprintf("-%s %s", flag, value)
}

func (p *Plugins) blocks() []plugin.Block {
	if p == nil {
		return nil
	}
	return slices.Clone(p.Blocks)
}

func (p *Plugins) hasBlock() bool { return p != nil && p.Block != nil }

// where is the range a missing plugin is reported at: the plugins block,
// else the daemon block, else none (no file).
func (p *Plugins) where() hcl.Range {
	switch {
	case p == nil:
		return hcl.Range{}
	case p.Block != nil:
		return *p.Block
	}
	return p.Daemon
}

// flatRange is where key is written, or the daemon block.
func (p *Plugins) flatRange(key string) hcl.Range {
	if p == nil {
		return hcl.Range{}
	}
	if r, ok := p.flat[key]; ok {
		return r
	}
	return p.Daemon
}

func firstOf(blocks []plugin.Block, k plugin.Kind) *plugin.Block {
	for i := range blocks {
		if blocks[i].Kind == k {
			return &blocks[i]
		}
	}
	return nil
}

// Default plugins: what a daemon uses when its configuration has no
// plugins block.
const (
	DefaultNodeAttestor     = "join_token"
	DefaultKeyManager       = "disk"
	DefaultWorkloadAttestor = "unix"
)

// PluginBlocks returns the server's plugin blocks with the flat key and
// the defaults applied, and where a missing plugin is reported (for
// plugin.Build). key_manager = "<name>" (or -key-manager) stands for
// key_manager "<name>" {} and must not contradict a key_manager block.
// Without a plugins block the server uses node_attestor "join_token" and
// key_manager "disk".
func (s *Server) PluginBlocks() ([]plugin.Block, hcl.Range, error) {
	blocks := s.Plugins.blocks()
	if s.KeyManager != "" {
		if b := firstOf(blocks, plugin.KindKeyManager); b != nil {
			if b.Name != s.KeyManager {
				return nil, hcl.Range{}, fmt.Errorf("%s conflicts with key_manager %q at %s: keep only the block, in the plugins block: key_manager %q {}",
					s.Plugins.flatAt("key_manager", "key-manager", s.KeyManager), b.Name, pos(b.DefRange), b.Name)
			}
		} else {
			blocks = append(blocks, plugin.Block{Kind: plugin.KindKeyManager, Name: s.KeyManager, Body: hcl.EmptyBody(), DefRange: s.Plugins.flatRange("key_manager")})
		}
	}
	if !s.Plugins.hasBlock() {
		at := s.Plugins.where()
		if firstOf(blocks, plugin.KindNodeAttestor) == nil {
			blocks = append(blocks, plugin.Block{Kind: plugin.KindNodeAttestor, Name: DefaultNodeAttestor, Body: hcl.EmptyBody(), DefRange: at})
		}
		if firstOf(blocks, plugin.KindKeyManager) == nil {
			blocks = append(blocks, plugin.Block{Kind: plugin.KindKeyManager, Name: DefaultKeyManager, Body: hcl.EmptyBody(), DefRange: at})
		}
	}
	return blocks, s.Plugins.where(), nil
}

// checkFlatPlugins refuses flat keys that contradict the plugin blocks.
func (s *Server) checkFlatPlugins() error {
	_, _, err := s.PluginBlocks()
	return err
}

// PluginBlocks returns the agent's plugin blocks with the defaults
// applied, and where a missing plugin is reported (for plugin.Build).
// Without a plugins block the agent uses node_attestor "join_token" and
// workload_attestor "unix". The join token itself (join_token,
// join_token_file, SIGIL_JOIN_TOKEN) is a secret and never in a block:
// the daemon passes it to the join_token attestor.
func (a *Agent) PluginBlocks() ([]plugin.Block, hcl.Range) {
	blocks := a.Plugins.blocks()
	if !a.Plugins.hasBlock() {
		at := a.Plugins.where()
		blocks = append(blocks,
			plugin.Block{Kind: plugin.KindNodeAttestor, Name: DefaultNodeAttestor, Body: hcl.EmptyBody(), DefRange: at},
			plugin.Block{Kind: plugin.KindWorkloadAttestor, Name: DefaultWorkloadAttestor, Body: hcl.EmptyBody(), DefRange: at})
	}
	return blocks, a.Plugins.where()
}

// checkFlatPlugins refuses a join token (join_token, join_token_file or
// their flags) for an agent whose node attestor is not join_token.
func (a *Agent) checkFlatPlugins() error {
	if a.JoinToken == "" && a.JoinTokenFile == "" {
		return nil
	}
	blocks, _ := a.PluginBlocks()
	b := firstOf(blocks, plugin.KindNodeAttestor)
	if b == nil || b.Name == DefaultNodeAttestor {
		return nil
	}
	key, flag, v := "join_token_file", "join-token-file", a.JoinTokenFile
	if a.JoinTokenFile == "" {
		key, flag, v = "join_token", "join-token", "…"
	}
	return fmt.Errorf("%s conflicts with node_attestor %q at %s: a join token is for node_attestor \"join_token\" {}; remove %s, or use node_attestor \"join_token\" {} with join_token_file",
		a.Plugins.flatAt(key, flag, v), b.Name, pos(b.DefRange), key)
}
