package server

import (
	"slices"
	"testing"
)

func TestWithoutSelf(t *testing.T) {
	for _, tc := range []struct {
		addrs []string
		self  string
		want  []string
	}{
		{[]string{"a:8444", "b:8444"}, "", []string{"a:8444", "b:8444"}},
		{[]string{"a:8444", "b:8444"}, "a:8444", []string{"b:8444"}},
		{[]string{"Sigil-0.peers:8444"}, "sigil-0.peers:8444", nil},
		{[]string{"a:8444"}, "a:8445", []string{"a:8444"}},
	} {
		if got := withoutSelf(tc.addrs, tc.self); !slices.Equal(got, tc.want) {
			t.Errorf("withoutSelf(%q, %q) = %q, want %q", tc.addrs, tc.self, got, tc.want)
		}
	}
}

// TestSameJoinListOnEveryServer: every server is given the same join list,
// naming only the first one (as the StatefulSet of deploy/kubernetes
// does); the first finds only itself there and bootstraps, the second
// joins it.
func TestSameJoinListOnEveryServer(t *testing.T) {
	secret, err := GenerateJoinSecret(nil)
	if err != nil {
		t.Fatal(err)
	}
	first := joinFreeAddrOn(t, "127.0.0.1")
	same := func(c *Config) { c.JoinAddresses = []string{first} }
	a := startJoinNode(t, "127.0.0.1", "a", secret, func(c *Config) {
		same(c)
		c.ClusterAddress = first
		c.AdvertiseAddress = first
	})
	if len(a.cfg.JoinAddresses) != 1 {
		t.Fatalf("the test's config changed: %v", a.cfg.JoinAddresses)
	}
	a.waitReady()
	b := startJoinNode(t, "127.0.0.2", "b", secret, same)
	b.waitReady()
	if got := a.members(); len(got) != 2 {
		t.Fatalf("members after the join: %v", got)
	}
}
