package config

import (
	"fmt"
	"time"

	"github.com/sigil-id/sigil/registration"
)

// SVIDCache is the agent's svid_cache block: how many workload
// X.509-SVIDs the agent holds and which it mints ahead of any request.
// Zero fields take the agent's defaults (agent.SVIDCacheConfig).
type SVIDCache struct {
	MaxSVIDs       int
	EagerSelectors []string
	IdleAfter      time.Duration
}

type hclSVIDCache struct {
	MaxSVIDs       *int     `hcl:"max_svids,optional"`
	EagerSelectors []string `hcl:"eager_selectors,optional"`
	IdleAfter      string   `hcl:"idle_after,optional"`
}

// readSVIDCache checks an svid_cache block; nil when there is none.
func readSVIDCache(filename string, b *hclSVIDCache) (*SVIDCache, error) {
	if b == nil {
		return nil, nil
	}
	out := &SVIDCache{EagerSelectors: b.EagerSelectors}
	if b.MaxSVIDs != nil {
		if *b.MaxSVIDs < 1 {
			return nil, fmt.Errorf("%s: agent.svid_cache.max_svids %d: must be at least 1", filename, *b.MaxSVIDs)
		}
		out.MaxSVIDs = *b.MaxSVIDs
	}
	for _, s := range b.EagerSelectors {
		if _, err := registration.ParseSelector(s); err != nil {
			return nil, fmt.Errorf("%s: agent.svid_cache.eager_selectors: %w", filename, err)
		}
	}
	if b.IdleAfter != "" {
		d, err := parseDuration(b.IdleAfter)
		if err != nil {
			return nil, fmt.Errorf("%s: agent.svid_cache.idle_after: %w", filename, err)
		}
		if d == 0 {
			return nil, fmt.Errorf("%s: agent.svid_cache.idle_after: must be positive (leave it out for the default)", filename)
		}
		out.IdleAfter = d
	}
	return out, nil
}
