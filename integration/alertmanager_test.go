package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigil-id/sigil/internal/eventually"
)

// alertmanagerBin is Debian's prometheus-alertmanager (upstream names it
// alertmanager).
func alertmanagerBin(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"prometheus-alertmanager", "alertmanager"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("alertmanager not found: install Debian's prometheus-alertmanager package (.ci/run does)")
	return ""
}

// alertmanager is a real Alertmanager listening on loopback, with
// clustering off (its gossip port would otherwise listen on every
// address).
type alertmanager struct {
	t   *testing.T
	url string
}

func startAlertmanager(t *testing.T, dir string) *alertmanager {
	t.Helper()
	bin := alertmanagerBin(t)
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "alertmanager.yml")
	// One receiver with no integration: alerts are kept and shown by the
	// API, nothing is sent anywhere. resolve_timeout is long so that a
	// firing alert stays firing only because Sigil repeats it, and
	// disappears only because Sigil resolves it.
	if err := os.WriteFile(cfg, []byte(`global:
  resolve_timeout: 10m
route:
  receiver: hold
  group_wait: 1s
receivers:
  - name: hold
`), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	p := startProc(t, "alertmanager", filepath.Join(dir, "alertmanager.log"), nil, bin,
		"--config.file="+cfg,
		"--storage.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr,
		"--cluster.listen-address=",
	)
	am := &alertmanager{t: t, url: "http://" + addr}
	waitReady(t, p, am.url+"/-/ready")
	return am
}

// amAlert is the part of an Alertmanager API v2 alert the test reads.
type amAlert struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	StartsAt    time.Time         `json:"startsAt"`
	EndsAt      time.Time         `json:"endsAt"`
	Status      struct {
		State string `json:"state"`
	} `json:"status"`
}

// alerts returns the alerts Alertmanager holds as active (unresolved).
func (am *alertmanager) alerts() ([]amAlert, error) {
	resp, err := http.Get(am.url + "/api/v2/alerts")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /api/v2/alerts: %s: %s", resp.Status, b)
	}
	var out []amAlert
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("GET /api/v2/alerts: %w", err)
	}
	return out, nil
}

// find returns the alert with the given dedupe key.
func (am *alertmanager) find(key string) (amAlert, bool, error) {
	as, err := am.alerts()
	if err != nil {
		return amAlert{}, false, err
	}
	for _, a := range as {
		if a.Labels["dedupe_key"] == key {
			return a, true, nil
		}
	}
	return amAlert{}, false, nil
}

// TestAlertmanagerAgentCutOff: a real server sends its rotation-health
// alerts to a real Alertmanager. An agent reaches the server through a
// proxy; when the proxy cuts it off, Alertmanager gets a firing
// SigilAgentNotReporting alert naming the agent and the SPIFFE ID at
// risk, before that SVID (or the agent's own) expires; when the agent
// reaches its server again, Sigil resolves the alert and Alertmanager
// no longer lists it.
func TestAlertmanagerAgentCutOff(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	root := t.TempDir()
	am := startAlertmanager(t, filepath.Join(root, "am"))
	s := newServerWith(t, filepath.Join(root, "server"), fmt.Sprintf(`
  x509_svid_ttl  = "3m"
  agent_svid_ttl = "5m"
  plugins {
    node_attestor "join_token" {}
    key_manager "disk" {}
    notifier "alertmanager" {
      url             = %q
      repeat_interval = "5s"
    }
  }
  alerts {
    evaluate_interval = "1s"
    report_interval   = "5s"
    report_timeout    = "12s"
  }`, am.url))
	s.start()

	// The agent talks to its server only through the proxy.
	proxy := newFaultProxy(t, s.addr)
	a := newAgent(t, s, filepath.Join(root, "agent"))
	b, err := os.ReadFile(a.config)
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.Replace(string(b), fmt.Sprintf("%q", s.addr), fmt.Sprintf("%q", proxy.addr()), 1)
	if err := os.WriteFile(a.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	a.start()

	want := "spiffe://" + trustDomain + "/alerts/web"
	s.cli("entry", "create", "-spiffe-id", want, "-parent-id", a.id, "-selector", uidSelector(t))
	xc := fetchID(t, a.socket, want)
	var notAfter time.Time
	for _, sv := range xc.SVIDs {
		if sv.ID.String() == want {
			notAfter = sv.Certificates[0].NotAfter
		}
	}

	key := "agent_not_reporting/" + a.id
	// While the agent reports, nothing fires for it.
	time.Sleep(14 * time.Second) // > report_timeout: a missing report would have fired by now
	// A healthy cluster raises nothing at all (no false alarm from the
	// default thresholds on a fresh CA or on 3-minute SVIDs).
	if as, err := am.alerts(); err != nil || len(as) != 0 {
		t.Fatalf("before the cut: Alertmanager holds %d alerts (%+v), err %v; want none", len(as), as, err)
	}

	cutAt := time.Now()
	proxy.isolate()
	var fired amAlert
	eventually.NoError(t, 60*time.Second, func() error {
		al, ok, err := am.find(key)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("alert %s not in Alertmanager yet", key)
		}
		fired = al
		return nil
	})
	firedAt := time.Now()
	t.Logf("SigilAgentNotReporting reached Alertmanager %v after the cut; the SVID expires %v after that",
		firedAt.Sub(cutAt).Round(time.Millisecond), notAfter.Sub(firedAt).Round(time.Second))
	if !firedAt.Before(notAfter) {
		t.Fatalf("the alert came at %v, after the SVID expired at %v", firedAt, notAfter)
	}
	if fired.Labels["alertname"] != "SigilAgentNotReporting" || fired.Labels["severity"] == "" {
		t.Errorf("labels %v: want alertname SigilAgentNotReporting and a severity", fired.Labels)
	}
	if fired.Annotations["agent_id"] != a.id {
		t.Errorf("annotation agent_id = %q, want %q", fired.Annotations["agent_id"], a.id)
	}
	if !strings.Contains(fired.Annotations["spiffe_ids"], want) {
		t.Errorf("annotation spiffe_ids = %q, want it to name %s", fired.Annotations["spiffe_ids"], want)
	}
	if fired.Annotations["summary"] == "" || fired.StartsAt.IsZero() {
		t.Errorf("alert without summary or startsAt: %+v", fired)
	}
	// Every server lists it too.
	if out := s.cli("alert", "list"); !strings.Contains(out, "SigilAgentNotReporting") || !strings.Contains(out, a.id) {
		t.Errorf("sigil alert list does not show the alert:\n%s", out)
	}

	proxy.heal()
	eventually.NoError(t, 90*time.Second, func() error {
		al, ok, err := am.find(key)
		if err != nil {
			return err
		}
		if ok {
			return fmt.Errorf("alert %s still active in Alertmanager (endsAt %v)", key, al.EndsAt)
		}
		return nil
	})
	if out := s.cli("alert", "list"); strings.Contains(out, key) || strings.Contains(out, "SigilAgentNotReporting") {
		t.Errorf("sigil alert list still shows the alert after it resolved:\n%s", out)
	}
	// The agent kept serving the workload throughout.
	fetchID(t, a.socket, want)
}
