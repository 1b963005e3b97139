package config

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseSVIDFiles(t *testing.T) {
	f, err := Parse("a.hcl", []byte(`
agent {
  trust_domain = "example.org"
  svid_files "nginx" {
    directory     = "/etc/nginx/svid"
    selectors     = ["unix:uid:33", "unix:gid:33"]
    spiffe_id     = "spiffe://example.org/nginx"
    jwt_audiences = ["db"]
    uid           = 33
    gid           = 33
    signal        = "SIGHUP"
    pid_file      = "/run/nginx.pid"
  }
  svid_files "legacy" {
    directory = "/run/legacy"
    selectors = ["unix:uid:1000"]
    command   = ["systemctl", "reload", "legacy"]
  }
}
`))
	if err != nil {
		t.Fatal(err)
	}
	want := []SVIDFiles{
		{Name: "nginx", Directory: "/etc/nginx/svid", Selectors: []string{"unix:uid:33", "unix:gid:33"}, SPIFFEID: "spiffe://example.org/nginx",
			JWTAudiences: []string{"db"}, UID: 33, GID: 33, Signal: "SIGHUP", PIDFile: "/run/nginx.pid"},
		{Name: "legacy", Directory: "/run/legacy", Selectors: []string{"unix:uid:1000"}, UID: -1, GID: -1, Command: []string{"systemctl", "reload", "legacy"}},
	}
	if f.Agent.SVIDFiles == nil {
		t.Fatal("no svid_files blocks parsed")
	}
	if got := f.Agent.SVIDFiles.Blocks; !reflect.DeepEqual(got, want) {
		t.Fatalf("svid_files = %+v\nwant %+v", got, want)
	}
}

func TestParseSVIDFilesErrors(t *testing.T) {
	for _, tc := range []struct{ block, want string }{
		{`svid_files "x" { selectors = ["unix:uid:1"] }`, `"directory" is required`},
		{`svid_files "x" { directory = "/d" }`, `"selectors" is required`},
		{`svid_files "x" {
  directory = "/d"
  selectors = ["unix:uid:1"]
  uid = -1
}`, `agent.svid_files "x": uid -1 is negative`},
		{`svid_files "x" {
  directory = "/d"
  selectors = ["unix:uid:1"]
  owner = "me"
}`, `"owner" is not expected`},
		{`svid_files { directory = "/d" }`, "Missing name for svid_files"},
	} {
		_, err := Parse("a.hcl", []byte("agent {\n  "+tc.block+"\n}\n"))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.block, err, tc.want)
		}
	}
}
