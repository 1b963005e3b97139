package grafana_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var dashboards = []string{"sigil-oncall.json", "sigil-capacity.json"}

type target struct {
	RefID      string          `json:"refId"`
	Expr       string          `json:"expr"`
	Datasource json.RawMessage `json:"datasource"`
}

type panel struct {
	ID          int                      `json:"id"`
	Type        string                   `json:"type"`
	Title       string                   `json:"title"`
	Description string                   `json:"description"`
	Datasource  json.RawMessage          `json:"datasource"`
	GridPos     struct{ H, W, X, Y int } `json:"gridPos"`
	Targets     []target                 `json:"targets"`
	Panels      []panel                  `json:"panels"`
}

type dashboard struct {
	Title         string `json:"title"`
	UID           string `json:"uid"`
	SchemaVersion int    `json:"schemaVersion"`
	Templating    struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query string `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

func load(t *testing.T, name string) dashboard {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	var d dashboard
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return d
}

// flatten returns the panels, those inside collapsed rows included.
func flatten(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, flatten(p.Panels)...)
	}
	return out
}

const dsRef = `{"type":"prometheus","uid":"${datasource}"}`

func compact(t *testing.T, raw json.RawMessage) string {
	t.Helper()
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return string(raw)
	}
	b, _ := json.Marshal(v)
	return string(b)
}

var variable = regexp.MustCompile(`\$\{?\w+`)

// TestDashboardStructure checks each dashboard is importable Grafana
// JSON: a schema version, a Prometheus data source variable used by every
// panel and query, unique panel ids, panels inside the 24-column grid,
// and a PromQL expression in every query of every panel (rows aside).
func TestDashboardStructure(t *testing.T) {
	uids := map[string]bool{}
	for _, name := range dashboards {
		d := load(t, name)
		if d.Title == "" || d.UID == "" || uids[d.UID] {
			t.Errorf("%s: title %q, uid %q (must be set and unique)", name, d.Title, d.UID)
		}
		uids[d.UID] = true
		if d.SchemaVersion < 36 {
			t.Errorf("%s: schemaVersion %d, want 36 or later", name, d.SchemaVersion)
		}
		hasDS := false
		for _, v := range d.Templating.List {
			if v.Name == "datasource" && v.Type == "datasource" && v.Query == "prometheus" {
				hasDS = true
			}
		}
		if !hasDS {
			t.Errorf("%s: no datasource variable of type prometheus", name)
		}
		ids := map[int]bool{}
		queries := 0
		for _, p := range flatten(d.Panels) {
			where := fmt.Sprintf("%s: panel %d %q", name, p.ID, p.Title)
			if ids[p.ID] {
				t.Errorf("%s: duplicate id", where)
			}
			ids[p.ID] = true
			if p.GridPos.W < 1 || p.GridPos.X+p.GridPos.W > 24 || p.GridPos.H < 1 {
				t.Errorf("%s: gridPos %+v outside the 24-column grid", where, p.GridPos)
			}
			if p.Type == "row" {
				continue
			}
			if p.Title == "" || p.Description == "" {
				t.Errorf("%s: needs a title and a description", where)
			}
			if got := compact(t, p.Datasource); got != dsRef {
				t.Errorf("%s: datasource %s, want %s", where, got, dsRef)
			}
			if len(p.Targets) == 0 {
				t.Errorf("%s: no query", where)
			}
			refs := map[string]bool{}
			for _, tg := range p.Targets {
				queries++
				if strings.TrimSpace(tg.Expr) == "" || tg.RefID == "" || refs[tg.RefID] {
					t.Errorf("%s: query %q: empty expr or missing/duplicate refId", where, tg.RefID)
				}
				refs[tg.RefID] = true
				if got := compact(t, tg.Datasource); got != dsRef {
					t.Errorf("%s: query %s datasource %s, want %s", where, tg.RefID, got, dsRef)
				}
				for _, v := range variable.FindAllString(tg.Expr, -1) {
					if v != "$__rate_interval" {
						t.Errorf("%s: query %s uses variable %s (only $__rate_interval is allowed: the integration test substitutes it)", where, tg.RefID, v)
					}
				}
			}
		}
		if queries == 0 {
			t.Errorf("%s: no query at all", name)
		}
	}
}

// TestDashboardQueriesParse parses every query with promtool (as recording
// rules, $__rate_interval replaced by 1m).
func TestDashboardQueriesParse(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not found: install Debian's prometheus package (apt-get install -y --no-install-recommends prometheus)")
	}
	var b strings.Builder
	b.WriteString("groups:\n  - name: dashboards\n    rules:\n")
	n := 0
	for _, name := range dashboards {
		for _, p := range flatten(load(t, name).Panels) {
			for _, tg := range p.Targets {
				n++
				q, _ := json.Marshal(strings.ReplaceAll(tg.Expr, "$__rate_interval", "1m"))
				fmt.Fprintf(&b, "      - record: sigil_dashboard_query_%d\n        expr: %s\n", n, q)
			}
		}
	}
	path := filepath.Join(t.TempDir(), "queries.yml")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(promtool, "check", "rules", "--lint=none", path).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules on the dashboards' queries: %v\n%s", err, out)
	}
	if want := fmt.Sprintf("SUCCESS: %d rules found", n); !strings.Contains(string(out), want) {
		t.Fatalf("want %q in\n%s", want, out)
	}
}

var metricName = regexp.MustCompile(`\bsigil_[a-z0-9_]+`)

// TestDashboardMetricsDocumented checks every Sigil metric the dashboards
// query is documented in docs/metrics.md.
func TestDashboardMetricsDocumented(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	docs := string(b)
	for _, name := range dashboards {
		for _, p := range flatten(load(t, name).Panels) {
			for _, tg := range p.Targets {
				for _, m := range metricName.FindAllString(tg.Expr, -1) {
					base := m
					for _, suf := range []string{"_bucket", "_count", "_sum"} {
						if s, ok := strings.CutSuffix(m, suf); ok && strings.Contains(docs, "`"+s+"`") {
							base = s
						}
					}
					if !strings.Contains(docs, "`"+base+"`") {
						t.Errorf("%s: panel %q queries %s, which docs/metrics.md does not document", name, p.Title, m)
					}
				}
			}
		}
	}
}
