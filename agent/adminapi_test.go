package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/workload"
	"github.com/sigil-id/sigil/internal/unixsock"
	"github.com/sigil-id/sigil/registration"
	"github.com/sigil-id/sigil/workloadapi"
)

func held(entries ...*sigilv1.Entry) []heldEntry {
	out := make([]heldEntry, len(entries))
	for i, e := range entries {
		out[i] = heldEntry{entry: e, state: "no-svid"}
	}
	return out
}

func explainedIDs(es []*sigilv1.ExplainedEntry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.GetEntryId())
	}
	return out
}

func formatted(sels []*sigilv1.Selector) string {
	var out []string
	for _, s := range sels {
		out = append(out, registration.FormatSelector(s))
	}
	return strings.Join(out, " ")
}

func TestExplainEntries(t *testing.T) {
	const agentID = "spiffe://example.org/sigil/agent/join_token/x"
	// Entries with only k8s selectors: one parented to the agent, one held
	// through a node alias.
	k8s := &sigilv1.Entry{Id: "k", SpiffeId: "spiffe://example.org/pod", ParentId: agentID, Selectors: []*sigilv1.Selector{{Type: "k8s", Value: "ns:prod"}}}
	alias := &sigilv1.Entry{Id: "alias", SpiffeId: "spiffe://example.org/pod2", ParentId: "spiffe://example.org/nodes/prod", Selectors: []*sigilv1.Selector{{Type: "k8s", Value: "ns:prod"}}}
	entries := held(
		entry("two", "two-missing", 1, "uid:1000", "gid:7", "path:/bin/x"),
		entry("match", "web", 1, "uid:1000"),
		entry("match2", "web2", 1, "uid:1000", "gid:1000"),
		entry("one", "one-missing", 1, "uid:1000", "gid:7"),
		entry("other", "other-user", 1, "uid:0"),
		k8s,
		alias,
	)
	caller := []*sigilv1.Selector{sel("uid:1000"), sel("gid:1000")}

	matched, near, omitted := explainEntries(entries, caller, agentID, 50)
	if got, want := strings.Join(explainedIDs(matched), ","), "match,match2"; got != want {
		t.Errorf("matched %s, want %s", got, want)
	}
	// Fewest missing first; the entry parented to the agent is listed
	// although it shares no selector type with the caller, the one held
	// through a node alias is not.
	if got, want := strings.Join(explainedIDs(near), ","), "one,other,k,two"; got != want {
		t.Errorf("near misses %s, want %s", got, want)
	}
	if omitted != 0 {
		t.Errorf("omitted %d, want 0", omitted)
	}
	wantMissing := map[string]string{"k": "k8s:ns:prod", "one": "unix:gid:7", "other": "unix:uid:0", "two": "unix:gid:7 unix:path:/bin/x"}
	for _, e := range near {
		if got := formatted(e.GetMissing()); got != wantMissing[e.GetEntryId()] {
			t.Errorf("entry %s lacks %q, want %q", e.GetEntryId(), got, wantMissing[e.GetEntryId()])
		}
	}
	for _, e := range matched {
		if len(e.GetMissing()) != 0 {
			t.Errorf("matched entry %s lists missing selectors", e.GetEntryId())
		}
	}

	// The list is bounded; the rest are counted.
	_, near, omitted = explainEntries(entries, caller, agentID, 1)
	if len(near) != 1 || near[0].GetEntryId() != "one" || omitted != 3 {
		t.Errorf("bounded to 1: near %v, omitted %d; want [one], 3", explainedIDs(near), omitted)
	}

	// No selectors (every attestor failed): nothing matches; only the
	// entries parented to the agent are near misses.
	matched, near, _ = explainEntries(entries, nil, "spiffe://example.org/nobody", 50)
	if len(matched) != 0 || len(near) != 0 {
		t.Errorf("no selectors: matched %v, near %v", explainedIDs(matched), explainedIDs(near))
	}
}

