package golden

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDiffNamesDifferingLines(t *testing.T) {
	d := Diff("a\nb\nc", "a\nx\nc\nd")
	for _, want := range []string{`line 2:`, `want "b"`, `got  "x"`, `line 4:`, `got  "d"`} {
		if !strings.Contains(d, want) {
			t.Errorf("Diff output lacks %q:\n%s", want, d)
		}
	}
	if strings.Contains(d, "line 1:") || strings.Contains(d, "line 3:") {
		t.Errorf("Diff lists equal lines:\n%s", d)
	}
	if Diff("same\n", "same\n") != "" {
		t.Error("Diff of equal texts is not empty")
	}
}

func TestScriptsRunsEachScriptAgainstItsGolden(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{"one.script": "1", "one.golden": "out:1", "two.script": "2", "two.golden": "out:2"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var ran []string
	Scripts(t, filepath.Join(dir, "*.script"), func(t *testing.T, path string) string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		ran = append(ran, filepath.Base(path))
		return "out:" + string(b)
	})
	if strings.Join(ran, ",") != "one.script,two.script" {
		t.Errorf("ran %v, want both scripts in order", ran)
	}
}
