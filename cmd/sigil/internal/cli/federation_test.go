package cli

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/federation"
)

// fakeFederation is an in-memory FederationAdmin that records what the
// commands sent.
type fakeFederation struct {
	sigilv1.UnimplementedFederationAdminServer
	mu        sync.Mutex
	rels      map[string]*sigilv1.FederationRelationship
	bootstrap map[string][]byte
	deleted   []*sigilv1.DeleteRelationshipRequest
	refreshes []*sigilv1.RefreshBundleRequest
	// refreshed is what RefreshBundle answers, by trust domain.
	refreshed map[string]*sigilv1.BundleStatus
	sets      []*sigilv1.SetBundleRequest
	bundleDel []string
	bundles   []*sigilv1.BundleStatus
}

func newFakeFederation() *fakeFederation {
	return &fakeFederation{rels: map[string]*sigilv1.FederationRelationship{}, bootstrap: map[string][]byte{}, refreshed: map[string]*sigilv1.BundleStatus{}}
}

func (f *fakeFederation) CreateRelationship(_ context.Context, req *sigilv1.CreateRelationshipRequest) (*sigilv1.FederationRelationship, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	td := req.GetRelationship().GetTrustDomain()
	if _, ok := f.rels[td]; ok {
		return nil, status.Errorf(codes.AlreadyExists, "trust domain %q already has a federation relationship", td)
	}
	r := proto.Clone(req.Relationship).(*sigilv1.FederationRelationship)
	r.CreatedAt = 1700000000
	f.rels[td] = r
	f.bootstrap[td] = req.BootstrapBundle
	return r, nil
}

func (f *fakeFederation) UpdateRelationship(_ context.Context, req *sigilv1.UpdateRelationshipRequest) (*sigilv1.FederationRelationship, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	td := req.GetRelationship().GetTrustDomain()
	if _, ok := f.rels[td]; !ok {
		return nil, status.Errorf(codes.NotFound, "no federation relationship with %q", td)
	}
	f.rels[td] = proto.Clone(req.Relationship).(*sigilv1.FederationRelationship)
	f.bootstrap[td] = req.BootstrapBundle
	return f.rels[td], nil
}

func (f *fakeFederation) DeleteRelationship(_ context.Context, req *sigilv1.DeleteRelationshipRequest) (*sigilv1.DeleteRelationshipResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.rels[req.TrustDomain]; !ok {
		return nil, status.Errorf(codes.NotFound, "no federation relationship with %q", req.TrustDomain)
	}
	delete(f.rels, req.TrustDomain)
	f.deleted = append(f.deleted, req)
	return &sigilv1.DeleteRelationshipResponse{}, nil
}

func (f *fakeFederation) GetRelationship(_ context.Context, req *sigilv1.GetRelationshipRequest) (*sigilv1.FederationRelationship, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.rels[req.TrustDomain]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no federation relationship with %q", req.TrustDomain)
	}
	return r, nil
}

func (f *fakeFederation) ListRelationships(context.Context, *sigilv1.ListRelationshipsRequest) (*sigilv1.ListRelationshipsResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &sigilv1.ListRelationshipsResponse{}
	for _, r := range f.rels {
		resp.Relationships = append(resp.Relationships, r)
	}
	sort.Slice(resp.Relationships, func(i, j int) bool {
		return resp.Relationships[i].TrustDomain < resp.Relationships[j].TrustDomain
	})
	return resp, nil
}

func (f *fakeFederation) RefreshBundle(_ context.Context, req *sigilv1.RefreshBundleRequest) (*sigilv1.BundleStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refreshes = append(f.refreshes, req)
	if req.TrustDomain == "slow.example" {
		return nil, status.Errorf(codes.DeadlineExceeded, "no refresh attempt of %q within 1s (the leader refreshes; is it up?)", req.TrustDomain)
	}
	st, ok := f.refreshed[req.TrustDomain]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no federation relationship with %q", req.TrustDomain)
	}
	return st, nil
}

