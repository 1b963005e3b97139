package config

import (
	"strings"
	"testing"
	"time"

	"github.com/sigil-id/sigil/internal/exepages"
)

// The code_pages block of either daemon reaches CodePages; without it,
// CodePages is nil (the default: drop).
func TestCodePagesBlock(t *testing.T) {
	for _, daemon := range []string{"server", "agent"} {
		get := func(f *File) *CodePages {
			if daemon == "server" {
				return f.Server.CodePages
			}
			return f.Agent.CodePages
		}
		for src, want := range map[string]*CodePages{
			``:                                 nil,
			`code_pages {}`:                    {Drop: true},
			`code_pages { drop = false }`:      {Drop: false},
			`code_pages { after = "1m" }`:      {Drop: true, After: time.Minute},
			`code_pages { readahead = true }`:  {Drop: true, Readahead: exepages.ReadaheadAll},
			`code_pages { readahead = false }`: {Drop: true, Readahead: exepages.ReadaheadNone},
			"code_pages {\n  drop  = true\n  after = \"90s\"\n}": {Drop: true, After: 90 * time.Second},
		} {
			f, err := Parse("test.hcl", []byte(daemon+" {\n"+src+"\n}"))
			if err != nil {
				t.Fatalf("%s %s: %v", daemon, src, err)
			}
			got := get(f)
			if (got == nil) != (want == nil) || (got != nil && *got != *want) {
				t.Errorf("%s %s: %+v, want %+v", daemon, src, got, want)
			}
		}
		for src, msg := range map[string]string{
			`code_pages { after = "soon" }`: `test.hcl: ` + daemon + `.code_pages.after: invalid duration "soon"`,
			`code_pages { after = "-1s" }`:  `must not be negative`,
			`code_pages { after = "0s" }`:   `test.hcl: ` + daemon + `.code_pages.after: must be positive and at most 24h`,
			`code_pages { after = "25h" }`:  `must be positive and at most 24h`,
			`code_pages { drop = "no" }`:    `Unsuitable value type`,
			`code_pages { period = "1h" }`:  `Unsupported argument`,
			"code_pages {}\ncode_pages {}":  `Duplicate code_pages block`,
		} {
			if _, err := Parse("test.hcl", []byte(daemon+" {\n"+src+"\n}")); err == nil || !strings.Contains(err.Error(), msg) {
				t.Errorf("%s %s: error %v, want it to contain %q", daemon, src, err, msg)
			}
		}
	}
}
