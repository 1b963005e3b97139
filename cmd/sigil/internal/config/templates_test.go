package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestTemplateFiles: x509_svid_template_file and ca_template_file are
// read (relative to the configuration file's directory) and parsed when
// the file is; a template that breaks a rule, a missing file and a
// directory are errors naming the attribute, its line and the file.
func TestTemplateFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("svid.json", `{"subject": {"organization": "Example Corp", "commonName": {{ toJson .Subject.CommonName }} }}`)
	write("ca.json", `{"subject": {"organization": "Example Corp", "commonName": {{ printf "CA %s" .NodeName | toJson }} }}`)
	write("path.json", `{"subject": {"organizationalUnit": {{ index .PathSegments 0 | toJson }} }}`)
	write("uri.json", `{"uris": "spiffe://example.org/admin"}`)
	write("ca-not-ca.json", `{"basicConstraints": {"isCA": false}}`)
	if err := os.Mkdir(filepath.Join(dir, "adir"), 0o755); err != nil {
		t.Fatal(err)
	}
	parse := func(body string) (*File, error) {
		return Parse(filepath.Join(dir, "server.hcl"), []byte("server {\n  trust_domain = \"example.org\"\n"+body+"}\n"))
	}

	f, err := parse("  x509_svid_template_file = \"svid.json\"\n  ca_template_file = \"" + filepath.Join(dir, "ca.json") + "\"\n")
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	s := f.Server
	if s.X509SVIDTemplate == nil || s.CATemplate == nil {
		t.Fatal("templates not parsed")
	}
	if s.X509SVIDTemplateFile != filepath.Join(dir, "svid.json") {
		t.Errorf("x509_svid_template_file resolved to %q", s.X509SVIDTemplateFile)
	}

	none, err := parse("")
	if err != nil || none.Server.X509SVIDTemplate != nil || none.Server.CATemplate != nil {
		t.Fatalf("no template files: %v, %+v", err, none.Server)
	}

	for _, tt := range []struct {
		body string
		want []string
	}{
		{"  x509_svid_template_file = \"uri.json\"\n", []string{"server.hcl:3", "server.x509_svid_template_file", "uri.json", "URI SAN"}},
		{"  ca_template_file = \"ca-not-ca.json\"\n", []string{"server.hcl:3", "server.ca_template_file", "must be a CA"}},
		{"  ca_template_file = \"path.json\"\n", []string{"server.ca_template_file", "CA template", "PathSegments"}},
		{"  x509_svid_template_file = \"missing.json\"\n", []string{"server.x509_svid_template_file", "no such file"}},
		{"  ca_template_file = \"adir\"\n", []string{"server.ca_template_file", "not a regular file"}},
	} {
		_, err := parse(tt.body)
		if err == nil {
			t.Errorf("%q: accepted", tt.body)
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%q: error %q does not contain %q", tt.body, err, w)
			}
		}
	}
}