func (f *fakeFederation) SetBundle(_ context.Context, req *sigilv1.SetBundleRequest) (*sigilv1.Bundle, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sets = append(f.sets, req)
	return &sigilv1.Bundle{TrustDomain: req.TrustDomain, SequenceNumber: 4,
		X509Authorities: []*sigilv1.X509Authority{{}, {}}, JwtAuthorities: []*sigilv1.JWTAuthority{{}}}, nil
}

func (f *fakeFederation) DeleteBundle(_ context.Context, req *sigilv1.DeleteBundleRequest) (*sigilv1.DeleteBundleResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.bundleDel = append(f.bundleDel, req.TrustDomain)
	return &sigilv1.DeleteBundleResponse{}, nil
}

func (f *fakeFederation) ListBundles(context.Context, *sigilv1.ListBundlesRequest) (*sigilv1.ListBundlesResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &sigilv1.ListBundlesResponse{Bundles: f.bundles}, nil
}

// startFakeServer serves the fake Admin and FederationAdmin on one unix
// socket, as a server's admin socket does, and returns its path.
func startFakeServer(t *testing.T, a *fakeAdmin, f *fakeFederation) string {
	t.Helper()
	path := filepath.Join(shortTempDir(t), "admin.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	sigilv1.RegisterAdminServer(s, a)
	sigilv1.RegisterFederationAdminServer(s, f)
	go s.Serve(ln) //nolint:errcheck
	t.Cleanup(s.Stop)
	return path
}

// runIn is run with stdin.
func runIn(t *testing.T, stdin io.Reader, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	root := testRoot()
	root.SetIn(stdin)
	code := Execute(root, args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestFederationRelationshipCommands(t *testing.T) {
	f := newFakeFederation()
	sock := startFakeServer(t, newFakeAdmin(), f)
	dir := t.TempDir()
	doc := filepath.Join(dir, "gcp.bundle.json")
	os.WriteFile(doc, []byte(`{"keys": []}`), 0o600)

	// create: a trust domain given as spiffe://, the default endpoint ID,
	// the bootstrap bundle from a file.
	code, out, errOut := run(t, "federation", "create", "-socket", sock, "-trust-domain", "spiffe://gcp.example",
		"-bundle-endpoint-url", "https://127.0.0.1:8444", "-bundle-file", doc)
	if code != 0 {
		t.Fatalf("create: %d %q", code, errOut)
	}
	want := &sigilv1.FederationRelationship{TrustDomain: "gcp.example", BundleEndpointUrl: "https://127.0.0.1:8444",
		Profile: "https_spiffe", EndpointSpiffeId: "spiffe://gcp.example/sigil/server", CreatedAt: 1700000000}
	if !proto.Equal(f.rels["gcp.example"], want) || string(f.bootstrap["gcp.example"]) != `{"keys": []}` {
		t.Errorf("stored %v with bootstrap %q, want %v", f.rels["gcp.example"], f.bootstrap["gcp.example"], want)
	}
	for _, line := range []string{"Trust domain        : gcp.example", "Profile             : https_spiffe", "Endpoint SPIFFE ID  : spiffe://gcp.example/sigil/server", "Source              : api"} {
		if !strings.Contains(out, line) {
			t.Errorf("create output lacks %q:\n%s", line, out)
		}
	}

	// https_web, the bundle on stdin.
	code, _, errOut = runIn(t, strings.NewReader(`{"keys": [1]}`), "federation", "create", "-socket", sock, "-trust-domain", "web.example",
		"-bundle-endpoint-url", "https://web.example/bundle", "-profile", "https_web", "-bundle-file", "-")
	if code != 0 || f.rels["web.example"].GetEndpointSpiffeId() != "" || string(f.bootstrap["web.example"]) != `{"keys": [1]}` {
		t.Errorf("create https_web: %d %q %v", code, errOut, f.rels["web.example"])
	}
	// A second create is the server's AlreadyExists.
	code, _, errOut = run(t, "federation", "create", "-socket", sock, "-trust-domain", "web.example", "-bundle-endpoint-url", "https://web.example/bundle", "-profile", "https_web")
	if code != 1 || errOut != "sigil: create federation relationship with web.example: AlreadyExists: trust domain \"web.example\" already has a federation relationship\n" {
		t.Errorf("duplicate create: %d %q", code, errOut)
	}

	// Bad flags fail before dialing, with one line.
	huge := filepath.Join(dir, "huge.json")
	os.WriteFile(huge, bytes.Repeat([]byte(" "), federation.MaxDocumentSize+1), 0o600)
	empty := filepath.Join(dir, "empty.json")
	os.WriteFile(empty, nil, 0o600)
	okURL := []string{"-bundle-endpoint-url", "https://x.example"}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{okURL, "-trust-domain is required"},
		{append([]string{"-trust-domain", "spiffe://x.example/path"}, okURL...), `invalid -trust-domain "spiffe://x.example/path": want a trust domain name such as example.org (or spiffe://example.org), without a path`},
		{append([]string{"-trust-domain", "X.example"}, okURL...), `invalid -trust-domain "X.example": `},
		{[]string{"-trust-domain", "x.example"}, "-bundle-endpoint-url is required"},
		{[]string{"-trust-domain", "x.example", "-bundle-endpoint-url", "http://x.example"}, `invalid -bundle-endpoint-url "http://x.example": want an https URL`},
		{[]string{"-trust-domain", "x.example", "-bundle-endpoint-url", "https://u:p@x.example"}, `invalid -bundle-endpoint-url "https://u:p@x.example": want an https URL with a host and no user info`},
		{append([]string{"-trust-domain", "x.example", "-profile", "web"}, okURL...), `invalid -profile "web": want https_spiffe or https_web`},
		{append([]string{"-trust-domain", "x.example", "-profile", "https_web", "-endpoint-spiffe-id", "spiffe://x.example/s"}, okURL...), "-endpoint-spiffe-id is for profile https_spiffe only"},
		{append([]string{"-trust-domain", "x.example", "-endpoint-spiffe-id", "spiffe://y.example/s"}, okURL...), `invalid -endpoint-spiffe-id "spiffe://y.example/s": not in trust domain x.example`},
		{append([]string{"-trust-domain", "x.example", "-bundle-file", huge}, okURL...), "-bundle-file " + huge + ": larger than 1048576 bytes, the limit of a bundle document"},
		{append([]string{"-trust-domain", "x.example", "-bundle-file", empty}, okURL...), "-bundle-file " + empty + " is empty"},
		{append([]string{"-trust-domain", "x.example", "-bundle-file", filepath.Join(dir, "none")}, okURL...), "-bundle-file: open " + filepath.Join(dir, "none") + ": no such file or directory"},
	} {
		args := append([]string{"federation", "create", "-socket", sock}, tt.args...)
		code, _, errOut := run(t, args...)
		if code != ExitUsage || !strings.HasPrefix(errOut, "sigil: "+tt.want) || strings.Count(errOut, "\n") != 1 {
			t.Errorf("%q: code %d, stderr %q, want %q", tt.args, code, errOut, tt.want)
		}
	}
	if len(f.rels) != 2 {
		t.Fatalf("invalid invocations created relationships: %v", f.rels)
	}

	// update: only the given fields change; switching to https_web drops
	// the endpoint ID, switching back restores the default.
	code, _, errOut = run(t, "federation", "update", "-socket", sock, "-trust-domain", "gcp.example", "-bundle-endpoint-url", "https://127.0.0.1:9444")
	if r := f.rels["gcp.example"]; code != 0 || r.BundleEndpointUrl != "https://127.0.0.1:9444" || r.Profile != "https_spiffe" || r.EndpointSpiffeId != "spiffe://gcp.example/sigil/server" || f.bootstrap["gcp.example"] != nil {
		t.Errorf("update url: %d %q %v", code, errOut, r)
	}
	code, _, errOut = run(t, "federation", "update", "-socket", sock, "-trust-domain", "gcp.example", "-profile", "https_web")
	if r := f.rels["gcp.example"]; code != 0 || r.Profile != "https_web" || r.EndpointSpiffeId != "" {
		t.Errorf("update to https_web: %d %q %v", code, errOut, r)
	}
	code, _, errOut = run(t, "federation", "update", "-socket", sock, "-trust-domain", "gcp.example", "-profile", "https_spiffe", "-endpoint-spiffe-id", "spiffe://gcp.example/spire/server", "-bundle-file", doc)
	if r := f.rels["gcp.example"]; code != 0 || r.Profile != "https_spiffe" || r.EndpointSpiffeId != "spiffe://gcp.example/spire/server" || string(f.bootstrap["gcp.example"]) != `{"keys": []}` {
		t.Errorf("update to https_spiffe: %d %q %v", code, errOut, r)
	}
	if code, _, errOut := run(t, "federation", "update", "-socket", sock, "-trust-domain", "gcp.example"); code != ExitUsage || !strings.Contains(errOut, "nothing to update") {
		t.Errorf("empty update: %d %q", code, errOut)
	}
	if code, _, errOut := run(t, "federation", "update", "-socket", sock, "-trust-domain", "none.example", "-profile", "https_web"); code != ExitNotFound || !strings.Contains(errOut, "update federation relationship with none.example: NotFound") {
		t.Errorf("update of a missing relationship: %d %q", code, errOut)
	}

	// list: a table, sorted by the server.
	code, out, _ = run(t, "federation", "list", "-socket", sock)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 4 || lines[0] != "Found 2 federation relationships" ||
		!strings.HasPrefix(lines[1], "TRUST DOMAIN") || strings.Fields(lines[2])[0] != "gcp.example" ||
		strings.Join(strings.Fields(lines[3]), " ") != "web.example https_web https://web.example/bundle - api" {
		t.Errorf("list: %d\n%s", code, out)
	}
	code, out, _ = run(t, "federation", "list", "-socket", sock, "-output", "json")
	var listed sigilv1.ListRelationshipsResponse
	if code != 0 || protojson.Unmarshal([]byte(out), &listed) != nil || len(listed.Relationships) != 2 || !strings.Contains(out, `"bundle_endpoint_url": "https://web.example/bundle"`) {
		t.Errorf("list json: %d %s", code, out)
	}

	// show: the relationship and its bundle's refresh state.
	now := time.Now().Unix()
	f.bundles = []*sigilv1.BundleStatus{
		{TrustDomain: "example.org", Local: true, Present: true, SequenceNumber: 9},
		{TrustDomain: "gcp.example", Present: true, SequenceNumber: 3, X509Authorities: 2, JwtAuthorities: 1, RefreshHint: 300, UpdatedAt: now - 120,
			Status: &sigilv1.FederationStatus{TrustDomain: "gcp.example", LastSuccessAt: now - 120, LastAttemptAt: now - 10, NextRefreshAt: now + 50,
				LastError: "fetch: connection refused", LastErrorAt: now - 10, ConsecutiveFailures: 2}},
	}
	code, out, _ = run(t, "federation", "show", "-socket", sock, "-trust-domain", "gcp.example")
	for _, line := range []string{"Endpoint SPIFFE ID  : spiffe://gcp.example/spire/server", "Bundle sequence     : 3", "Authorities         : 2 X.509, 1 JWT",
		"Refresh hint        : 5m0s", "Last success        : 2m ago", "Last error          : fetch: connection refused (10s ago, 2 consecutive failures)"} {
		if code != 0 || !strings.Contains(out, line) {
			t.Errorf("show lacks %q: %d\n%s", line, code, out)
		}
	}
	code, out, _ = run(t, "federation", "show", "-socket", sock, "-trust-domain", "web.example")
	if code != 0 || !strings.Contains(out, "Bundle              : none yet") || !strings.Contains(out, "Last fetch          : not attempted yet") {
		t.Errorf("show of a relationship without a bundle: %d\n%s", code, out)
	}

	// delete, with and without the bundle.
	code, out, _ = run(t, "federation", "delete", "-socket", sock, "-trust-domain", "web.example", "-keep-bundle")
	if code != 0 || out != "Deleted federation relationship with web.example (bundle kept)\n" || !f.deleted[0].KeepBundle {
		t.Errorf("delete -keep-bundle: %d %q %v", code, out, f.deleted)
	}
	code, out, _ = run(t, "federation", "delete", "-socket", sock, "-trust-domain", "gcp.example")
	if code != 0 || out != "Deleted federation relationship with gcp.example and its bundle\n" || f.deleted[1].KeepBundle || len(f.rels) != 0 {
		t.Errorf("delete: %d %q %v", code, out, f.deleted)
	}
	if code, _, errOut := run(t, "federation", "delete", "-socket", sock, "-trust-domain", "gcp.example"); code != ExitNotFound || !strings.Contains(errOut, "NotFound") {
		t.Errorf("second delete: %d %q", code, errOut)
	}
}

func TestFederationRefresh(t *testing.T) {
	f := newFakeFederation()
	sock := startFakeServer(t, newFakeAdmin(), f)
	f.refreshed["gcp.example"] = &sigilv1.BundleStatus{TrustDomain: "gcp.example", Present: true, SequenceNumber: 5, X509Authorities: 1,
		Status: &sigilv1.FederationStatus{TrustDomain: "gcp.example", LastSuccessAt: time.Now().Unix(), NextRefreshAt: time.Now().Unix() + 300}}
	f.refreshed["bad.example"] = &sigilv1.BundleStatus{TrustDomain: "bad.example", Present: true, SequenceNumber: 2,
		Status: &sigilv1.FederationStatus{TrustDomain: "bad.example", LastError: "federation: bundle of trust domain \"other.example\", want \"bad.example\"\nsecond line"}}

	code, out, errOut := run(t, "federation", "refresh", "-socket", sock, "-trust-domain", "gcp.example", "-timeout", "3s")
	if code != 0 || !strings.HasPrefix(out, "Refreshed the bundle of gcp.example: sequence 5, 1 X.509 and 0 JWT authorities, next refresh in ") {
		t.Errorf("refresh: %d %q %q", code, out, errOut)
	}
	if r := f.refreshes[0]; r.TrustDomain != "gcp.example" || r.TimeoutMs != 3000 {
		t.Errorf("refresh request = %v, want gcp.example with 3000 ms", r)
	}
	// A failed attempt: exit 1 and the error, on one line.
	code, out, errOut = run(t, "federation", "refresh", "-socket", sock, "-trust-domain", "bad.example")
	if code != 1 || out != "" || errOut != "sigil: refresh bundle of bad.example: federation: bundle of trust domain \"other.example\", want \"bad.example\"; second line (the last good bundle stays in use)\n" {
		t.Errorf("failed refresh: %d %q %q", code, out, errOut)
	}
	if f.refreshes[1].TimeoutMs != 10000 {
		t.Errorf("default timeout = %d ms, want 10000", f.refreshes[1].TimeoutMs)
	}
	// JSON prints the status, and still exits 1 when the attempt failed.
	code, out, _ = run(t, "federation", "refresh", "-socket", sock, "-trust-domain", "bad.example", "-output", "json")
	if code != 1 || !strings.Contains(out, `"last_error": "federation: bundle of trust domain`) {
		t.Errorf("failed refresh json: %d %q", code, out)
	}
	if code, _, errOut := run(t, "federation", "refresh", "-socket", sock, "-trust-domain", "none.example"); code != ExitNotFound || !strings.Contains(errOut, "refresh bundle of none.example: NotFound") {
		t.Errorf("refresh of a missing relationship: %d %q", code, errOut)
	}
	if code, _, errOut := run(t, "federation", "refresh", "-socket", sock, "-trust-domain", "gcp.example", "-timeout", "0s"); code != ExitUsage || !strings.Contains(errOut, "-timeout 0s must be positive") {
		t.Errorf("zero timeout: %d %q", code, errOut)
	}
	// The server's DeadlineExceeded (no attempt in time) is its message,
	// not "the server did not answer".
	if code, _, errOut := run(t, "federation", "refresh", "-socket", sock, "-trust-domain", "slow.example", "-timeout", "1s"); code != 1 ||
		errOut != "sigil: refresh bundle of slow.example: DeadlineExceeded: no refresh attempt of \"slow.example\" within 1s (the leader refreshes; is it up?)\n" {
		t.Errorf("refresh without an attempt: %d %q", code, errOut)
	}
	if len(f.refreshes) != 5 {
		t.Errorf("%d refresh calls, want 5", len(f.refreshes))
	}
}

func TestBundleFederationCommands(t *testing.T) {
	a := newFakeAdmin()
	f := newFakeFederation()
	sock := startFakeServer(t, a, f)
	ca := newTestCA(t, "gcp.example")
	a.foreign = map[string]*sigilv1.Bundle{"gcp.example": {TrustDomain: "gcp.example", X509Authorities: []*sigilv1.X509Authority{{Certificate: ca.cert.Raw}}}}

	// set from stdin (SPIFFE, the default format) and from a PEM file.
	code, out, errOut := runIn(t, strings.NewReader(`{"keys": []}`), "bundle", "set", "-socket", sock, "-trust-domain", "spiffe://gcp.example", "-file", "-")
	if code != 0 || out != "Set the bundle of gcp.example: sequence 4, 2 X.509 and 1 JWT authorities\n" {
		t.Errorf("set: %d %q %q", code, out, errOut)
	}
	pemFile := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(pemFile, []byte("-----BEGIN CERTIFICATE-----\n"), 0o600)
	if code, _, errOut := run(t, "bundle", "set", "-socket", sock, "-trust-domain", "legacy.example", "-file", pemFile, "-format", "pem"); code != 0 {
		t.Errorf("set pem: %d %q", code, errOut)
	}
	if len(f.sets) != 2 || f.sets[0].TrustDomain != "gcp.example" || f.sets[0].Format != "spiffe" || string(f.sets[0].Document) != `{"keys": []}` ||
		f.sets[1].Format != "pem" || f.sets[1].TrustDomain != "legacy.example" {
		t.Errorf("set requests = %v", f.sets)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"-file", pemFile}, "-trust-domain is required"},
		{[]string{"-trust-domain", "x.example"}, `-file is required ("-" for stdin)`},
		{[]string{"-trust-domain", "x.example", "-file", pemFile, "-format", "der"}, `invalid -format "der": want spiffe or pem`},
	} {
		code, _, errOut := run(t, append([]string{"bundle", "set", "-socket", sock}, tt.args...)...)
		if code != ExitUsage || errOut != "sigil: "+tt.want+"\n" {
			t.Errorf("%q: %d %q, want %q", tt.args, code, errOut, tt.want)
		}
	}
	if code, _, errOut := runIn(t, bytes.NewReader(bytes.Repeat([]byte("{"), federation.MaxDocumentSize+1)), "bundle", "set", "-socket", sock, "-trust-domain", "x.example", "-file", "-"); code != ExitUsage || !strings.Contains(errOut, "-file -: larger than 1048576 bytes") {
		t.Errorf("oversized stdin: %d %q", code, errOut)
	}
	if len(f.sets) != 2 {
		t.Errorf("invalid invocations set bundles: %d", len(f.sets))
	}

	// delete.
	code, out, _ = run(t, "bundle", "delete", "-socket", sock, "-trust-domain", "legacy.example")
	if code != 0 || out != "Deleted the bundle of legacy.example\n" || len(f.bundleDel) != 1 || f.bundleDel[0] != "legacy.example" {
		t.Errorf("delete: %d %q %v", code, out, f.bundleDel)
	}

	// show -trust-domain prints a federated bundle.
	code, out, _ = run(t, "bundle", "show", "-socket", sock, "-trust-domain", "gcp.example")
	if code != 0 || !strings.HasPrefix(out, "-----BEGIN CERTIFICATE-----\n") {
		t.Errorf("show -trust-domain: %d %q", code, out)
	}
	if code, _, errOut := run(t, "bundle", "show", "-socket", sock, "-trust-domain", "none.example"); code != ExitNotFound || errOut != "sigil: show bundle of none.example: NotFound: no bundle of trust domain \"none.example\"\n" {
		t.Errorf("show of a missing bundle: %d %q", code, errOut)
	}

	// list.
	f.bundles = []*sigilv1.BundleStatus{{TrustDomain: "example.org", Local: true, Present: true, SequenceNumber: 9, X509Authorities: 2, JwtAuthorities: 2}}
	code, out, _ = run(t, "bundle", "list", "-socket", sock)
	if code != 0 || !strings.HasPrefix(out, "TRUST DOMAIN") || strings.Join(strings.Fields(strings.Split(out, "\n")[1]), " ") != "example.org local 9 2 2 - - - -" {
		t.Errorf("list: %d\n%s", code, out)
	}
	code, out, _ = run(t, "bundle", "list", "-socket", sock, "-output", "json")
	if code != 0 || !strings.Contains(out, `"local": true`) || !strings.Contains(out, `"sequence_number": "9"`) {
		t.Errorf("list json: %d\n%s", code, out)
	}
}