func TestDefaultAdminSocketFor(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{unixsock.DefaultWorkloadSocket(), unixsock.DefaultAgentAdminSocket()},
		{"/srv/sigil/public/api.sock", "/srv/sigil/private/admin.sock"},
		{"/tmp/x/api.sock", "/tmp/x/private/admin.sock"},
	} {
		if got := DefaultAdminSocketFor(tc.in); got != tc.want {
			t.Errorf("DefaultAdminSocketFor(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	if got, want := unixsock.DefaultAgentAdminSocket(), filepath.Join(unixsock.RuntimeDir(), "agent/private/admin.sock"); got != want {
		t.Errorf("DefaultAgentAdminSocket() = %q, want %q", got, want)
	}
}

// uidAttestor gives the caller's uid as a unix:uid selector, and records
// the callers it saw.
type uidAttestor struct{ seen *[]workload.Caller }

func (uidAttestor) Name() string { return "uid" }
func (a uidAttestor) Attest(_ context.Context, c workload.Caller) ([]*sigilv1.Selector, error) {
	*a.seen = append(*a.seen, c)
	return []*sigilv1.Selector{sel("uid:" + strconv.FormatUint(uint64(c.UID), 10))}, nil
}

type brokenAttestor struct{}

func (brokenAttestor) Name() string { return "broken" }
func (brokenAttestor) Attest(context.Context, workload.Caller) ([]*sigilv1.Selector, error) {
	return nil, errors.New("platform unreachable")
}

func writeStatus(t *testing.T, root string, pid int, status string) {
	t.Helper()
	dir := filepath.Join(root, strconv.Itoa(pid))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "status"), []byte(status), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestAdminExplain(t *testing.T) {
	f := newCacheFixture(t)
	f.c.SetBundle(f.bundle(f.ca))
	f.c.ReplaceEntries([]*sigilv1.Entry{
		entry("a", "web", 1, "uid:1000"),
		entry("b", "db", 1, "uid:1000", "gid:5"),
		entry("c", "root", 1, "uid:0"),
	})
	if n := f.mintAll(f.ca); n != 3 {
		t.Fatalf("minted %d, want 3", n)
	}
	procRoot := t.TempDir()
	writeStatus(t, procRoot, 42, "Name:\tweb\nUid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\nGroups:\t10 20\n")
	writeStatus(t, procRoot, 43, "Name:\tbad\n")

	var seen []workload.Caller
	newAPI := func(attestors ...workload.Attestor) *adminAPI {
		wl, err := workloadapi.New(workloadapi.Config{Cache: f.c, Attestors: attestors})
		if err != nil {
			t.Fatal(err)
		}
		return &adminAPI{a: &Agent{cache: f.c, clk: f.clk, log: zaptest.NewLogger(t)}, wl: wl, procRoot: procRoot}
	}
	api := newAPI(uidAttestor{&seen})
	resp, err := api.Explain(context.Background(), &sigilv1.ExplainRequest{Pid: 42})
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != 1 || seen[0].PID != 42 || seen[0].UID != 1000 || seen[0].GID != 1000 || len(seen[0].Groups) != 2 {
		t.Errorf("attestor saw %+v, want pid 42 uid 1000 gid 1000 groups [10 20]", seen)
	}
	if !resp.GetAttested() || resp.GetUid() != 1000 || resp.GetEntriesHeld() != 3 || !resp.GetSynced() {
		t.Errorf("response %v", resp)
	}
	if len(resp.GetAttestors()) != 1 || formatted(resp.GetAttestors()[0].GetSelectors()) != "unix:uid:1000" {
		t.Errorf("attestors %v", resp.GetAttestors())
	}
	if got := explainedIDs(resp.GetMatched()); len(got) != 1 || got[0] != "a" {
		t.Fatalf("matched %v, want [a]", got)
	}
	if m := resp.GetMatched()[0]; !m.GetSvidCached() || m.GetSvidState() != "valid" || m.GetSvidNotAfter() == 0 {
		t.Errorf("matched entry's SVID: cached %v state %q not after %d", m.GetSvidCached(), m.GetSvidState(), m.GetSvidNotAfter())
	}
	if got := explainedIDs(resp.GetNearMisses()); strings.Join(got, ",") != "b,c" {
		t.Errorf("near misses %v, want [b c]", got)
	}

	// One entry by ID: held or not, matched or not, with what it lacks.
	resp, err = api.Explain(context.Background(), &sigilv1.ExplainRequest{Pid: 42, EntryId: "b"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetEntry().GetEntryId() != "b" || resp.GetEntryMatched() || formatted(resp.GetEntry().GetMissing()) != "unix:gid:5" {
		t.Errorf("entry b: %v matched %v, want it lacking unix:gid:5", resp.GetEntry(), resp.GetEntryMatched())
	}
	resp, err = api.Explain(context.Background(), &sigilv1.ExplainRequest{Pid: 42, EntryId: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetEntry().GetEntryId() != "a" || !resp.GetEntryMatched() || len(resp.GetEntry().GetMissing()) != 0 {
		t.Errorf("entry a: %v matched %v, want it matched", resp.GetEntry(), resp.GetEntryMatched())
	}
	resp, err = api.Explain(context.Background(), &sigilv1.ExplainRequest{Pid: 42, EntryId: "nope"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetEntry() != nil || resp.GetEntryMatched() {
		t.Errorf("unknown entry: %v matched %v, want none", resp.GetEntry(), resp.GetEntryMatched())
	}

	// One failing attestor: the process would get nothing; the others'
	// selectors and the failure are both reported.
	resp, err = newAPI(uidAttestor{&seen}, brokenAttestor{}).Explain(context.Background(), &sigilv1.ExplainRequest{Pid: 42})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetAttested() || len(resp.GetAttestors()) != 2 || resp.GetAttestors()[1].GetError() != "platform unreachable" {
		t.Errorf("with a failing attestor: %v", resp)
	}

	for _, tc := range []struct {
		pid  int32
		code codes.Code
	}{{0, codes.InvalidArgument}, {-1, codes.InvalidArgument}, {44, codes.NotFound}, {43, codes.FailedPrecondition}} {
		_, err := api.Explain(context.Background(), &sigilv1.ExplainRequest{Pid: tc.pid})
		if status.Code(err) != tc.code {
			t.Errorf("pid %d: %v, want %s", tc.pid, err, tc.code)
		}
	}
}
