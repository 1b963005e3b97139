package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"sync"
)

// GoalKind says how a figure's goal is checked.
type GoalKind string

const (
	// GoalNone: no goal, or a goal this run does not measure (the goal text
	// is still shown; no pass/fail marker).
	GoalNone GoalKind = ""
	// GoalMinRatio: Ratio (Value / Limit, both from this run) must be at
	// least Goal.Bound.
	GoalMinRatio GoalKind = "min_ratio"
	// GoalMinValue: Value must be at least Goal.Bound (in Unit).
	GoalMinValue GoalKind = "min_value"
	// GoalMaxValue: Value must be at most Goal.Bound (in Unit).
	GoalMaxValue GoalKind = "max_value"
)

// Goal is a figure's target from issue 15.
type Goal struct {
	Text  string   `json:"text"`
	Kind  GoalKind `json:"kind,omitempty"`
	Bound float64  `json:"bound,omitempty"`
}

// Figure is one row of the summary: a value measured in this run, the
// machine's limit for it measured in the same run (nil: none), their
// ratio, the goal and SPIRE's reference number quoted in issue 15 (a
// fixed text, not measured). Value is nil for a SPIRE reference this run
// does not measure.
type Figure struct {
	Name  string   `json:"name"`
	Value *float64 `json:"value"`
	Unit  string   `json:"unit"`
	Limit *float64 `json:"limit"`
	Ratio *float64 `json:"ratio"`
	Goal  *Goal    `json:"goal"`
	SPIRE string   `json:"spire"`
	// Pass is set only where the goal is a ratio or a bound checked
	// against figures of this run.
	Pass *bool `json:"pass"`
}

// Report is the JSON document written by -json and read by -compare.
type Report struct {
	Schema  int      `json:"schema"`
	Machine string   `json:"machine"`
	Figures []Figure `json:"figures"`
}

// reportSchema is the version of Report's layout.
const reportSchema = 1

// newFigure builds a row: value, its limit (<= 0 or NaN: none), the goal
// (nil: none) and the SPIRE reference ("" shows as "—"). It computes the
// ratio and, where the goal can be checked with this run's figures, pass.
func newFigure(name string, value float64, unit string, limit float64, goal *Goal, spire string) Figure {
	f := Figure{Name: name, Unit: unit, Goal: goal, SPIRE: spire}
	if !math.IsNaN(value) && !math.IsInf(value, 0) {
		v := value
		f.Value = &v
	}
	if limit > 0 && !math.IsInf(limit, 0) {
		l := limit
		f.Limit = &l
		if f.Value != nil {
			r := *f.Value / l
			f.Ratio = &r
		}
	}
	if goal != nil && f.Value != nil {
		var pass bool
		switch goal.Kind {
		case GoalMinRatio:
			if f.Ratio == nil {
				return f
			}
			pass = *f.Ratio >= goal.Bound
		case GoalMinValue:
			pass = *f.Value >= goal.Bound
		case GoalMaxValue:
			pass = *f.Value <= goal.Bound
		default:
			return f
		}
		f.Pass = &pass
	}
	return f
}

// figures collects the rows of this run; the measurements add to it as
// they go and run prints it at the end.
var figures struct {
	mu   sync.Mutex
	rows []Figure
}

// record adds a row to this run's summary.
func record(f Figure) {
	figures.mu.Lock()
	defer figures.mu.Unlock()
	figures.rows = append(figures.rows, f)
}

// recorded is a copy of this run's rows.
func recorded() []Figure {
	figures.mu.Lock()
	defer figures.mu.Unlock()
	return append([]Figure(nil), figures.rows...)
}

// spireReferences are SPIRE 1.15.3's figures quoted in issue 15 that
// this run has no Sigil figure for: they appear as rows with no value,
// so the fixed column is complete.
func spireReferences(have []Figure) []Figure {
	refs := []Figure{
		newFigure("agent start -> first SVID, 1,000 entries", math.NaN(), "s", 0, &Goal{Text: "≤ 0.25 s"}, "7.4 s"),
		newFigure("fresh agent -> first SVID", math.NaN(), "s", 0, nil, "5.6–7.5 s"),
	}
	seen := map[string]bool{}
	for _, f := range have {
		seen[f.Name] = true
	}
	var out []Figure
	for _, r := range refs {
		if !seen[r.Name] {
			out = append(out, r)
		}
	}
	return out
}

// dash is what an empty cell shows.
const dash = "—"

