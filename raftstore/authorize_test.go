package raftstore

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/internal/storepb"
)

// authorizedIDs is AuthorizedFor over every id asked, as a sorted list.
func authorizedIDs(t *testing.T, r *Reader, agentID string, ask []string) []string {
	t.Helper()
	m, err := r.AuthorizedFor(agentID, ask)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for id, e := range m {
		full, err := r.Entry(id)
		if err != nil {
			t.Fatal(err)
		}
		if e.ID != id || e.SPIFFEID != full.SpiffeId || !slices.Equal(e.DNSNames, full.DnsNames) || e.X509TTL != full.X509SvidTtl || e.JWTTTL != full.JwtSvidTtl {
			t.Fatalf("entry %s returned under id %s as %+v, stored %v", e.ID, id, e, full)
		}
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

func TestAuthorizedForMatchesAuthorizedEntries(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	other := "spiffe://example.org/sigil/agent/join_token/other"
	spiffeIDs := []string{"spiffe://example.org/a", "spiffe://example.org/b", "spiffe://example.org/c", "spiffe://example.org/d",
		"spiffe://example.org/e", "spiffe://example.org/f", "spiffe://example.org/g", "spiffe://example.org/h"}
	parents := append([]string{agent, agent, alias, alias, other}, spiffeIDs...)
	sels := []*sigilv1.Selector{sel("region", "eu"), sel("region", "us"), sel("type", "gpu"), sel("unix", "uid:1")}
	for round := range 300 {
		tf := newTestFSM(t)
		tf.single(attestNode(agent, "", sel("region", "eu"), sel("type", "gpu")))
		tf.single(attestNode(other, "", sel("region", "us")))
		var es []*sigilv1.Entry
		for i := range 4 + rng.IntN(20) {
			var ss []*sigilv1.Selector
			for _, s := range sels {
				if rng.IntN(3) == 0 {
					ss = append(ss, s)
				}
			}
			if len(ss) == 0 {
				ss = append(ss, sels[rng.IntN(len(sels))])
			}
			e := entry(fmt.Sprintf("e%02d", i), spiffeIDs[rng.IntN(len(spiffeIDs))], parents[rng.IntN(len(parents))], ss...)
			if rng.IntN(2) == 0 {
				// What signing reads of the record besides the keys.
				e.DnsNames = []string{"a.example", fmt.Sprintf("b%d.example", i)}[:1+rng.IntN(2)]
				e.X509SvidTtl, e.JwtSvidTtl = int32(rng.IntN(100000)), int32(rng.IntN(3600))
				e.Hint, e.FederatesWith = "h", nil
			}
			es = append(es, e)
		}
		tf.batch(createEntries(es...))
		var ask []string
		for _, e := range es {
			ask = append(ask, e.Id)
		}
		ask = append(ask, "no-such-entry")
		r := tf.f.reader()
		for _, a := range []string{agent, other} {
			want, err := r.AuthorizedEntries(a)
			if err != nil {
				t.Fatal(err)
			}
			if got := authorizedIDs(t, r, a, ask); !slices.Equal(got, ids(want)) {
				t.Fatalf("round %d, agent %s: AuthorizedFor %v, AuthorizedEntries %v; entries %v", round, a, got, ids(want), es)
			}
		}
	}
}

func TestAuthorizedForCases(t *testing.T) {
	banned := "spiffe://example.org/sigil/agent/join_token/banned"
	tf := newTestFSM(t)
	for _, c := range []*storepb.Command{
		attestNode(agent, "", sel("region", "eu")),
		attestNode(banned, "", sel("region", "eu")),
		banNode(banned),
	} {
		if got := tf.single(c); got != codes.OK {
			t.Fatal(got)
		}
	}
	tf.batch(createEntries(
		entry("direct", "spiffe://example.org/web", agent),
		entry("alias-eu", "spiffe://example.org/eu-nodes", alias, sel("region", "eu")),
		entry("via-eu", "spiffe://example.org/eu-app", "spiffe://example.org/eu-nodes"),
		// A cycle below direct: b is reached through a, and a-again
		// (SPIFFE ID a, parent b) through b. Walking up from b meets
		// a-again before z-a (id order), so b is first found
		// unauthorized on a path through the cycle.
		entry("z-a", "spiffe://example.org/a", "spiffe://example.org/web"),
		entry("b", "spiffe://example.org/b", "spiffe://example.org/a"),
		entry("a-again", "spiffe://example.org/a", "spiffe://example.org/b"),
		// A cycle nothing authorized leads into.
		entry("x", "spiffe://example.org/x", "spiffe://example.org/y"),
		entry("y", "spiffe://example.org/y", "spiffe://example.org/x"),
	))
	r := tf.f.reader()
	// Asked in an order where b is decided while a is still walked.
	got := authorizedIDs(t, r, agent, []string{"b", "a-again", "z-a", "via-eu", "alias-eu", "x", "y", "direct"})
	if want := []string{"a-again", "b", "direct", "via-eu", "z-a"}; !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if _, err := r.AuthorizedFor(banned, []string{"direct"}); !errors.Is(err, ErrBanned) {
		t.Fatalf("banned agent: err %v, want ErrBanned", err)
	}
	if _, err := r.AuthorizedFor("spiffe://example.org/sigil/agent/join_token/nobody", []string{"direct"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown agent: err %v, want ErrNotFound", err)
	}
}
