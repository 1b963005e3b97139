package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/sigil-id/sigil/internal/eventually"
)

// prometheusBin returns the path of Debian's prometheus binary, failing
// the test (never skipping it) when it is not installed.
func prometheusBin(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatal("prometheus not found: install Debian's prometheus package (apt-get install -y --no-install-recommends prometheus)")
	}
	return p
}

// promServer is a running prometheus process and its HTTP API.
type promServer struct {
	t    *testing.T
	base string
	p    *proc
}

// startPrometheus runs prometheus on a loopback port with a storage
// directory in a temporary directory, scraping the given jobs every second
// and evaluating ruleFile every second. The process is killed when the
// test ends.
func startPrometheus(t *testing.T, ruleFile string, jobs map[string]string) *promServer {
	t.Helper()
	bin := prometheusBin(t)
	dir := t.TempDir()
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nrule_files:\n  - %q\nscrape_configs:\n", ruleFile)
	names := make([]string, 0, len(jobs))
	for n := range jobs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(&cfg, "  - job_name: %q\n    static_configs:\n      - targets: [%q]\n", n, jobs[n])
	}
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	ps := &promServer{t: t, base: "http://" + addr}
	ps.p = startProc(t, "prometheus", filepath.Join(dir, "prometheus.log"), nil, bin,
		"--config.file="+cfgPath,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr,
		"--log.level=warn",
	)
	waitReady(t, ps.p, ps.base+"/-/ready")
	return ps
}

// apiResponse is the envelope of Prometheus's HTTP API answers.
type apiResponse struct {
	Status    string          `json:"status"`
	Data      json.RawMessage `json:"data"`
	ErrorType string          `json:"errorType"`
	Error     string          `json:"error"`
	Warnings  []string        `json:"warnings"`
}

func (ps *promServer) get(path string, q url.Values) (json.RawMessage, error) {
	u := ps.base + path
	if q != nil {
		u += "?" + q.Encode()
	}
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(u)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	var r apiResponse
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("GET %s: %s: %q", path, resp.Status, b)
	}
	if r.Status != "success" || resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s: %s", path, resp.Status, r.ErrorType, r.Error)
	}
	if len(r.Warnings) > 0 {
		return nil, fmt.Errorf("GET %s: warnings %q", path, r.Warnings)
	}
	return r.Data, nil
}

type sample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

// query evaluates expr now and returns its samples; a scalar or string
// result counts as one sample.
func (ps *promServer) query(expr string) ([]sample, error) {
	data, err := ps.get("/api/v1/query", url.Values{"query": {expr}})
	if err != nil {
		return nil, err
	}
	var res struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := json.Unmarshal(data, &res); err != nil {
		return nil, err
	}
	switch res.ResultType {
	case "vector":
		var v []sample
		err := json.Unmarshal(res.Result, &v)
		return v, err
	case "scalar", "string":
		return []sample{{}}, nil
	default:
		return nil, fmt.Errorf("query %q: result type %q", expr, res.ResultType)
	}
}

type promRule struct {
	Name      string `json:"name"`
	Query     string `json:"query"`
	Health    string `json:"health"`
	LastError string `json:"lastError"`
	State     string `json:"state"`
	Type      string `json:"type"`
}

func (ps *promServer) rules() ([]promRule, error) {
	data, err := ps.get("/api/v1/rules", nil)
	if err != nil {
		return nil, err
	}
	var res struct {
		Groups []struct {
			Rules []promRule `json:"rules"`
		} `json:"groups"`
	}
	if err := json.Unmarshal(data, &res); err != nil {
		return nil, err
	}
	var out []promRule
	for _, g := range res.Groups {
		out = append(out, g.Rules...)
	}
	return out, nil
}

