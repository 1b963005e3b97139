package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigil-id/sigil/internal/eventually"
)

// TestRemoteAdmin: a server with admin_address serves the admin API on
// TCP with mutual TLS. `sigil entry create -server-address ...
// -workload-socket <agent's socket>` gets the CLI's own SVID from a real
// agent (an entry for this test's uid) and is refused while that entry is
// not marked admin; once it is, the same command creates the entry, and
// the server's audit records name the caller's SPIFFE ID.
func TestRemoteAdmin(t *testing.T) {
	dir := t.TempDir()
	s := newServer(t, filepath.Join(dir, "server"))
	adminAddr := freeAddr(t)
	cfg, err := os.ReadFile(s.config)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.TrimSuffix(strings.TrimSpace(string(cfg)), "}")
	text += fmt.Sprintf("  admin_address  = %q\n  admin_ids      = [\"spiffe://%s/ops/alice\"]\n}\n", adminAddr, trustDomain)
	if err := os.WriteFile(s.config, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	s.start()
	a := newAgent(t, s, filepath.Join(dir, "agent"))
	a.start()

	td := "spiffe://" + trustDomain
	callerID := td + "/ops/ci"
	var created struct {
		Results []struct {
			Entry struct {
				ID string `json:"id"`
			} `json:"entry"`
		} `json:"results"`
	}
	out := s.cli("entry", "create", "-spiffe-id", callerID, "-parent-id", a.id, "-selector", fmt.Sprintf("unix:uid:%d", os.Getuid()), "-output", "json")
	if err := json.Unmarshal([]byte(out), &created); err != nil || len(created.Results) != 1 || created.Results[0].Entry.ID == "" {
		t.Fatalf("entry create: %q: %v", out, err)
	}
	callerEntry := created.Results[0].Entry.ID

	remote := func(args ...string) (string, error) {
		return sigilErr(append(args, "-server-address", adminAddr, "-workload-socket", a.socket)...)
	}
	target := td + "/remote/web"
	createTarget := func() (string, error) {
		return remote("entry", "create", "-spiffe-id", target, "-parent-id", a.id, "-selector", "unix:uid:4242")
	}
	// Not admin yet: refused by the server, naming the caller.
	eventually.NoError(t, 60*time.Second, func() error {
		out, err := createTarget()
		if err == nil {
			return eventually.Stop(fmt.Errorf("created by a caller that is not an admin: %s", out))
		}
		if !strings.Contains(out, "PermissionDenied") || !strings.Contains(out, callerID+" is not an admin") {
			return fmt.Errorf("not refused as a non-admin yet: %s", out)
		}
		return nil
	})
	if list := s.cli("entry", "list", "-spiffe-id", target); strings.Contains(list, target) {
		t.Fatalf("the refused create wrote an entry:\n%s", list)
	}

	// Marked admin: the same command creates the entry.
	s.cli("entry", "update", "-id", callerEntry, "-admin")
	out, err = createTarget()
	if err != nil {
		t.Fatalf("create over TCP as an admin: %v\n%s", err, out)
	}
	if !strings.Contains(out, target) {
		t.Errorf("create output lacks %s:\n%s", target, out)
	}
	if list := s.cli("entry", "list", "-spiffe-id", target); !strings.Contains(list, target) {
		t.Fatalf("entry not on the server:\n%s", list)
	}
	// A read over TCP works too.
	if out, err := remote("entry", "list", "-spiffe-id", target); err != nil || !strings.Contains(out, target) {
		t.Errorf("entry list over TCP: %v\n%s", err, out)
	}

	// The audit records in the server's log name the caller.
	logText, err := os.ReadFile(s.p.log)
	if err != nil {
		t.Fatal(err)
	}
	var createdRec, deniedRec, socketRec bool
	for _, line := range strings.Split(string(logText), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil {
			continue
		}
		switch {
		case rec["audit"] == "entry_created" && rec["who"] == callerID && rec["transport"] == "tcp" && rec["spiffe_id"] == target:
			createdRec = true
		case rec["audit"] == "admin_call" && rec["who"] == callerID && rec["outcome"] == "denied":
			deniedRec = true
		case rec["audit"] == "entry_created" && rec["who"] == "admin" && rec["transport"] == "unix" && rec["caller_uid"] == float64(os.Getuid()):
			socketRec = true
		}
	}
	if !createdRec || !deniedRec || !socketRec {
		t.Errorf("audit records: entry_created by %s over tcp %v, admin_call denied %v, entry_created over the socket with the uid %v; want all",
			callerID, createdRec, deniedRec, socketRec)
	}
}
