// Package golden runs data-driven scenario tests: each script file in a
// testdata directory is run by a test-supplied function that returns the
// scenario's printed output, which must equal the golden file beside the
// script (name.script → name.golden). Run the tests with -update to
// rewrite the golden files, then read the difference before committing it.
package golden

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files of scenario tests")

// Scripts runs run for every file matching glob (for example
// "testdata/rotation/*.script"), each as a subtest named after the file,
// and compares its output with the golden file. It fails the test if no
// file matches.
func Scripts(t *testing.T, glob string, run func(t *testing.T, path string) string) {
	t.Helper()
	scripts, err := filepath.Glob(glob)
	if err != nil || len(scripts) == 0 {
		t.Fatalf("golden: no scenario scripts match %s (%v)", glob, err)
	}
	for _, path := range scripts {
		name := strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
		t.Run(name, func(t *testing.T) {
			Check(t, strings.TrimSuffix(path, filepath.Ext(path))+".golden", run(t, path))
		})
	}
}

// Check compares got with the golden file at path, or rewrites the file
// under -update.
func Check(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("golden: %v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("golden: output differs from %s (run with -update after checking):\n%s", path, Diff(string(want), got))
	}
}

// Diff lists, line by line, where got differs from want.
func Diff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for i := 0; i < max(len(w), len(g)); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			fmt.Fprintf(&b, "line %d:\n  want %q\n  got  %q\n", i+1, wl, gl)
		}
	}
	return b.String()
}
