package prometheus_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/sigil-id/sigil/health"
)

// promtool returns the path of promtool, failing the test (never skipping
// it) when it is not installed.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not found: install Debian's prometheus package (apt-get install -y --no-install-recommends prometheus)")
	}
	return p
}

func runPromtool(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(promtool(t), args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

var alertLine = regexp.MustCompile(`(?m)^\s*- alert: (\S+)\s*$`)

// TestCheckRules runs promtool check rules (syntax, PromQL, templates and
// the duplicate-rule lint) and checks it found every rule of the file.
func TestCheckRules(t *testing.T) {
	out := runPromtool(t, "check", "rules", "sigil-rules.yml")
	n := len(alertLine.FindAllString(read(t, "sigil-rules.yml"), -1))
	if n == 0 {
		t.Fatal("sigil-rules.yml has no alert rule")
	}
	if want := "SUCCESS: " + strconv.Itoa(n) + " rules found"; !strings.Contains(out, want) {
		t.Fatalf("promtool check rules: want %q in\n%s", want, out)
	}
}

// TestRuleUnitTests runs the promtool unit tests of the rules.
func TestRuleUnitTests(t *testing.T) {
	out := runPromtool(t, "test", "rules", "sigil-rules.test.yml")
	if !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool test rules:\n%s", out)
	}
}

// TestCheckConfig checks the sample scrape configuration (and the rule
// file it loads).
func TestCheckConfig(t *testing.T) {
	runPromtool(t, "check", "config", "prometheus.yml")
	cfg := read(t, "prometheus.yml")
	for _, job := range []string{"job_name: sigil-server", "job_name: sigil-agent"} {
		if !strings.Contains(cfg, job) {
			t.Errorf("prometheus.yml has no %q: the rules and dashboards expect it", job)
		}
	}
}

// TestRulesMatchBuiltinAlerts checks the rules name every built-in alert,
// give each rule a severity, a summary and a description, and that the
// unit tests check every alert name both firing and not firing.
func TestRulesMatchBuiltinAlerts(t *testing.T) {
	rules := read(t, "sigil-rules.yml")
	tests := read(t, "sigil-rules.test.yml")
	names := map[string]bool{}
	for _, m := range alertLine.FindAllStringSubmatch(rules, -1) {
		names[m[1]] = true
	}
	for _, n := range []string{
		health.NameSVIDNotRenewed, health.NameSVIDExpiringSoon, health.NameAgentNotReporting,
		health.NameAuthorityNoSuccessor, health.NameFederatedBundleStale, health.NameClusterNoLeader,
		health.NameClusterMemberUnreachable, health.NameAttestationFailureBurst, health.NameSigningFailureBurst,
		health.NameKeyManagerFailing,
	} {
		if !names[n] {
			t.Errorf("sigil-rules.yml has no rule for the built-in alert %s", n)
		}
	}

	// Each rule block: from one "- alert:" to the next.
	idx := alertLine.FindAllStringIndex(rules, -1)
	for i, loc := range idx {
		end := len(rules)
		if i+1 < len(idx) {
			end = idx[i+1][0]
		}
		block := rules[loc[0]:end]
		name := alertLine.FindStringSubmatch(block)[1]
		for _, want := range []*regexp.Regexp{
			regexp.MustCompile(`(?m)^\s+severity: (warning|critical)\s*$`),
			regexp.MustCompile(`(?m)^\s+summary: "[^"]`),
			regexp.MustCompile(`(?m)^\s+description: "[^"]`),
			regexp.MustCompile(`(?m)^\s+expr: \S`),
		} {
			if !want.MatchString(block) {
				t.Errorf("rule %d (%s) has no line matching %s", i, name, want)
			}
		}
	}

	// Test cases per alert name: one with expected alerts, one without.
	caseRe := regexp.MustCompile(`(?m)^\s+alertname: (\S+)\s*\n\s+exp_alerts:( \[\])?`)
	firing, quiet := map[string]bool{}, map[string]bool{}
	for _, m := range caseRe.FindAllStringSubmatch(tests, -1) {
		if m[2] == "" {
			firing[m[1]] = true
		} else {
			quiet[m[1]] = true
		}
	}
	for n := range names {
		if !firing[n] {
			t.Errorf("sigil-rules.test.yml never expects %s to fire", n)
		}
		if !quiet[n] {
			t.Errorf("sigil-rules.test.yml never expects %s not to fire", n)
		}
	}
}

var metricName = regexp.MustCompile(`\bsigil_[a-z0-9_]+`)

// TestRuleMetricsDocumented checks every Sigil metric the rules use is
// documented in docs/metrics.md, so a renamed metric breaks this test
// rather than silently the rules.
func TestRuleMetricsDocumented(t *testing.T) {
	docs := read(t, filepath.Join("..", "..", "docs", "metrics.md"))
	used := metricName.FindAllString(read(t, "sigil-rules.yml"), -1)
	if len(used) == 0 {
		t.Fatal("no sigil_ metric in sigil-rules.yml")
	}
	for _, m := range used {
		base := m
		for _, suf := range []string{"_bucket", "_count", "_sum"} {
			if s, ok := strings.CutSuffix(m, suf); ok && strings.Contains(docs, "`"+s+"`") {
				base = s
			}
		}
		if !strings.Contains(docs, "`"+base+"`") {
			t.Errorf("sigil-rules.yml uses %s, which docs/metrics.md does not document", m)
		}
	}
}
