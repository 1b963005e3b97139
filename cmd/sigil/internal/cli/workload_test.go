package cli

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

func TestWorkloadExplainVerdict(t *testing.T) {
	uid := &sigilv1.Selector{Type: "unix", Value: "uid:1000"}
	entry := &sigilv1.ExplainedEntry{EntryId: "e1", SpiffeId: "spiffe://example.org/web", Selectors: []*sigilv1.Selector{uid}}
	for _, tc := range []struct {
		name string
		resp *sigilv1.ExplainResponse
		want []string
	}{
		{"attestor failed", &sigilv1.ExplainResponse{Pid: 7, Synced: true, EntriesHeld: 1, Attestors: []*sigilv1.AttestorResult{
			{Name: "unix", Selectors: []*sigilv1.Selector{uid}},
			{Name: "k8s", Error: "kubelet unreachable"},
		}}, []string{"Verdict: no identity: workload attestation fails (k8s)", "k8s        FAILED: kubelet unreachable", "unix       unix:uid:1000"}},
		{"not synced", &sigilv1.ExplainResponse{Pid: 7, Attested: true}, []string{"Verdict: no identity: the agent has not synced"}},
		{"near miss", &sigilv1.ExplainResponse{Pid: 7, Attested: true, Synced: true, EntriesHeld: 60,
			NearMisses:        []*sigilv1.ExplainedEntry{{EntryId: "e2", SpiffeId: "spiffe://example.org/db", Missing: []*sigilv1.Selector{{Type: "unix", Value: "gid:5"}}}},
			NearMissesOmitted: 49,
		}, []string{"none of the 60 entries", "Near misses (50):", "spiffe://example.org/db  entry e2\n    lacks: unix:gid:5\n", "and 49 more"}},
		{"served", &sigilv1.ExplainResponse{Pid: 7, Attested: true, Synced: true, Matched: []*sigilv1.ExplainedEntry{entry}},
			[]string{"Verdict: the Workload API serves 1 identity: spiffe://example.org/web", "no SVID yet"}},
	} {
		var b strings.Builder
		printExplain(&b, tc.resp)
		for _, w := range tc.want {
			if !strings.Contains(b.String(), w) {
				t.Errorf("%s: output lacks %q:\n%s", tc.name, w, b.String())
			}
		}
	}
}

func TestWorkloadExplainEntry(t *testing.T) {
	e := &sigilv1.ExplainedEntry{EntryId: "e2", SpiffeId: "spiffe://example.org/db", Missing: []*sigilv1.Selector{{Type: "unix", Value: "gid:5"}}}
	for _, tc := range []struct {
		name string
		resp *sigilv1.ExplainResponse
		want string
	}{
		{"not held", &sigilv1.ExplainResponse{Attested: true}, "not held by this agent"},
		{"lacks", &sigilv1.ExplainResponse{Attested: true, Entry: e}, "spiffe://example.org/db does not match: the process lacks unix:gid:5"},
		{"matched", &sigilv1.ExplainResponse{Attested: true, Entry: &sigilv1.ExplainedEntry{SpiffeId: "spiffe://example.org/db", SvidState: "valid"}, EntryMatched: true}, "matches: the Workload API serves it (valid)"},
		{"matched, attestor failed", &sigilv1.ExplainResponse{Entry: e, EntryMatched: true}, "an attestor failed"},
	} {
		var b strings.Builder
		printEntryWhy(&b, tc.resp, "e2")
		if !strings.Contains(b.String(), "Entry e2:") || !strings.Contains(b.String(), tc.want) {
			t.Errorf("%s: output lacks %q:\n%s", tc.name, tc.want, b.String())
		}
	}
}

func TestWorkloadExplainErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "admin.sock")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"workload", "explain"}, "-pid is required"},
		{[]string{"workload", "explain", "-pid", "-3"}, "-pid is required and must be positive"},
		{[]string{"workload", "explain", "-pid", "1", "-output", "yaml"}, `invalid -output "yaml"`},
		{[]string{"workload", "explain", "-pid", "1", "-admin-socket", missing}, "agent admin socket " + missing + " does not exist"},
	} {
		root := &cobra.Command{Use: "sigil"}
		root.AddCommand(NewWorkloadCommand())
		var out, errb strings.Builder
		if code := Execute(root, tc.args, &out, &errb); code == 0 || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%v: code %d, stderr %q, want %q", tc.args, code, errb.String(), tc.want)
		}
	}
}
