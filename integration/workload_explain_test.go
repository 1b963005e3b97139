package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sigil-id/sigil/internal/eventually"
)

// TestWorkloadExplain: `sigil workload explain -pid <this test process>`
// against a real agent's admin socket names the unix attestor's
// selectors, the entry that matches (with its SVID cached), the near miss
// with the selector it lacks, and not the entry parented to another
// agent, and with -entry why one entry does or does not match; and
// another uid (nobody, through setpriv) that can reach the
// agent's directory cannot connect to the admin socket.
func TestWorkloadExplain(t *testing.T) {
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv (util-linux) is not installed: cannot run a command as another uid")
	}
	if os.Geteuid() != 0 {
		t.Skip("switching to uid 65534 with setpriv needs root; this test runs as uid", os.Geteuid())
	}
	// A base directory the other uid may traverse, so that only the
	// admin directory's mode stands in its way.
	base, err := os.MkdirTemp("", "sigil-explain-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	bin := filepath.Join(base, "sigil")
	b, err := os.ReadFile(sigilBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	s := newServer(t, filepath.Join(base, "server"))
	s.start()
	a := newAgent(t, s, filepath.Join(base, "agent"))
	for _, d := range []string{base, a.dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	a.start()
	adminSock := filepath.Join(a.dir, "private", "admin.sock")

	uid, gid := os.Geteuid(), os.Getegid()
	td := "spiffe://" + trustDomain
	create := func(id, parent string, sels ...string) string {
		t.Helper()
		args := []string{"entry", "create", "-spiffe-id", td + id, "-parent-id", parent, "-output", "json"}
		for _, s := range sels {
			args = append(args, "-selector", s)
		}
		var resp struct {
			Results []struct {
				Entry struct {
					ID string `json:"id"`
				} `json:"entry"`
			} `json:"results"`
		}
		out := s.cli(args...)
		if err := json.Unmarshal([]byte(out), &resp); err != nil || len(resp.Results) != 1 || resp.Results[0].Entry.ID == "" {
			t.Fatalf("entry create %s: %q: %v", id, out, err)
		}
		return resp.Results[0].Entry.ID
	}
	uidSel := fmt.Sprintf("unix:uid:%d", uid)
	lacking := fmt.Sprintf("unix:gid:%d", gid+4242)
	matchID := create("/explain/match", a.id, uidSel)
	nearID := create("/explain/near", a.id, uidSel, lacking)
	elsewhereID := create("/explain/elsewhere", td+"/sigil/agent/join_token/another-node", uidSel)

	pid := strconv.Itoa(os.Getpid())
	explain := func(args ...string) (string, error) {
		return sigilErr(append([]string{"workload", "explain", "-pid", pid, "-admin-socket", adminSock}, args...)...)
	}
	// The agent syncs the entries and mints the matched one's SVID.
	var text string
	eventually.NoError(t, 60*time.Second, func() error {
		out, err := explain()
		if err != nil {
			return fmt.Errorf("explain: %v: %s", err, out)
		}
		text = out
		if !strings.Contains(out, "SVID cached") || !strings.Contains(out, nearID) {
			return fmt.Errorf("entries not synced and minted yet:\n%s", out)
		}
		return nil
	})
	t.Logf("sigil workload explain -pid %s:\n%s", pid, text)
	for _, want := range []string{
		"Process " + pid + " (uid " + strconv.Itoa(uid),
		"Verdict: the Workload API serves 1 identity: " + td + "/explain/match",
		"unix       " + uidSel,
		fmt.Sprintf("unix:gid:%d", gid),
		td + "/explain/match  entry " + matchID,
		td + "/explain/near  entry " + nearID + "\n    lacks: " + lacking + "\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("explain output lacks %q", want)
		}
	}
	if strings.Contains(text, "/explain/elsewhere") {
		t.Error("explain output lists an entry parented to another agent")
	}

	out, err := explain("-output", "json")
	if err != nil {
		t.Fatalf("explain -output json: %v: %s", err, out)
	}
	var resp struct {
		Pid       int  `json:"pid"`
		Attested  bool `json:"attested"`
		Attestors []struct {
			Name      string `json:"name"`
			Selectors []struct {
				Type, Value string
			} `json:"selectors"`
		} `json:"attestors"`
		Matched []struct {
			EntryID    string `json:"entry_id"`
			SvidCached bool   `json:"svid_cached"`
		} `json:"matched"`
		NearMisses []struct {
			EntryID string `json:"entry_id"`
			Missing []struct {
				Type, Value string
			} `json:"missing"`
		} `json:"near_misses"`
	}
	if err := json.Unmarshal([]byte(out), &resp); err != nil {
		t.Fatalf("explain json %q: %v", out, err)
	}
	if resp.Pid != os.Getpid() || !resp.Attested || len(resp.Attestors) != 1 || resp.Attestors[0].Name != "unix" || len(resp.Attestors[0].Selectors) == 0 {
		t.Errorf("explain json: %s", out)
	}
	if len(resp.Matched) != 1 || resp.Matched[0].EntryID != matchID || !resp.Matched[0].SvidCached {
		t.Errorf("explain json matched: %+v, want %s with its SVID cached", resp.Matched, matchID)
	}
	if len(resp.NearMisses) != 1 || resp.NearMisses[0].EntryID != nearID || len(resp.NearMisses[0].Missing) != 1 ||
		resp.NearMisses[0].Missing[0].Type+":"+resp.NearMisses[0].Missing[0].Value != lacking {
		t.Errorf("explain json near misses: %+v, want %s lacking %s", resp.NearMisses, nearID, lacking)
	}

	// -entry answers for one entry: what it lacks, or that this agent
	// does not hold it.
	for id, want := range map[string]string{
		nearID:      "Entry " + nearID + ":\n  " + td + "/explain/near does not match: the process lacks " + lacking + "\n",
		matchID:     td + "/explain/match matches: the Workload API serves it (valid)",
		elsewhereID: "Entry " + elsewhereID + ":\n  not held by this agent",
	} {
		out, err := explain("-entry", id)
		if err != nil || !strings.Contains(out, want) {
			t.Errorf("explain -entry %s: %v: output lacks %q:\n%s", id, err, want, out)
		}
	}

	// A pid that does not exist is a clear error.
	if out, err := sigilErr("workload", "explain", "-pid", "999999999", "-admin-socket", adminSock); err == nil || !strings.Contains(out, "no process 999999999") {
		t.Errorf("explain of a missing pid: %v: %s", err, out)
	}

	// The admin socket is for root and the agent's user only.
	adminDir := filepath.Dir(adminSock)
	fi, err := os.Stat(adminDir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 || fi.Sys().(*syscall.Stat_t).Uid != uint32(uid) {
		t.Errorf("admin socket directory %s: mode %v owner %d, want 0700 owned by %d", adminDir, fi.Mode().Perm(), fi.Sys().(*syscall.Stat_t).Uid, uid)
	}
	if si, err := os.Stat(adminSock); err != nil || si.Mode().Perm()&0o077 != 0 {
		t.Errorf("admin socket %s: %v %v, want no access for group or others", adminSock, si.Mode(), err)
	}
	asNobody := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, setpriv, append([]string{"--reuid", "65534", "--regid", "65534", "--clear-groups"}, args...)...).CombinedOutput()
		return string(out), err
	}
	// Controls: the other uid can run the binary and list the agent's
	// directory, which holds the admin directory.
	if out, err := asNobody(bin, "version"); err != nil {
		t.Fatalf("control: uid 65534 cannot run %s: %v\n%s", bin, err, out)
	}
	if out, err := asNobody("/bin/ls", a.dir); err != nil || !strings.Contains(out, "private") {
		t.Fatalf("control: uid 65534 cannot list %s: %v\n%s", a.dir, err, out)
	}
	out, err = asNobody(bin, "workload", "explain", "-pid", pid, "-admin-socket", adminSock)
	t.Logf("as uid 65534: sigil workload explain: %v: %s", err, strings.TrimSpace(out))
	if err == nil || !strings.Contains(strings.ToLower(out), "permission denied") {
		t.Errorf("uid 65534 explained pid %s: %v: %s", pid, err, out)
	}
	if strings.Contains(out, "/explain/") {
		t.Errorf("uid 65534 learned entries: %s", out)
	}
}
