package main

import (
	"testing"

	"github.com/spf13/cobra"
)

// TestEveryClientCommandHasOutputJSON: every client command of the tree
// takes -output (text or json), but for the daemons and the commands
// whose output is a file or a secret for a person to copy.
func TestEveryClientCommandHasOutputJSON(t *testing.T) {
	exempt := map[string]bool{
		"sigil server": true, "sigil agent": true, "sigil dev": true, // daemons
		"sigil keys encrypt": true, "sigil keys decrypt": true, "sigil keys rekey": true, // key files
		"sigil svid watch":              true, // keeps files current; runs until stopped
		"sigil cluster secret generate": true, // one secret, for a file
		"sigil completion":              true, // a shell script
		"sigil version":                 true,
	}
	n := 0
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Runnable() && !c.Hidden && c.HasParent() {
			path := c.CommandPath()
			f := c.Flags().Lookup("output")
			switch {
			case exempt[path]:
			case f == nil:
				t.Errorf("%s has no -output flag", path)
			case f.DefValue != "text":
				t.Errorf("%s: -output defaults to %q, want text", path, f.DefValue)
			default:
				n++
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRootCommand())
	if n < 35 {
		t.Errorf("only %d commands with -output: the walk missed the tree", n)
	}
}