func TestPrintBundleList(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) int64 { return now.Add(d).Unix() }
	bundles := []*sigilv1.BundleStatus{
		{TrustDomain: "aws.example", Local: true, Present: true, SequenceNumber: 13, X509Authorities: 3, JwtAuthorities: 2,
			PartnerFetches: []*sigilv1.PartnerFetch{
				{TrustDomain: "web.example", SequenceNumber: 13, FetchedAt: at(-5 * time.Second)},
				{TrustDomain: "gcp.example", SequenceNumber: 12, FetchedAt: at(-3 * time.Minute)},
			}},
		{TrustDomain: "gcp.example", Present: true, SequenceNumber: 7, X509Authorities: 2, JwtAuthorities: 1, UpdatedAt: at(-time.Hour),
			Relationship: &sigilv1.FederationRelationship{TrustDomain: "gcp.example"},
			Status:       &sigilv1.FederationStatus{LastSuccessAt: at(-12 * time.Second), NextRefreshAt: at(4 * time.Minute)}},
		{TrustDomain: "down.example",
			Relationship: &sigilv1.FederationRelationship{TrustDomain: "down.example"},
			Status:       &sigilv1.FederationStatus{LastError: "dial tcp 127.0.0.1:1: connection refused", NextRefreshAt: at(2 * time.Second)}},
		{TrustDomain: "static.example", Present: true, X509Authorities: 1, UpdatedAt: at(-50 * time.Hour)},
	}
	var buf bytes.Buffer
	printBundleList(&buf, bundles, now)
	want := `TRUST DOMAIN    KIND       SEQUENCE  X509  JWT  AGE      NEXT REFRESH  LAST ERROR                                PARTNERS
aws.example     local      13        3     2    -        -             -                                         gcp.example@12,web.example@13
gcp.example     federated  7         2     1    12s ago  in 4m         -                                         -
down.example    federated  none      0     0    -        in 2s         dial tcp 127.0.0.1:1: connection refused  -
static.example  federated  0         1     0    2d ago   -             -                                         -
partner gcp.example last fetched sequence 12 of aws.example (3m ago); the current sequence is 13
`
	if buf.String() != want {
		t.Errorf("bundle list =\n%s\nwant\n%s", buf.String(), want)
	}
}

