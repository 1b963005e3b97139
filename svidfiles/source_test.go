package svidfiles

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	gospiffe "github.com/spiffe/go-spiffe/v2/workloadapi"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/workload"
	"github.com/sigil-id/sigil/attestor/workload/unix"
	"github.com/sigil-id/sigil/workloadapi"
)

// TestWorkloadAPISource runs Run against Sigil's real Workload API server
// on a unix socket (this test process attested by its uid): the files
// follow an SVID rotation and a federated bundle pushed on the stream.
func TestWorkloadAPISource(t *testing.T) {
	ca := newTestCA(t, "example.org")
	fed := newTestCA(t, "other.org")
	cache := workloadapi.NewMemoryCache()
	b := x509bundle.New(ca.td)
	b.AddX509Authority(ca.root)
	cache.SetBundle(b)
	sels := []*sigilv1.Selector{{Type: "unix", Value: "uid:" + strconv.Itoa(os.Getuid())}}
	first := ca.svid(t, "/files")
	cache.SetIdentity(sels, workloadapi.X509Identity{EntryID: "e", SPIFFEID: first.ID, Chain: first.Certificates, PrivateKey: first.PrivateKey})

	srv, err := workloadapi.New(workloadapi.Config{Cache: cache, Attestors: []workload.Attestor{unix.New()}})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := workloadapi.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, l) }()

	client, err := gospiffe.New(ctx, gospiffe.WithAddr("unix://"+sock))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	dir := filepath.Join(t.TempDir(), "files")
	w, err := NewWriter(dir, NoOwner)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{dir: dir, rotated: make(chan string, 10), stopped: make(chan struct{})}
	runCtx, stopRun := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- Run(runCtx, Config{Writer: w, Notifier: rec}, &WorkloadAPISource{Client: client}) }()

	if got := <-rec.rotated; got != first.Certificates[0].SerialNumber.String() {
		t.Fatalf("first files hold serial %s, want %s", got, first.Certificates[0].SerialNumber)
	}
	if chain := readCerts(t, filepath.Join(dir, CertFile)); len(chain) != 2 {
		t.Fatalf("svid.pem holds %d certificates, want the leaf and the intermediate", len(chain))
	}

	second := ca.svid(t, "/files")
	fb := x509bundle.New(fed.td)
	fb.AddX509Authority(fed.root)
	cache.SetFederatedBundle(fed.td, fb)
	cache.SetFederatesWith("e", fed.td)
	cache.SetIdentity(sels, workloadapi.X509Identity{EntryID: "e", SPIFFEID: second.ID, Chain: second.Certificates, PrivateKey: second.PrivateKey})
	for got := <-rec.rotated; got != second.Certificates[0].SerialNumber.String(); got = <-rec.rotated {
	}
	key, err := os.ReadFile(filepath.Join(dir, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := keyMatches(key, second.Certificates[0]); err != nil {
		t.Fatal(err)
	}
	// The federated bundle was set before the second SVID, so the files
	// that hold the second SVID hold it too.
	fedRoot := readCerts(t, filepath.Join(dir, FederatedDir, "other.org.pem"))
	if len(fedRoot) != 1 || !fedRoot[0].Equal(fed.root) {
		t.Fatal("federated/other.org.pem does not hold the federated root")
	}
	stopRun()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v after cancel", err)
	}
	cancel()
	if err := <-served; err != nil {
		t.Fatalf("Workload API server: %v", err)
	}
}
