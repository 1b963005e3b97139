package integration

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigil-id/sigil/ca/keymanager/pkcs11/softhsmtest"
	"github.com/sigil-id/sigil/internal/eventually"
)

// TestKeyManagerFailingAlert runs a real server whose keys are in a
// SoftHSM2 token and pulls the token out from under it (its directory is
// moved away): the server's signatures fail (the agent's renewals of a
// 10s workload SVID), /metrics says sigil_server_key_manager_failing 1,
// and after key_manager_failing_after the leader raises
// SigilKeyManagerFailing (critical, with the token's error), which
// `sigil alert list` shows. The token put back and the server restarted
// on it, the server signs again and the alert is resolved.
func TestKeyManagerFailingAlert(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	tk, s, a, want := startHSMServer(t)
	away := pullToken(t, tk, s)

	// The token is put back; the server restarts on it and signs again.
	if err := os.Rename(away, tk.Dir); err != nil {
		t.Fatal(err)
	}
	a.p.stop()
	s.p.stop()
	s.start()
	a.start()
	fetchID(t, a.socket, want)
	eventually.NoError(t, 30*time.Second, func() error {
		if out := s.cli("alert", "list"); strings.Contains(out, "SigilKeyManagerFailing") {
			return fmt.Errorf("still firing:\n%s", out)
		}
		return nil
	})
	if g := failingGauge(t, s); g != "0" {
		t.Fatalf("sigil_server_key_manager_failing = %s after the restart, want 0", g)
	}
}

// TestKeyManagerFailingRecoversWithoutRestart is TestKeyManagerFailingAlert
// without the restart: the token put back under the running server, the
// server re-acquires its keys from the token (with backoff, at most a
// minute apart) and signs again: the workload gets a new SVID, signed
// after the token came back, the gauge falls to 0 and
// SigilKeyManagerFailing is resolved, by the same server process.
func TestKeyManagerFailingRecoversWithoutRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	tk, s, a, want := startHSMServer(t)
	away := pullToken(t, tk, s)
	pid := s.p.cmd.Process.Pid

	if err := os.Rename(away, tk.Dir); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	eventually.NoError(t, 90*time.Second, func() error {
		xc, err := fetchOnce(a.socket)
		if err != nil {
			return err
		}
		for _, svid := range xc.SVIDs {
			// The SVIDs live 10s: one that expires more than 10s after
			// the token came back was signed after it.
			if svid.ID.String() == want && svid.Certificates[0].NotAfter.After(back.Add(10*time.Second)) {
				return nil
			}
		}
		return errors.New("no SVID signed since the token came back yet")
	})
	t.Logf("the workload got an SVID signed %v after the token came back", time.Since(back).Round(time.Millisecond))
	eventually.NoError(t, 30*time.Second, func() error {
		if out := s.cli("alert", "list", "-output", "json"); strings.Contains(out, "SigilKeyManagerFailing") {
			return fmt.Errorf("still firing:\n%s", out)
		}
		return nil
	})
	if g := failingGauge(t, s); g != "0" {
		t.Fatalf("sigil_server_key_manager_failing = %s after the token came back, want 0", g)
	}
	if s.p.cmd.Process.Pid != pid {
		t.Fatal("the server was restarted")
	}
}

// startHSMServer starts a server whose keys are in a new SoftHSM2 token
// (10s X.509-SVIDs, alerts evaluated every second, SigilKeyManagerFailing
// after 3s) and an agent serving an entry's SVID to this process, and
// waits for that SVID.
func startHSMServer(t *testing.T) (*softhsmtest.Token, *server, *agent, string) {
	t.Helper()
	tk := softhsmtest.New(t, "sigil")
	tk.Setenv(t)
	t.Setenv("SIGIL_IT_HSM_PIN", tk.PIN)

	root := t.TempDir()
	s := newServerWith(t, filepath.Join(root, "server"), `
  x509_svid_ttl = "10s"
  alerts {
    evaluate_interval         = "1s"
    key_manager_failing_after = "3s"
  }`)
	appendConfig(t, s.config, fmt.Sprintf(`plugins {
  node_attestor "join_token" {}
  key_manager "pkcs11" {
    module      = %q
    token_label = %q
    pin_env     = "SIGIL_IT_HSM_PIN"
  }
}
`, tk.Module, tk.Label))
	s.start()
	a := newAgent(t, s, filepath.Join(root, "agent"))
	a.start()
	want := "spiffe://" + trustDomain + "/hsm/failing"
	createEntry(t, s, want, a.id, uidSelector(t))
	fetchID(t, a.socket, want)
	if g := failingGauge(t, s); g != "0" {
		t.Fatalf("sigil_server_key_manager_failing = %s with the token in place, want 0", g)
	}
	if out := s.cli("alert", "list"); strings.Contains(out, "SigilKeyManagerFailing") {
		t.Fatalf("the alert fires with the token in place:\n%s", out)
	}
	return tk, s, a, want
}

// pullToken pulls s's token out (moves its directory away, to the path
// it returns), waits for sigil_server_key_manager_failing 1 and for
// SigilKeyManagerFailing, and checks the alert.
func pullToken(t *testing.T, tk *softhsmtest.Token, s *server) string {
	t.Helper()
	// The token is pulled out.
	away := tk.Dir + ".away"
	if err := os.Rename(tk.Dir, away); err != nil {
		t.Fatal(err)
	}
	pulled := time.Now()
	eventually.NoError(t, 30*time.Second, func() error {
		if g := failingGauge(t, s); g != "1" {
			return fmt.Errorf("sigil_server_key_manager_failing = %s, want 1", g)
		}
		return nil
	})
	var listed string
	eventually.NoError(t, 30*time.Second, func() error {
		listed = s.cli("alert", "list", "-output", "json")
		if !strings.Contains(listed, "SigilKeyManagerFailing") {
			return errors.New("SigilKeyManagerFailing not listed yet")
		}
		return nil
	})
	t.Logf("SigilKeyManagerFailing listed %v after the token was pulled", time.Since(pulled).Round(time.Millisecond))
	if time.Since(pulled) < 3*time.Second {
		t.Errorf("the alert fired %v after the token was pulled, before key_manager_failing_after (3s)", time.Since(pulled))
	}
	for _, w := range []string{`"key_manager_failing/s1"`, `"critical"`, `"server": "s1"`, "CKR_"} {
		if !strings.Contains(listed, w) {
			t.Errorf("sigil alert list -output json lacks %s:\n%s", w, listed)
		}
	}
	return away
}

// failingGauge is the value of sigil_server_key_manager_failing on s's
// /metrics, as written there.
func failingGauge(t *testing.T, s *server) string {
	t.Helper()
	resp, err := http.Get("http://" + s.health + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "sigil_server_key_manager_failing "); ok {
			return v
		}
	}
	t.Fatalf("/metrics has no sigil_server_key_manager_failing:\n%s", b)
	return ""
}
