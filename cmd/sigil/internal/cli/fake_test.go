package cli

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"
	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/registration"
)

// shortTempDir returns a temporary directory with a path short enough for
// unix sockets (t.TempDir paths can exceed the 108-byte limit).
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sgl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// fakeAdmin is an in-memory admin API with small pages, so that the
// commands' paging is exercised.
type fakeAdmin struct {
	sigilv1.UnimplementedAdminServer
	mu       sync.Mutex
	next     int
	entries  map[string]*sigilv1.Entry
	agents   []*sigilv1.AttestedNode
	bundle   *sigilv1.Bundle
	foreign  map[string]*sigilv1.Bundle // federated bundles by trust domain
	evicted  []string
	banned   []string
	pageSize int
	tokenTTL int32
}

func newFakeAdmin() *fakeAdmin {
	return &fakeAdmin{entries: map[string]*sigilv1.Entry{}, pageSize: 2}
}

func (f *fakeAdmin) BatchCreateEntry(_ context.Context, req *sigilv1.BatchCreateEntryRequest) (*sigilv1.BatchCreateEntryResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &sigilv1.BatchCreateEntryResponse{}
	for _, e := range req.Entries {
		if err := registration.Validate(fakeTD, e); err != nil {
			resp.Results = append(resp.Results, &sigilv1.EntryResult{Status: &sigilv1.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}})
			continue
		}
		e = proto.Clone(e).(*sigilv1.Entry)
		f.next++
		e.Id = fmt.Sprintf("e%d", f.next)
		e.CreatedAt = 1700000000
		f.entries[e.Id] = e
		resp.Results = append(resp.Results, &sigilv1.EntryResult{Status: &sigilv1.Status{}, Entry: e})
	}
	return resp, nil
}

func (f *fakeAdmin) BatchUpdateEntry(_ context.Context, req *sigilv1.BatchUpdateEntryRequest) (*sigilv1.BatchUpdateEntryResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &sigilv1.BatchUpdateEntryResponse{}
	for _, e := range req.Entries {
		cur, ok := f.entries[e.Id]
		if !ok {
			resp.Results = append(resp.Results, &sigilv1.EntryResult{Status: &sigilv1.Status{Code: int32(codes.NotFound), Message: "entry " + strconv.Quote(e.Id) + " not found"}})
			continue
		}
		e = proto.Clone(e).(*sigilv1.Entry)
		e.Revision = cur.Revision + 1
		f.entries[e.Id] = e
		resp.Results = append(resp.Results, &sigilv1.EntryResult{Status: &sigilv1.Status{}, Entry: e})
	}
	return resp, nil
}

func (f *fakeAdmin) BatchDeleteEntry(_ context.Context, req *sigilv1.BatchDeleteEntryRequest) (*sigilv1.BatchDeleteEntryResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &sigilv1.BatchDeleteEntryResponse{}
	for _, id := range req.Ids {
		st := &sigilv1.Status{}
		if _, ok := f.entries[id]; ok {
			delete(f.entries, id)
		} else {
			st = &sigilv1.Status{Code: int32(codes.NotFound), Message: "entry " + strconv.Quote(id) + " not found"}
		}
		resp.Results = append(resp.Results, &sigilv1.DeleteResult{Id: id, Status: st})
	}
	return resp, nil
}

func (f *fakeAdmin) GetEntry(_ context.Context, req *sigilv1.GetEntryRequest) (*sigilv1.Entry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.entries[req.Id]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "entry %q not found", req.Id)
	}
	return e, nil
}

func (f *fakeAdmin) ListEntries(_ context.Context, req *sigilv1.ListEntriesRequest) (*sigilv1.ListEntriesResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ids []string
	for id, e := range f.entries {
		if req.SpiffeId != "" && e.SpiffeId != req.SpiffeId {
			continue
		}
		if req.ParentId != "" && e.ParentId != req.ParentId {
			continue
		}
		if len(req.Selectors) > 0 && !registration.NewSelectorSet(e.Selectors).Contains(req.Selectors) {
			continue
		}
		ids = append(ids, id)
	}
	sort.Strings(ids)
	start := 0
	if req.PageToken != "" {
		start, _ = strconv.Atoi(req.PageToken)
	}
	end := min(start+f.pageSize, len(ids))
	resp := &sigilv1.ListEntriesResponse{}
	for _, id := range ids[start:end] {
		resp.Entries = append(resp.Entries, f.entries[id])
	}
	if end < len(ids) {
		resp.NextPageToken = strconv.Itoa(end)
	}
	return resp, nil
}

func (f *fakeAdmin) CreateJoinToken(_ context.Context, req *sigilv1.CreateJoinTokenRequest) (*sigilv1.CreateJoinTokenResponse, error) {
	f.mu.Lock()
	f.tokenTTL = req.Ttl
	f.mu.Unlock()
	return &sigilv1.CreateJoinTokenResponse{
		Token:     "secret-token",
		AgentId:   "spiffe://example.org/sigil/agent/join_token/abc",
		ExpiresAt: 1700000600,
	}, nil
}

