package config

import (
	"fmt"
	"time"

	"github.com/sigil-id/sigil/internal/exepages"
)

// CodePages is the code_pages block of a server or an agent: whether the
// daemon, once ready and quiet, returns the pages of its executable it
// does not use (internal/exepages, docs/memory.md). Without the block
// it does, DefaultAfter after it is ready.
type CodePages struct {
	// Drop is false to opt out.
	Drop bool
	// After is the least wait after ready before the first drop; 0 means
	// the default (exepages.DefaultAfter).
	After time.Duration
	// Readahead is where faults after a drop still read ahead
	// (exepages.Readahead): without the attribute, everywhere but in the
	// function tables (exepages.ReadaheadCode); readahead = true,
	// everywhere; readahead = false, nowhere.
	Readahead exepages.Readahead
}

type hclCodePages struct {
	Drop      *bool  `hcl:"drop,optional"`
	After     string `hcl:"after,optional"`
	Readahead *bool  `hcl:"readahead,optional"`
}

// maxCodePagesAfter bounds code_pages.after: a longer wait is a typo
// (drop = false opts out).
const maxCodePagesAfter = 24 * time.Hour

// readCodePages checks the code_pages block of daemon ("server" or
// "agent"); nil when there is none.
func readCodePages(filename, daemon string, b *hclCodePages) (*CodePages, error) {
	if b == nil {
		return nil, nil
	}
	out := &CodePages{Drop: b.Drop == nil || *b.Drop}
	switch {
	case b.Readahead == nil:
		out.Readahead = exepages.ReadaheadCode
	case *b.Readahead:
		out.Readahead = exepages.ReadaheadAll
	default:
		out.Readahead = exepages.ReadaheadNone
	}
	if b.After != "" {
		d, err := parseDuration(b.After)
		if err != nil {
			return nil, fmt.Errorf("%s: %s.code_pages.after: %w", filename, daemon, err)
		}
		if d == 0 || d > maxCodePagesAfter {
			return nil, fmt.Errorf("%s: %s.code_pages.after: must be positive and at most 24h (drop = false turns the drops off)", filename, daemon)
		}
		out.After = d
	}
	return out, nil
}
