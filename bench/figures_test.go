package main

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestNewFigureRatioAndPass(t *testing.T) {
	min75 := &Goal{Text: "≥ 0.75 of limit", Kind: GoalMinRatio, Bound: 0.75}
	cases := []struct {
		name         string
		value, limit float64
		goal         *Goal
		wantRatio    float64 // NaN: no ratio
		wantPass     *bool
	}{
		{"ratio above goal", 12000, 16000, min75, 0.75, ptr(true)},
		{"ratio below goal", 8000, 16000, min75, 0.5, ptr(false)},
		{"ratio goal without limit", 8000, 0, min75, math.NaN(), nil},
		{"max bound met", 0.4, 0, &Goal{Kind: GoalMaxValue, Bound: 0.5}, math.NaN(), ptr(true)},
		{"max bound missed", 0.9, 0, &Goal{Kind: GoalMaxValue, Bound: 0.5}, math.NaN(), ptr(false)},
		{"min bound missed", 5000, 16000, &Goal{Kind: GoalMinValue, Bound: 6000}, 5000.0 / 16000, ptr(false)},
		{"goal not checked", 3, 0, &Goal{Text: "≤ 4 KiB RSS"}, math.NaN(), nil},
		{"no goal", 3, 6, nil, 0.5, nil},
		{"not measured", math.NaN(), 6, &Goal{Kind: GoalMaxValue, Bound: 1}, math.NaN(), nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFigure(c.name, c.value, "/s", c.limit, c.goal, "")
			if math.IsNaN(c.value) != (f.Value == nil) {
				t.Fatalf("value %v for %v", f.Value, c.value)
			}
			if (c.limit > 0) != (f.Limit != nil) {
				t.Fatalf("limit %v for %v", f.Limit, c.limit)
			}
			switch {
			case math.IsNaN(c.wantRatio) && f.Ratio != nil:
				t.Fatalf("ratio %v, want none", *f.Ratio)
			case !math.IsNaN(c.wantRatio) && (f.Ratio == nil || math.Abs(*f.Ratio-c.wantRatio) > 1e-9):
				t.Fatalf("ratio %v, want %v", f.Ratio, c.wantRatio)
			}
			if (f.Pass == nil) != (c.wantPass == nil) || (f.Pass != nil && *f.Pass != *c.wantPass) {
				t.Fatalf("pass %v, want %v", f.Pass, c.wantPass)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func sampleRows() []Figure {
	return []Figure{
		newFigure("limit: raw verify + sign", 16000, "/s", 0, nil, ""),
		newFigure("X.509-SVIDs via node API batch", 12800, "/s", 16000, &Goal{Text: "≥ 0.75 of limit", Kind: GoalMinRatio, Bound: 0.75}, "~500/s end to end"),
		newFigure("cached fetch p99, deployed", 0.86, "ms", 0, &Goal{Text: "≤ 0.5 ms", Kind: GoalMaxValue, Bound: 0.5}, "2.17 ms"),
		newFigure("agent start -> first SVID", math.NaN(), "s", 0, &Goal{Text: "≤ 0.25 s"}, "7.4 s"),
	}
}

func TestWriteTable(t *testing.T) {
	var b bytes.Buffer
	if err := writeTable(&b, sampleRows()); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	if len(lines) != 5 {
		t.Fatalf("%d lines, want header + 4:\n%s", len(lines), b.String())
	}
	for _, want := range []struct {
		line  int
		parts []string
	}{
		{0, []string{"figure", "value", "limit", "ratio", "goal", "SPIRE"}},
		{2, []string{"X.509-SVIDs via node API batch", "12800", "16000", "0.80", "≥ 0.75 of limit", "~500/s end to end", "PASS"}},
		{3, []string{"cached fetch p99, deployed", "0.860", "ms", "≤ 0.5 ms", "2.17 ms", "FAIL"}},
		{4, []string{"not run", "≤ 0.25 s", "7.4 s"}},
	} {
		for _, p := range want.parts {
			if !strings.Contains(lines[want.line], p) {
				t.Errorf("line %d %q lacks %q", want.line, lines[want.line], p)
			}
		}
	}
	if strings.Contains(lines[1], "PASS") || strings.Contains(lines[1], "FAIL") || strings.Contains(lines[4], "PASS") || strings.Contains(lines[4], "FAIL") {
		t.Errorf("a marker where no goal is checked:\n%s", b.String())
	}
	// Columns are aligned: each row's unit starts at the rune offset of
	// the header's "unit".
	at := len([]rune(lines[0][:strings.Index(lines[0], "unit")]))
	for i, unit := range []string{"unit", "/s", "/s", "ms", "s"} {
		r := []rune(lines[i])
		if len(r) < at+len(unit) || string(r[at:at+len(unit)]) != unit {
			t.Errorf("line %d: unit column misaligned: %q", i, lines[i])
		}
	}
}

func TestReportRoundTripAndCompare(t *testing.T) {
	dir := t.TempDir()
	oldRows := sampleRows()
	newRows := []Figure{
		newFigure("X.509-SVIDs via node API batch", 11000, "/s", 16000, &Goal{Text: "≥ 0.75 of limit", Kind: GoalMinRatio, Bound: 0.75}, "~500/s end to end"),
		newFigure("cached fetch p99, deployed", 0.43, "ms", 0, &Goal{Text: "≤ 0.5 ms", Kind: GoalMaxValue, Bound: 0.5}, "2.17 ms"),
		newFigure("agent start -> first SVID", 0.3, "s", 0, &Goal{Text: "≤ 0.25 s"}, "7.4 s"),
		newFigure("new figure", 1, "s", 0, nil, ""),
	}
	oldPath, newPath := filepath.Join(dir, "old.json"), filepath.Join(dir, "new.json")
	if err := writeReport(oldPath, "m", oldRows); err != nil {
		t.Fatal(err)
	}
	if err := writeReport(newPath, "m", newRows); err != nil {
		t.Fatal(err)
	}
	o, err := readReport(oldPath)
	if err != nil {
		t.Fatal(err)
	}
	if len(o.Figures) != len(oldRows) || o.Schema != reportSchema || o.Machine != "m" {
		t.Fatalf("read back %+v", o)
	}
	for i, f := range o.Figures {
		w := oldRows[i]
		if f.Name != w.Name || f.Unit != w.Unit || f.SPIRE != w.SPIRE || !eqPtr(f.Value, w.Value) || !eqPtr(f.Limit, w.Limit) || !eqPtr(f.Ratio, w.Ratio) || !eqPtr(f.Pass, w.Pass) {
			t.Errorf("row %d read back as %+v, wrote %+v", i, f, w)
		}
	}
	n, err := readReport(newPath)
	if err != nil {
		t.Fatal(err)
	}
	changes := compareReports(o, n)
	byName := map[string]Change{}
	var order []string
	for _, c := range changes {
		byName[c.Name] = c
		order = append(order, c.Name)
	}
	if want := "X.509-SVIDs via node API batch,cached fetch p99, deployed,agent start -> first SVID,new figure,limit: raw verify + sign"; strings.Join(order, ",") != want {
		t.Fatalf("order %q, want %q", strings.Join(order, ","), want)
	}
	if d := byName["X.509-SVIDs via node API batch"].Delta; d == nil || math.Abs(*d-(11000.0-12800)/12800) > 1e-9 {
		t.Errorf("issuance delta %v", d)
	}
	if c := byName["agent start -> first SVID"]; c.Old != nil || c.Delta != nil || c.New == nil {
		t.Errorf("not run before, measured now: %+v", c)
	}
	if c := byName["limit: raw verify + sign"]; c.New != nil || c.Old == nil {
		t.Errorf("gone from the new run: %+v", c)
	}

	var b bytes.Buffer
	if err := compareFiles(&b, oldPath, newPath); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	if c := byName["X.509-SVIDs via node API batch"]; c.OldRatio == nil || c.NewRatio == nil || *c.OldRatio != 0.8 || *c.NewRatio != 11000.0/16000 {
		t.Errorf("issuance ratios %v -> %v, want 0.8 -> %v", c.OldRatio, c.NewRatio, 11000.0/16000)
	}
	for _, want := range []string{"-14.1%", "-50.0%", "PASS -> FAIL", "FAIL -> PASS", "0.80", "0.69"} {
		if !strings.Contains(out, want) {
			t.Errorf("comparison lacks %q:\n%s", want, out)
		}
	}

	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte(`{"schema": 99, "figures": []}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readReport(bad); err == nil {
		t.Error("a report of another schema was read")
	}
}

func TestSpireReferencesSkipsMeasured(t *testing.T) {
	all := spireReferences(nil)
	if len(all) == 0 {
		t.Fatal("no SPIRE reference rows")
	}
	for _, r := range all {
		if r.Value != nil || r.SPIRE == "" {
			t.Errorf("reference row %+v: want no value and a SPIRE figure", r)
		}
	}
	rest := spireReferences([]Figure{{Name: all[0].Name}})
	if len(rest) != len(all)-1 {
		t.Fatalf("%d rows with %q measured, want %d", len(rest), all[0].Name, len(all)-1)
	}
	for _, r := range rest {
		if r.Name == all[0].Name {
			t.Errorf("%q listed though measured", r.Name)
		}
	}
}

func eqPtr[T comparable](a, b *T) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}