func TestRelTime(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 500_000_000, time.UTC)
	for _, tt := range []struct {
		d    time.Duration
		want string
	}{
		{0, "now"},
		{-12 * time.Second, "12s ago"},
		{4 * time.Minute, "in 4m"},
		{4*time.Minute + 59*time.Second, "in 4m"},
		{-3 * time.Hour, "3h ago"},
		{47 * time.Hour, "in 47h"},
		{-72 * time.Hour, "3d ago"},
	} {
		if got := relTime(now, now.Truncate(time.Second).Add(tt.d).Unix()); got != tt.want {
			t.Errorf("relTime(%v) = %q, want %q", tt.d, got, tt.want)
		}
	}
	if got := relTime(now, 0); got != "-" {
		t.Errorf("relTime(0) = %q, want -", got)
	}
}

func TestEntryFederatesWith(t *testing.T) {
	a := newFakeAdmin()
	sock := startFakeServer(t, a, newFakeFederation())
	code, out, errOut := run(t, "entry", "create", "-socket", sock, "-spiffe-id", "spiffe://example.org/api", "-parent-id", agentID,
		"-selector", "unix:uid:1001", "-federates-with", "spiffe://gcp.example", "-federates-with", "web.example", "-federates-with", "gcp.example")
	if code != 0 {
		t.Fatalf("create: %d %q", code, errOut)
	}
	if got := a.entries["e1"].FederatesWith; strings.Join(got, ",") != "gcp.example,web.example" {
		t.Errorf("federates_with = %q, want gcp.example and web.example once each", got)
	}
	if !strings.Contains(out, "Federates with   : gcp.example\nFederates with   : web.example\n") {
		t.Errorf("create output:\n%s", out)
	}
	code, out, _ = run(t, "entry", "show", "-socket", sock, "-id", "e1")
	if code != 0 || !strings.Contains(out, "Federates with   : web.example") {
		t.Errorf("show: %d\n%s", code, out)
	}
	code, out, _ = run(t, "entry", "list", "-socket", sock)
	if code != 0 || !strings.Contains(out, "Federates with   : gcp.example") {
		t.Errorf("list: %d\n%s", code, out)
	}

	// update replaces the list; an empty value clears it.
	if code, _, errOut := run(t, "entry", "update", "-socket", sock, "-id", "e1", "-federates-with", "aws2.example"); code != 0 || strings.Join(a.entries["e1"].FederatesWith, ",") != "aws2.example" {
		t.Errorf("update: %d %q %q", code, errOut, a.entries["e1"].FederatesWith)
	}
	if code, _, errOut := run(t, "entry", "update", "-socket", sock, "-id", "e1", "-federates-with", ""); code != 0 || len(a.entries["e1"].FederatesWith) != 0 {
		t.Errorf("clear: %d %q %q", code, errOut, a.entries["e1"].FederatesWith)
	}
	if code, _, errOut := run(t, "entry", "update", "-socket", sock, "-id", "e1", "-federates-with", "spiffe://gcp.example/x"); code != ExitUsage || !strings.Contains(errOut, `invalid -federates-with "spiffe://gcp.example/x"`) {
		t.Errorf("bad -federates-with: %d %q", code, errOut)
	}

	// The batch file: "federates_with", with spiffe:// stripped.
	dir := t.TempDir()
	batch := filepath.Join(dir, "entries.json")
	os.WriteFile(batch, []byte(`{"entries": [{"spiffe_id": "spiffe://example.org/b", "parent_id": "`+agentID+`", "selectors": [{"type": "unix", "value": "uid:2"}], "federates_with": ["spiffe://gcp.example", "web.example"]}]}`), 0o600)
	code, _, errOut = run(t, "entry", "create", "-socket", sock, "-data", batch)
	if code != 0 || strings.Join(a.entries["e2"].GetFederatesWith(), ",") != "gcp.example,web.example" {
		t.Errorf("batch: %d %q %v", code, errOut, a.entries["e2"])
	}
	os.WriteFile(batch, []byte(`{"entries": [{"spiffe_id": "spiffe://example.org/c", "parent_id": "`+agentID+`", "selectors": [{"type": "unix", "value": "uid:2"}], "federates_with": ["Bad Domain"]}]}`), 0o600)
	if code, _, errOut := run(t, "entry", "create", "-socket", sock, "-data", batch); code != ExitUsage || !strings.HasPrefix(errOut, "sigil: -data "+batch+`: entry 0: federates_with: "Bad Domain": `) {
		t.Errorf("bad batch: %d %q", code, errOut)
	}
	if code, _, errOut := run(t, "entry", "create", "-socket", sock, "-data", batch, "-federates-with", "x.example"); code != ExitUsage || !strings.Contains(errOut, "-data and -federates-with are mutually exclusive") {
		t.Errorf("-data with -federates-with: %d %q", code, errOut)
	}
}
