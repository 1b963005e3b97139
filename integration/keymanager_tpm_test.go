package integration

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/sigil-id/sigil/internal/eventually"
)

// startSWTPM runs Debian's software TPM 2.0 on a unix socket (the
// "hardware" of the server under test) and returns the socket. .ci/run
// installs swtpm.
func startSWTPM(t *testing.T, dir string) string {
	t.Helper()
	bin, err := exec.LookPath("swtpm")
	if err != nil {
		t.Fatalf("swtpm is not installed (apt-get install swtpm; .ci/run does): %v", err)
	}
	state := filepath.Join(dir, "state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "tpm.sock")
	p := startProc(t, "swtpm", filepath.Join(dir, "swtpm.log"), nil, bin, "socket", "--tpm2",
		"--server", "type=unixio,path="+sock,
		"--ctrl", "type=unixio,path="+sock+".ctrl",
		"--tpmstate", "dir="+state,
		"--flags", "not-need-init,startup-clear",
		"--log", "file=-") // no line per command
	eventually.NoError(t, 10*time.Second, func() error {
		if p.exited() {
			return eventually.Stop(fmt.Errorf("swtpm exited: %v", p.err))
		}
		c, err := net.Dial("unix", sock)
		if err != nil {
			return err
		}
		return c.Close()
	})
	return sock
}

// TestKeyManagerTPM: a server process keeps its CA, JWT and cluster
// identity keys in a TPM (swtpm): an agent gets a workload SVID; a forced
// CA rotation (prepare, activate, taint) creates the new key in the TPM
// and workloads move to it; revoking the old key deletes its blob; the
// server restarts on its TPM keys; and the
// server's directory (data, Raft files, logs) holds no private key, only
// TPM-wrapped blobs.
func TestKeyManagerTPM(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	root := t.TempDir()
	sock := startSWTPM(t, filepath.Join(root, "swtpm"))
	s := newServerWith(t, filepath.Join(root, "server"), fmt.Sprintf(`
  ca_ttl               = "10m"
  x509_svid_ttl        = "2m"
  agent_svid_ttl       = "5m"
  ca_propagation_delay = "2s"
  plugins {
    node_attestor "join_token" {}
    key_manager "tpm" {
      device = %q
    }
  }`, sock))
	s.start()
	blobDir := filepath.Join(s.dir, "data", "tpm")
	blobs := func(prefix string) []string {
		m, _ := filepath.Glob(filepath.Join(blobDir, "key-"+prefix+"*.tpmobj"))
		return m
	}
	if n := len(blobs("authorities.x509-ca-")); n != 1 {
		t.Fatalf("%d X.509 CA key blobs in %s, want 1", n, blobDir)
	}
	if n := len(blobs("authorities.jwt-key-")); n != 1 {
		t.Fatalf("%d JWT key blobs, want 1", n)
	}

	a := newAgent(t, s, filepath.Join(root, "agent"))
	a.start()
	want := "spiffe://" + trustDomain + "/it/tpm"
	createEntry(t, s, want, a.id, uidSelector(t))
	xc := fetchID(t, a.socket, want)
	old := s.authorities().active("x509")
	if got := hex.EncodeToString(xc.DefaultSVID().Certificates[0].AuthorityKeyId); got != old {
		t.Fatalf("SVID signed by %s, active CA key is %s", got, old)
	}

	// A forced rotation: the new key is made in the TPM.
	if out := s.cli("authority", "prepare"); !strings.Contains(out, "Prepared x509 key") {
		t.Fatalf("prepare: %s", out)
	}
	if n := len(blobs("authorities.x509-ca-")); n != 2 {
		t.Fatalf("after prepare: %d X.509 CA key blobs, want 2", n)
	}
	time.Sleep(2500 * time.Millisecond) // the propagation delay
	s.cli("authority", "activate")
	cur := s.authorities().active("x509")
	if cur == old || cur == "" {
		t.Fatalf("active key %q after activation, old %q", cur, old)
	}
	s.cli("authority", "taint", "-id", old)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	client, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+a.socket))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	eventually.NoError(t, 30*time.Second, func() error {
		xc, err := client.FetchX509Context(ctx)
		if err != nil {
			return err
		}
		if got := hex.EncodeToString(xc.DefaultSVID().Certificates[0].AuthorityKeyId); got != cur {
			return fmt.Errorf("SVID signed by %s, want the new CA key %s", got, cur)
		}
		return nil
	})

	// Revoking the old key destroys it: its blob goes.
	eventually.NoError(t, 15*time.Second, func() error {
		out, err := s.cliErr("authority", "revoke", "-id", old)
		if err != nil || !strings.Contains(out, "Revoked") {
			return fmt.Errorf("revoke: %v %s", err, out)
		}
		return nil
	})
	if n := len(blobs("authorities.x509-ca-")); n != 1 {
		t.Fatalf("after revoking the old key: %d X.509 CA key blobs, want 1", n)
	}

	// A restart finds the keys in the TPM: a new entry's SVID is signed
	// by the restarted server with the new CA key.
	s.p.stop()
	s.start()
	if got := s.authorities().active("x509"); got != cur {
		t.Fatalf("after a restart the active key is %s, want %s", got, cur)
	}
	want2 := "spiffe://" + trustDomain + "/it/tpm-after-restart"
	createEntry(t, s, want2, a.id, uidSelector(t))
	for _, svid := range fetchID(t, a.socket, want2).SVIDs {
		if svid.ID.String() != want2 {
			continue
		}
		if got := hex.EncodeToString(svid.Certificates[0].AuthorityKeyId); got != cur {
			t.Fatalf("after the restart %s was signed by %s, want %s", want2, got, cur)
		}
	}

	a.p.stop()
	s.p.stop()

	// No private key in the server's directory: no key files, no PEM or
	// PKCS#8 private key anywhere (data, Raft, logs); the TPM blobs are
	// there (the control) and are the only key storage.
	var scanned, raftFiles int
	err = filepath.WalkDir(s.dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		if strings.HasSuffix(p, ".key.pem") || strings.HasSuffix(p, ".key") {
			t.Errorf("key file %s in the server directory", p)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		scanned++
		if strings.Contains(p, string(filepath.Separator)+"raft"+string(filepath.Separator)) {
			raftFiles++
		}
		for _, marker := range [][]byte{[]byte("PRIVATE KEY"), []byte("-----BEGIN EC"), []byte("-----BEGIN RSA")} {
			if bytes.Contains(b, marker) {
				t.Errorf("%s holds %q", p, marker)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if raftFiles < 1 || len(blobs("")) < 2 {
		t.Fatalf("scanned %d files (%d Raft files) and %d TPM blobs: the scan proves nothing", scanned, raftFiles, len(blobs("")))
	}
	if _, err := os.Stat(filepath.Join(s.dir, "data", "keys")); !os.IsNotExist(err) {
		t.Errorf("the disk key manager's directory exists: %v", err)
	}
	t.Logf("scanned %d files (%d Raft files); %d TPM-wrapped key blobs in %s", scanned, raftFiles, len(blobs("")), blobDir)
}