// dashboardExprs returns every query of the Grafana dashboard at path
// (panels in rows included), $__rate_interval replaced by rate.
func dashboardExprs(t *testing.T, path, rate string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	type panel struct {
		Title   string `json:"title"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
		Panels []json.RawMessage `json:"panels"`
	}
	var d struct {
		Panels []json.RawMessage `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var out []string
	var walk func([]json.RawMessage)
	walk = func(ps []json.RawMessage) {
		for _, raw := range ps {
			var p panel
			if err := json.Unmarshal(raw, &p); err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			for _, tg := range p.Targets {
				if strings.TrimSpace(tg.Expr) == "" {
					t.Fatalf("%s: panel %q has a query without expr", path, p.Title)
				}
				out = append(out, strings.ReplaceAll(tg.Expr, "$__rate_interval", rate))
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	if len(out) == 0 {
		t.Fatalf("%s: no query", path)
	}
	return out
}

// TestPrometheusScrapesSigil runs Debian's prometheus against a real
// server and agent with the example rules loaded: both targets are up,
// every rule evaluates without error (and, the deployment being healthy,
// none is pending or firing), every rule and dashboard expression
// answers through the HTTP API without error, the key series carry the
// values a working deployment gives them, and once the server is stopped
// the agent's not-reporting rule goes pending.
func TestPrometheusScrapesSigil(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	root := t.TempDir()
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	ruleFile := filepath.Join(repo, "examples", "prometheus", "sigil-rules.yml")
	dashboards := []string{
		filepath.Join(repo, "examples", "grafana", "sigil-oncall.json"),
		filepath.Join(repo, "examples", "grafana", "sigil-capacity.json"),
	}
	prometheusBin(t) // fail before starting anything when it is missing

	s := newServer(t, filepath.Join(root, "server"))
	s.start()
	a := newAgent(t, s, filepath.Join(root, "agent"))
	a.start()

	// A workload fetches its SVID with go-spiffe: the server signs, the
	// agent caches it and counts Workload API calls.
	want := "spiffe://" + trustDomain + "/it/prometheus"
	createEntry(t, s, want, a.id, uidSelector(t))
	fetchID(t, a.socket, want)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+a.socket))
	if err != nil || svid.ID.String() != want {
		t.Fatalf("FetchX509SVID: %v, %v", svid, err)
	}

	ps := startPrometheus(t, ruleFile, map[string]string{"sigil-server": s.health, "sigil-agent": a.health})

	// Both targets up.
	eventually.NoError(t, 60*time.Second, func() error {
		data, err := ps.get("/api/v1/targets", url.Values{"state": {"active"}})
		if err != nil {
			return err
		}
		var res struct {
			ActiveTargets []struct {
				ScrapePool string `json:"scrapePool"`
				Health     string `json:"health"`
				LastError  string `json:"lastError"`
			} `json:"activeTargets"`
		}
		if err := json.Unmarshal(data, &res); err != nil {
			return err
		}
		up := map[string]bool{}
		for _, tg := range res.ActiveTargets {
			if tg.Health != "up" {
				return fmt.Errorf("target %s: %s %s", tg.ScrapePool, tg.Health, tg.LastError)
			}
			up[tg.ScrapePool] = true
		}
		if !up["sigil-server"] || !up["sigil-agent"] || len(res.ActiveTargets) != 2 {
			return fmt.Errorf("targets %+v, want sigil-server and sigil-agent up", res.ActiveTargets)
		}
		return nil
	})

	// The key series, with the values a working deployment gives them.
	key := []string{
		`sigil_server_svids_signed_total{type="x509",outcome="ok"} > 0`,
		`sigil_server_svid_sign_seconds_count{type="x509"} > 0`,
		`sigil_server_authority_expiry_seconds{kind="x509",state="active"} > 3600`,
		`sigil_server_authority_expiry_seconds{kind="jwt",state="active"} > 3600`,
		`sigil_server_authorities{kind="x509",state="active"} == 1`,
		`sigil_server_agents{state="active"} >= 1`,
		`sigil_server_agent_last_seen_age_seconds_count >= 1`,
		`sigil_server_sync_streams >= 1`,
		`sigil_server_sync_entries_pushed_total >= 1`,
		`sigil_server_node_attestations_total{outcome="accepted"} >= 1`,
		`sigil_raft_is_leader == 1`,
		`sigil_agent_svids_cached >= 1`,
		`sigil_agent_svids_minted_total >= 1`,
		`sigil_agent_svid_earliest_expiry_seconds > 600`,
		`sigil_agent_svid_expiry_seconds > 600`,
		`sigil_agent_server_connected == 1`,
		`sigil_agent_renewals_late == 0`,
		`sigil_agent_workload_api_calls_total{method="FetchX509SVID"} >= 1`,
		`sigil_agent_workload_api_seconds_count{method="FetchX509SVID"} >= 1`,
		`sigil_agent_svid_mint_failures_total{reason="denied"} == 0`,
	}
	eventually.NoError(t, 60*time.Second, func() error {
		var missing []string
		for _, q := range key {
			v, err := ps.query(q)
			if err != nil {
				return eventually.Stop(err)
			}
			if len(v) == 0 {
				missing = append(missing, q)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("no series for %q", missing)
		}
		return nil
	})

	// Every rule loaded (as many as the file has) and evaluated without
	// error.
	file, err := os.ReadFile(ruleFile)
	if err != nil {
		t.Fatal(err)
	}
	nRules := len(regexp.MustCompile(`(?m)^\s*- alert: `).FindAll(file, -1))
	var rules []promRule
	eventually.NoError(t, 60*time.Second, func() error {
		rules, err = ps.rules()
		if err != nil {
			return err
		}
		if len(rules) != nRules {
			return fmt.Errorf("prometheus loaded %d rules, the file has %d", len(rules), nRules)
		}
		for _, r := range rules {
			switch r.Health {
			case "ok":
			case "unknown":
				return fmt.Errorf("rule %s not evaluated yet", r.Name)
			default:
				return eventually.Stop(fmt.Errorf("rule %s (%s): health %s: %s", r.Name, r.Query, r.Health, r.LastError))
			}
		}
		return nil
	})
	// Healthy deployment: no Sigil alert pending or firing.
	for _, r := range rules {
		if r.State != "inactive" {
			t.Errorf("rule %s (%s) is %s on a healthy server and agent", r.Name, r.Query, r.State)
		}
	}

	// Every expression, rules and dashboards, through the query API.
	var exprs []string
	for _, r := range rules {
		exprs = append(exprs, r.Query)
	}
	for _, d := range dashboards {
		exprs = append(exprs, dashboardExprs(t, d, "1m")...)
	}
	nonEmpty := 0
	for _, e := range exprs {
		v, err := ps.query(e)
		if err != nil {
			t.Errorf("query %q: %v", e, err)
			continue
		}
		if len(v) > 0 {
			nonEmpty++
		}
	}
	t.Logf("%d rule and dashboard expressions queried (%d rules), %d with series", len(exprs), len(rules), nonEmpty)

	// The rules see a real failure: with the server stopped, the agent
	// loses its sync stream and SigilAgentNotReporting{signal="agent"}
	// becomes pending (it fires after its 2 minutes, not waited for here).
	s.p.stop()
	eventually.NoError(t, 60*time.Second, func() error {
		data, err := ps.get("/api/v1/alerts", nil)
		if err != nil {
			return err
		}
		var res struct {
			Alerts []struct {
				Labels map[string]string `json:"labels"`
				State  string            `json:"state"`
			} `json:"alerts"`
		}
		if err := json.Unmarshal(data, &res); err != nil {
			return eventually.Stop(err)
		}
		for _, al := range res.Alerts {
			l := al.Labels
			if l["alertname"] == "SigilAgentNotReporting" && l["signal"] == "agent" && l["instance"] == a.health && al.State == "pending" {
				return nil
			}
		}
		return fmt.Errorf("no pending SigilAgentNotReporting for the agent: alerts %+v", res.Alerts)
	})
}
