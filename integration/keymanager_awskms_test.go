package integration

import (
	"bytes"
	"crypto"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/internal/fakekms"
)

// TestAWSKMSKeyManager: a server process keeps its CA and JWT keys in (a local fake of) AWS KMS, reached through the real AWS
// SDK with credentials from the environment: workloads get SVIDs signed in
// KMS, a prepared authority creates a new KMS key under its own alias, a
// server killed with -9 finds its keys again through their aliases, and
// no private key reaches the data directory.
func TestAWSKMSKeyManager(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	const accessKeyID = "AKIDSIGILINTEGRATION"
	kms := fakekms.New("eu-west-1", nil)
	defer kms.Close()
	kms.RequireAccessKeyID(accessKeyID)

	root := t.TempDir()
	env := []string{
		"AWS_ACCESS_KEY_ID=" + accessKeyID,
		"AWS_SECRET_ACCESS_KEY=integration-secret-not-used",
		"AWS_SESSION_TOKEN=",
		"AWS_PROFILE=",
		"AWS_REGION=",
		"AWS_DEFAULT_REGION=",
		"AWS_CONFIG_FILE=" + filepath.Join(root, "aws-config"),
		"AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(root, "aws-credentials"),
		"AWS_EC2_METADATA_DISABLED=true",
		"AWS_ENDPOINT_URL=",
		"AWS_ENDPOINT_URL_KMS=",
	}
	s := newServerWith(t, filepath.Join(root, "server"), fmt.Sprintf(`
  plugins {
    node_attestor "join_token" {}
    key_manager "awskms" {
      region   = "eu-west-1"
      endpoint = %q
    }
  }`, kms.URL))
	start := func() {
		t.Helper()
		s.p = startProc(t, "server", filepath.Join(s.dir, "server.log"), env, sigilBin, "server", "-config", s.config)
		waitReady(t, s.p, "http://"+s.health+"/ready")
	}
	start()

	// Every key of the server is a KMS key under an alias of its slot.
	prefix := "alias/sigil/it_2esigil_2etest/s1/"
	aliasesOf := func(scope string) map[string]string {
		out := map[string]string{}
		for a, id := range kms.Aliases() {
			if strings.HasPrefix(a, prefix+scope+"/") {
				out[a] = id
			}
		}
		return out
	}
	// (A single server with no cluster block has no cluster identity CA.)
	auth := aliasesOf("authorities")
	if _, ok := auth[prefix+"authorities/x509-ca-1"]; !ok || len(auth) != 2 || len(kms.Aliases()) != 2 {
		t.Fatalf("KMS aliases after start: %v", kms.Aliases())
	}

	a := newAgent(t, s, filepath.Join(root, "agent"))
	a.start()
	want := "spiffe://" + trustDomain + "/it/kms"
	createEntry(t, s, want, a.id, uidSelector(t))
	xc := fetchID(t, a.socket, want)
	bundle, err := xc.Bundles.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString(trustDomain))
	if err != nil {
		t.Fatal(err)
	}
	inKMS := func(pub crypto.PublicKey) bool {
		for _, id := range auth {
			if k, ok := kms.PublicKey(id); ok && k.(interface{ Equal(crypto.PublicKey) bool }).Equal(pub) {
				return true
			}
		}
		return false
	}
	found := false
	for _, c := range bundle.X509Authorities() {
		found = found || inKMS(c.PublicKey)
	}
	if !found {
		t.Fatal("no X.509 authority of the bundle has its key in KMS")
	}
	if kms.Calls("Sign") == 0 {
		t.Fatal("KMS signed nothing")
	}

	// A prepared authority is a new KMS key under its own alias.
	creates := kms.Calls("CreateKey")
	if out := s.cli("authority", "prepare"); !strings.Contains(out, "Prepared x509 key") {
		t.Fatalf("prepare: %s", out)
	}
	if kms.Calls("CreateKey") <= creates || len(aliasesOf("authorities")) <= len(auth) {
		t.Fatalf("prepare created no KMS key: CreateKey %d -> %d, aliases %v", creates, kms.Calls("CreateKey"), kms.Aliases())
	}
	auth = aliasesOf("authorities")

	// kill -9 and restart: the keys are found through their aliases, no
	// key is created, and SVIDs are still signed.
	active := s.authorities().active("x509")
	creates = kms.Calls("CreateKey")
	s.p.kill()
	start()
	if kms.Calls("CreateKey") != creates {
		t.Fatalf("the restarted server created %d KMS keys", kms.Calls("CreateKey")-creates)
	}
	if got := s.authorities().active("x509"); got != active {
		t.Fatalf("active x509 authority %q after restart, want %q", got, active)
	}
	want2 := "spiffe://" + trustDomain + "/it/kms-after-restart"
	createEntry(t, s, want2, a.id, uidSelector(t))
	fetchID(t, a.socket, want2)

	// No private key material in the data directory: neither a key file
	// nor the DER of any KMS key.
	var ders [][]byte
	for _, id := range kms.Keys() {
		if der, ok := kms.PrivateKeyDER(id); ok {
			ders = append(ders, der)
		}
	}
	err = filepath.WalkDir(s.dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err // directories, sockets
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if bytes.Contains(b, []byte("PRIVATE KEY")) || strings.HasSuffix(path, ".key.pem") {
			return fmt.Errorf("%s holds a private key", path)
		}
		for _, der := range ders {
			if bytes.Contains(b, der) {
				return fmt.Errorf("%s holds a KMS private key", path)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
