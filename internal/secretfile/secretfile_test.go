package secretfile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRead(t *testing.T) {
	dir := t.TempDir()
	const secret = "sigil-secret-c2VjcmV0"
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if s, err := Read(write("ok", "  "+secret+"\n", 0o600)); err != nil || s != secret {
		t.Fatalf("0600 file: %q, %v", s, err)
	}
	if s, err := Read(write("ro", secret, 0o400)); err != nil || s != secret {
		t.Fatalf("0400 file: %q, %v", s, err)
	}
	cases := map[string]struct{ path, want string }{
		"world readable": {write("open", secret, 0o644), "is accessible by group or others (mode 0644): a secret file must be readable only by its owner; run: chmod 600 "},
		"group readable": {write("group", secret, 0o640), "(mode 0640)"},
		"empty":          {write("empty", " \n", 0o600), "is empty"},
		"too large":      {write("big", strings.Repeat("s", MaxSize+1), 0o600), "is larger than 4096 bytes"},
		"directory":      {dir, "is not a regular file"},
		"missing":        {filepath.Join(dir, "none"), "none: no such file or directory"},
	}
	if os.Geteuid() == 0 {
		// Only root can give a file to another user; as root, a file of
		// any owner other than root must be refused.
		p := write("owned", secret, 0o600)
		if err := os.Chown(p, 12345, 12345); err != nil {
			t.Fatal(err)
		}
		cases["other owner"] = struct{ path, want string }{p, "is owned by uid 12345, not by the user running sigil (uid 0) or root; run: chown 0 "}
	}
	for name, c := range cases {
		s, err := Read(c.path)
		if err == nil || !strings.HasPrefix(err.Error(), c.path) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %q, %v; want an error starting with the path and containing %q", name, s, err, c.want)
			continue
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("%s: the error reveals the secret: %v", name, err)
		}
	}
}

// TestReadEnv: a secret from the environment is trimmed; an invalid
// name, an unset, empty or oversized variable are errors naming the
// variable and never showing the value.
func TestReadEnv(t *testing.T) {
	t.Setenv("SECRETFILE_TEST_SECRET", " v \n")
	if s, err := ReadEnv("SECRETFILE_TEST_SECRET"); err != nil || s != "v" {
		t.Errorf("set: %q %v", s, err)
	}
	t.Setenv("SECRETFILE_TEST_EMPTY", "  ")
	big := strings.Repeat("s", MaxSize+1)
	t.Setenv("SECRETFILE_TEST_BIG", big)
	for name, want := range map[string]string{
		"SECRETFILE_TEST_UNSET_VARIABLE": "environment variable SECRETFILE_TEST_UNSET_VARIABLE is not set or empty",
		"SECRETFILE_TEST_EMPTY":          "environment variable SECRETFILE_TEST_EMPTY is not set or empty",
		"SECRETFILE_TEST_BIG":            "environment variable SECRETFILE_TEST_BIG: longer than 4096 bytes",
		"A-B":                            `"A-B" is not an environment variable name`,
		"":                               `"" is not an environment variable name`,
	} {
		if _, err := ReadEnv(name); err == nil || err.Error() != want || strings.Contains(err.Error(), big) {
			t.Errorf("%q: %v, want %q", name, err, want)
		}
	}
}
