package cli

import (
	"strings"
	"testing"
)

// -downstream marks an entry downstream on create, update changes it
// (and only it), and show prints it.
func TestEntryDownstream(t *testing.T) {
	f := newFakeAdmin()
	sock := startFakeAdmin(t, f)
	code, out, errOut := run(t, "entry", "create", "-socket", sock, "-spiffe-id", "spiffe://example.org/downstream/s1",
		"-parent-id", agentID, "-selector", "unix:path:/usr/bin/sigil", "-downstream")
	if code != 0 {
		t.Fatalf("create: %d %q", code, errOut)
	}
	if !f.entries["e1"].Downstream || !strings.Contains(out, "Downstream       : true\n") {
		t.Fatalf("stored %v, output:\n%s", f.entries["e1"], out)
	}
	if code, out, _ := run(t, "entry", "show", "-socket", sock, "-id", "e1"); code != 0 || !strings.Contains(out, "Downstream       : true") {
		t.Errorf("show: %d\n%s", code, out)
	}
	if code, _, errOut := run(t, "entry", "update", "-socket", sock, "-id", "e1", "-downstream=false"); code != 0 || f.entries["e1"].Downstream {
		t.Fatalf("update -downstream=false: %d %q %v", code, errOut, f.entries["e1"])
	}
	if f.entries["e1"].SpiffeId != "spiffe://example.org/downstream/s1" || len(f.entries["e1"].Selectors) != 1 {
		t.Errorf("update changed other fields: %v", f.entries["e1"])
	}
	if code, out, _ := run(t, "entry", "show", "-socket", sock, "-id", "e1"); code != 0 || strings.Contains(out, "Downstream") {
		t.Errorf("show of a plain entry: %d\n%s", code, out)
	}
	// An entry created without the flag is not downstream.
	if code, _, errOut := run(t, "entry", "create", "-socket", sock, "-spiffe-id", "spiffe://example.org/web", "-parent-id", agentID, "-selector", "unix:uid:1"); code != 0 || f.entries["e2"].Downstream {
		t.Fatalf("create without -downstream: %d %q %v", code, errOut, f.entries["e2"])
	}
	if code, _, errOut := run(t, "entry", "create", "-socket", sock, "-data", "x.json", "-downstream"); code != ExitUsage || !strings.Contains(errOut, "-data and -downstream are mutually exclusive") {
		t.Errorf("-data with -downstream: %d %q", code, errOut)
	}
}