func (f *fakeAdmin) GetBundle(_ context.Context, req *sigilv1.GetBundleRequest) (*sigilv1.Bundle, error) {
	if req.TrustDomain != "" {
		if b, ok := f.foreign[req.TrustDomain]; ok {
			return b, nil
		}
		return nil, status.Errorf(codes.NotFound, "no bundle of trust domain %q", req.TrustDomain)
	}
	return f.bundle, nil
}

func (f *fakeAdmin) ListAgents(_ context.Context, req *sigilv1.ListAgentsRequest) (*sigilv1.ListAgentsResponse, error) {
	// The agents whose node selectors include all of req.Selectors.
	var agents []*sigilv1.AttestedNode
	for _, a := range f.agents {
		have := map[string]bool{}
		for _, s := range a.Selectors {
			have[registration.FormatSelector(s)] = true
		}
		ok := true
		for _, s := range req.Selectors {
			ok = ok && have[registration.FormatSelector(s)]
		}
		if ok {
			agents = append(agents, a)
		}
	}
	start := 0
	if req.PageToken != "" {
		start, _ = strconv.Atoi(req.PageToken)
	}
	end := min(start+f.pageSize, len(agents))
	resp := &sigilv1.ListAgentsResponse{Agents: agents[start:end]}
	if end < len(agents) {
		resp.NextPageToken = strconv.Itoa(end)
	}
	return resp, nil
}

func (f *fakeAdmin) GetAgent(_ context.Context, req *sigilv1.GetAgentRequest) (*sigilv1.AttestedNode, error) {
	for _, a := range f.agents {
		if a.SpiffeId == req.SpiffeId {
			return a, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "agent %q not found", req.SpiffeId)
}

func (f *fakeAdmin) EvictAgent(_ context.Context, req *sigilv1.EvictAgentRequest) (*sigilv1.EvictAgentResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.evicted = append(f.evicted, req.SpiffeId)
	return &sigilv1.EvictAgentResponse{}, nil
}

func (f *fakeAdmin) BanAgent(_ context.Context, req *sigilv1.BanAgentRequest) (*sigilv1.BanAgentResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.banned = append(f.banned, req.SpiffeId)
	return &sigilv1.BanAgentResponse{}, nil
}

// startFakeAdmin serves f on a unix socket and returns its path.
func startFakeAdmin(t *testing.T, f sigilv1.AdminServer) string {
	t.Helper()
	path := filepath.Join(shortTempDir(t), "admin.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	sigilv1.RegisterAdminServer(s, f)
	go s.Serve(ln) //nolint:errcheck
	t.Cleanup(s.Stop)
	return path
}

// testRoot is the command tree of the client commands, as main wires it.
func testRoot() *cobra.Command {
	root := &cobra.Command{Use: "sigil"}
	agent := &cobra.Command{Use: "agent"}
	agent.AddCommand(AgentAdminCommands()...)
	root.AddCommand(NewEntryCommand(), NewTokenCommand(), NewBundleCommand(), agent, NewSVIDCommand(), NewHealthcheckCommand(), NewFederationCommand())
	return root
}

// run executes the client commands with args and returns exit code,
// stdout and stderr.
func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Execute(testRoot(), args, &out, &errb)
	return code, out.String(), errb.String()
}

// fakeTD is the trust domain of the fake admin API.
var fakeTD = spiffeid.RequireTrustDomainFromString("example.org")

// testCA is a self-signed CA that issues SVIDs for the fake Workload API.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestCA(t *testing.T, td string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "Test CA"},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: td}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key}
}

func (ca *testCA) issue(t *testing.T, id string) (certDER, keyDER []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(id)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(0xabcdef),
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(30 * time.Minute),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{u},
	}
	certDER, err = x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err = x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return certDER, keyDER
}

// fakeWorkloadAPI answers FetchX509SVID with one SVID, or with a status
// error when deny is set.
type fakeWorkloadAPI struct {
	workloadpb.UnimplementedSpiffeWorkloadAPIServer
	resp *workloadpb.X509SVIDResponse
	deny bool
}

func (f *fakeWorkloadAPI) FetchX509SVID(_ *workloadpb.X509SVIDRequest, stream grpc.ServerStreamingServer[workloadpb.X509SVIDResponse]) error {
	if f.deny {
		return status.Error(codes.PermissionDenied, "no identity issued")
	}
	if err := stream.Send(f.resp); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

func startFakeWorkloadAPI(t *testing.T, f *fakeWorkloadAPI) string {
	t.Helper()
	path := filepath.Join(shortTempDir(t), "api.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	workloadpb.RegisterSpiffeWorkloadAPIServer(s, f)
	go s.Serve(ln) //nolint:errcheck
	t.Cleanup(s.Stop)
	return path
}