// formatNumber prints v with precision fitting its size.
func formatNumber(v float64) string {
	a := math.Abs(v)
	switch {
	case a == 0:
		return "0"
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	case a >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

// cells is a row's text, column by column (see tableHeader).
func cells(f Figure) []string {
	c := []string{f.Name, dash, f.Unit, dash, dash, dash, f.SPIRE, ""}
	if f.Value != nil {
		c[1] = formatNumber(*f.Value)
	} else {
		c[1] = "not run"
	}
	if f.Limit != nil {
		c[3] = formatNumber(*f.Limit)
	}
	if f.Ratio != nil {
		c[4] = fmt.Sprintf("%.2f", *f.Ratio)
	}
	if f.Goal != nil && f.Goal.Text != "" {
		c[5] = f.Goal.Text
	}
	if c[6] == "" {
		c[6] = dash
	}
	if f.Pass != nil {
		if *f.Pass {
			c[7] = "PASS"
		} else {
			c[7] = "FAIL"
		}
	}
	return c
}

var tableHeader = []string{"figure", "value", "unit", "limit", "ratio", "goal", "SPIRE 1.15.3", ""}

// writeTable prints rows as an aligned table.
func writeTable(w io.Writer, rows []Figure) error {
	all := [][]string{tableHeader}
	for _, f := range rows {
		all = append(all, cells(f))
	}
	width := make([]int, len(tableHeader))
	for _, r := range all {
		for i, c := range r {
			width[i] = max(width[i], len([]rune(c)))
		}
	}
	var b strings.Builder
	for _, r := range all {
		for i, c := range r {
			pad := width[i] - len([]rune(c))
			// Numbers right-aligned, text left-aligned.
			if i == 1 || i == 3 || i == 4 {
				b.WriteString(strings.Repeat(" ", pad) + c)
			} else if i == len(r)-1 {
				b.WriteString(c)
			} else {
				b.WriteString(c + strings.Repeat(" ", pad))
			}
			if i < len(r)-1 {
				b.WriteString("  ")
			}
		}
		b.WriteString("\n")
	}
	_, err := io.WriteString(w, trimLines(b.String()))
	return err
}

// trimLines removes trailing spaces from every line.
func trimLines(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(l, " ")
	}
	return strings.Join(lines, "\n")
}

// writeReport writes rows as a Report to path.
func writeReport(path, machine string, rows []Figure) error {
	b, err := json.MarshalIndent(Report{Schema: reportSchema, Machine: machine, Figures: rows}, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// readReport reads a Report written by writeReport.
func readReport(path string) (Report, error) {
	var r Report
	b, err := os.ReadFile(path)
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("%s: %w", path, err)
	}
	if r.Schema != reportSchema {
		return r, fmt.Errorf("%s: schema %d, want %d", path, r.Schema, reportSchema)
	}
	return r, nil
}

// Change is one figure in two runs.
type Change struct {
	Name, Unit string
	Old, New   *float64
	// Delta is (New-Old)/Old; nil when either is missing or Old is 0.
	Delta *float64
	// OldRatio, NewRatio are the figure's ratios to its limit in each run:
	// on a shared machine the limits move with the load, the ratios less.
	OldRatio, NewRatio *float64
	// OldPass, NewPass are the goal markers of the two runs.
	OldPass, NewPass *bool
}

// compareReports pairs the figures of two runs by name, in the new run's
// order followed by those only in the old one.
func compareReports(old, new Report) []Change {
	byName := map[string]Figure{}
	for _, f := range old.Figures {
		byName[f.Name] = f
	}
	var out []Change
	seen := map[string]bool{}
	add := func(o, n *Figure, name, unit string) {
		c := Change{Name: name, Unit: unit}
		if o != nil {
			c.Old, c.OldRatio, c.OldPass = o.Value, o.Ratio, o.Pass
		}
		if n != nil {
			c.New, c.NewRatio, c.NewPass = n.Value, n.Ratio, n.Pass
		}
		if c.Old != nil && c.New != nil && *c.Old != 0 {
			d := (*c.New - *c.Old) / *c.Old
			c.Delta = &d
		}
		out = append(out, c)
	}
	for i := range new.Figures {
		n := &new.Figures[i]
		seen[n.Name] = true
		if o, ok := byName[n.Name]; ok {
			add(&o, n, n.Name, n.Unit)
		} else {
			add(nil, n, n.Name, n.Unit)
		}
	}
	for i := range old.Figures {
		o := &old.Figures[i]
		if !seen[o.Name] {
			add(o, nil, o.Name, o.Unit)
		}
	}
	return out
}

// writeComparison prints changes as a table: old, new, relative change,
// the ratios to the limits, and the goal markers when they differ.
func writeComparison(w io.Writer, changes []Change) error {
	rows := [][]string{{"figure", "unit", "old", "new", "change", "old ratio", "new ratio", ""}}
	ratio := func(v *float64) string {
		if v == nil {
			return dash
		}
		return fmt.Sprintf("%.2f", *v)
	}
	val := func(v *float64) string {
		if v == nil {
			return dash
		}
		return formatNumber(*v)
	}
	mark := func(p *bool) string {
		switch {
		case p == nil:
			return dash
		case *p:
			return "PASS"
		}
		return "FAIL"
	}
	for _, c := range changes {
		d := dash
		if c.Delta != nil {
			d = fmt.Sprintf("%+.1f%%", *c.Delta*100)
		}
		note := ""
		if mark(c.OldPass) != mark(c.NewPass) {
			note = mark(c.OldPass) + " -> " + mark(c.NewPass)
		}
		rows = append(rows, []string{c.Name, c.Unit, val(c.Old), val(c.New), d, ratio(c.OldRatio), ratio(c.NewRatio), note})
	}
	width := make([]int, len(rows[0]))
	for _, r := range rows {
		for i, c := range r {
			width[i] = max(width[i], len([]rune(c)))
		}
	}
	var b strings.Builder
	for _, r := range rows {
		for i, c := range r {
			pad := strings.Repeat(" ", width[i]-len([]rune(c)))
			if i >= 2 && i <= 6 {
				b.WriteString(pad + c)
			} else {
				b.WriteString(c + pad)
			}
			b.WriteString("  ")
		}
		b.WriteString("\n")
	}
	_, err := io.WriteString(w, trimLines(b.String()))
	return err
}

// compareFiles is the -compare mode: read two reports and print the change
// per figure.
func compareFiles(w io.Writer, oldPath, newPath string) error {
	o, err := readReport(oldPath)
	if err != nil {
		return err
	}
	n, err := readReport(newPath)
	if err != nil {
		return err
	}
	return writeComparison(w, compareReports(o, n))
}
