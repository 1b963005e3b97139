package config

import (
	"strings"
	"testing"
	"time"
)

// The agent's svid_cache block reaches Agent.SVIDCache; a missing block
// leaves it nil (the agent's defaults).
func TestSVIDCacheBlock(t *testing.T) {
	f, err := Parse("test.hcl", []byte(`agent {
  svid_cache {
    max_svids       = 5000
    eager_selectors = ["unix:uid:0", "k8s:ns:kube-system"]
    idle_after      = "30m"
  }
}`))
	if err != nil {
		t.Fatal(err)
	}
	c := f.Agent.SVIDCache
	if c == nil || c.MaxSVIDs != 5000 || c.IdleAfter != 30*time.Minute ||
		strings.Join(c.EagerSelectors, ",") != "unix:uid:0,k8s:ns:kube-system" {
		t.Fatalf("svid_cache = %+v", c)
	}
	f, err = Parse("test.hcl", []byte("agent {\n  svid_cache {}\n}"))
	if err != nil {
		t.Fatal(err)
	}
	if f.Agent.SVIDCache == nil || f.Agent.SVIDCache.MaxSVIDs != 0 || f.Agent.SVIDCache.IdleAfter != 0 || len(f.Agent.SVIDCache.EagerSelectors) != 0 {
		t.Fatalf("empty block: %+v, %v", f.Agent.SVIDCache, err)
	}
	f, err = Parse("test.hcl", []byte(`agent { trust_domain = "example.org" }`))
	if err != nil {
		t.Fatal(err)
	}
	if f.Agent.SVIDCache != nil {
		t.Fatalf("no block: %+v, %v", f.Agent.SVIDCache, err)
	}
}

func TestSVIDCacheBlockErrors(t *testing.T) {
	for src, want := range map[string]string{
		`svid_cache { max_svids = 0 }`:                `test.hcl: agent.svid_cache.max_svids 0: must be at least 1`,
		`svid_cache { max_svids = -3 }`:               `test.hcl: agent.svid_cache.max_svids -3: must be at least 1`,
		`svid_cache { idle_after = "soon" }`:          `test.hcl: agent.svid_cache.idle_after: invalid duration "soon"`,
		`svid_cache { idle_after = "-1m" }`:           `test.hcl: agent.svid_cache.idle_after: invalid duration "-1m": must not be negative`,
		`svid_cache { idle_after = "0s" }`:            `test.hcl: agent.svid_cache.idle_after: must be positive`,
		`svid_cache { eager_selectors = ["uid0"] }`:   `test.hcl: agent.svid_cache.eager_selectors: registration: selector "uid0": want type:value`,
		`svid_cache { max_size = 3 }`:                 `Unsupported argument`,
		"svid_cache { max_svids = 1 }\nsvid_cache {}": `Duplicate svid_cache block`,
	} {
		_, err := Parse("test.hcl", []byte("agent {\n"+src+"\n}"))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want it to contain %q", src, err, want)
		}
	}
}
