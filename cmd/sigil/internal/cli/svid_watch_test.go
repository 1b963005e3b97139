package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSVIDWatchRefusesBadFlags(t *testing.T) {
	tmp := t.TempDir()
	open := filepath.Join(tmp, "open")
	if err := os.Mkdir(open, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(open, 0o777)
	sock := filepath.Join(tmp, "missing.sock")
	dir := filepath.Join(tmp, "svid")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"svid", "watch", "-socket", sock}, "-write DIR is required"},
		{[]string{"svid", "watch", "-socket", sock, "-write", dir, "--", "x"}, "arguments after -- are for the -exec command"},
		{[]string{"svid", "watch", "-socket", sock, "-write", dir, "-exec", "/bin/true", "-signal", "HUP", "-pid-file", "p"}, "-exec cannot be combined with -signal or -pid-file"},
		{[]string{"svid", "watch", "-socket", sock, "-write", dir, "-signal", "HUP"}, "-signal and -pid-file go together"},
		{[]string{"svid", "watch", "-socket", sock, "-write", dir, "-stop-timeout", "0s", "-exec", "/bin/true"}, "-stop-timeout 0s must be positive"},
		{[]string{"svid", "watch", "-socket", sock, "-write", dir, "-spiffe-id", "nope"}, `invalid -spiffe-id "nope"`},
		{[]string{"svid", "watch", "-socket", sock, "-write", dir, "-jwt-audience", "a/b", "-jwt-audience", "a:b"}, "would both be written to jwt_a_b.token"},
		{[]string{"svid", "watch", "-socket", sock, "-write", dir}, "missing.sock: stat"},
	} {
		code, _, errOut := run(t, tc.args...)
		if code == 0 || !strings.Contains(errOut, tc.want) {
			t.Errorf("sigil %s: code %d, stderr %q; want an error with %q", strings.Join(tc.args, " "), code, errOut, tc.want)
		}
	}
	// A socket that exists, and a bad directory or signal.
	f := startFakeWorkloadAPI(t, &fakeWorkloadAPI{deny: true})
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"svid", "watch", "-socket", f, "-write", open}, "writable by group or others"},
		{[]string{"svid", "watch", "-socket", f, "-write", dir, "-signal", "SIGNOPE", "-pid-file", "p"}, `unknown signal "SIGNOPE"`},
	} {
		code, _, errOut := run(t, tc.args...)
		if code == 0 || !strings.Contains(errOut, tc.want) {
			t.Errorf("sigil %s: code %d, stderr %q; want an error with %q", strings.Join(tc.args, " "), code, errOut, tc.want)
		}
	}
}
