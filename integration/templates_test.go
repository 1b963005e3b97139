package integration

import (
	"bytes"
	"context"
	"encoding/asn1"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// templateExtOID is the extension the SVID template of
// TestCertificateTemplates adds: the registration entry's ID (UTF8String).
var templateExtOID = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 55555, 14, 1}

// TestCertificateTemplates runs a real server with an X.509-SVID template
// (subject O from the template, OU from the SPIFFE ID's first path
// segment, an extra non-critical extension carrying the entry's ID) and a
// CA template (subject of the CA certificate): the SVID a go-spiffe
// workload gets from the agent carries them, its one URI SAN is its
// SPIFFE ID, it is issued by the templated CA, and it verifies as an
// X.509-SVID against the bundle the Workload API serves.
func TestCertificateTemplates(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	root := t.TempDir()
	svidTmpl := filepath.Join(root, "svid-template.json")
	caTmpl := filepath.Join(root, "ca-template.json")
	writeTemplateFile(t, svidTmpl, `{
	"subject": {
		"organization": "Example Corp",
		"organizationalUnit": {{ index .PathSegments 0 | toJson }},
		"commonName": {{ toJson .Subject.CommonName }}
	},
	"extensions": [{"id": "1.3.6.1.4.1.55555.14.1", "value": {{ asn1Enc (printf "utf8:%s" .EntryID) | toJson }} }]
}`)
	writeTemplateFile(t, caTmpl, `{"subject": {"organization": "Example Corp", "commonName": {{ printf "Example CA %s" .NodeName | toJson }} }}`)
	s := newServerWith(t, filepath.Join(root, "server"), fmt.Sprintf(`
  x509_svid_template_file = %q
  ca_template_file        = %q`, svidTmpl, caTmpl))
	s.start()
	a := newAgent(t, s, filepath.Join(root, "agent"))
	a.start()

	want := "spiffe://" + trustDomain + "/payments/api"
	entryID := createEntry(t, s, want, a.id, uidSelector(t))
	xc := fetchID(t, a.socket, want)
	var svid *x509svid.SVID
	for _, sv := range xc.SVIDs {
		if sv.ID.String() == want {
			svid = sv
		}
	}
	leaf := svid.Certificates[0]
	if got := leaf.Subject; !slices.Equal(got.Organization, []string{"Example Corp"}) || !slices.Equal(got.OrganizationalUnit, []string{"payments"}) {
		t.Errorf("SVID subject = %s, want O=Example Corp, OU=payments", got)
	}
	var ext []byte
	for _, e := range leaf.Extensions {
		if e.Id.Equal(templateExtOID) {
			if e.Critical {
				t.Error("the template's extension is critical")
			}
			ext = e.Value
		}
	}
	var gotEntry string
	if _, err := asn1.UnmarshalWithParams(ext, &gotEntry, "utf8"); err != nil || gotEntry != entryID {
		t.Errorf("extension %v = %q (%v), want the entry ID %q", templateExtOID, gotEntry, err, entryID)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != want || leaf.IsCA {
		t.Errorf("SVID URIs %v, IsCA %v: want exactly [%s], not a CA", leaf.URIs, leaf.IsCA, want)
	}
	if wantIssuer := "SERIALNUMBER=s1,CN=Example CA s1,O=Example Corp"; leaf.Issuer.String() != wantIssuer {
		t.Errorf("SVID issuer = %s, want the templated CA subject %s", leaf.Issuer, wantIssuer)
	}
	if id, _, err := x509svid.Verify(svid.Certificates, xc.Bundles); err != nil || id.String() != want {
		t.Fatalf("x509svid.Verify = %v, %v; want %s", id, err, want)
	}
}

// TestBadCertificateTemplateFile: a server whose x509_svid_template_file
// sets a URI SAN exits non-zero at start and says on stderr which
// setting, which file and which rule.
func TestBadCertificateTemplateFile(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	root := t.TempDir()
	bad := filepath.Join(root, "bad-template.json")
	writeTemplateFile(t, bad, `{"subject": "x", "uris": "spiffe://`+trustDomain+`/admin"}`)
	s := newServerWith(t, filepath.Join(root, "server"), fmt.Sprintf("\n  x509_svid_template_file = %q", bad))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, sigilBin, "server", "-config", s.config)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() == 0 {
		t.Fatalf("sigil server with a bad template: %v, want a non-zero exit\n%s", err, stderr.String())
	}
	for _, w := range []string{"server.x509_svid_template_file", bad, "URI SAN", "Sigil sets exactly one URI SAN, the SPIFFE ID"} {
		if !strings.Contains(stderr.String(), w) {
			t.Errorf("stderr lacks %q:\n%s", w, stderr.String())
		}
	}
	if _, err := os.Stat(filepath.Join(s.dir, "data")); err == nil {
		t.Error("the server created its data directory before refusing the template")
	}
}

func writeTemplateFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}
