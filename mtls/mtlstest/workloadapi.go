package mtlstest

import (
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"sync"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// WorkloadAPI is a fake SPIFFE Workload API server on a unix socket. It
// streams whatever X.509-SVIDs and bundles the test sets, pushing a new
// message to every open stream on each change, or answers PermissionDenied
// "no identity issued" as Sigil's agent does for an unregistered caller.
// JWT methods answer Unimplemented.
type WorkloadAPI struct {
	workload.UnimplementedSpiffeWorkloadAPIServer

	path string
	srv  *grpc.Server

	mu      sync.Mutex
	resp    *workload.X509SVIDResponse // nil: no identity
	changed chan struct{}              // closed and replaced on every change
	sent    int                        // X509SVIDResponses sent, all streams
}

// StartWorkloadAPI serves the fake Workload API in dir (a short directory:
// unix socket paths are limited to about 100 bytes). Stop it with Stop.
func StartWorkloadAPI(dir string) (*WorkloadAPI, error) {
	path := filepath.Join(dir, "api.sock")
	_ = os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	w := &WorkloadAPI{path: path, srv: grpc.NewServer(), changed: make(chan struct{})}
	workload.RegisterSpiffeWorkloadAPIServer(w.srv, w)
	go func() { _ = w.srv.Serve(l) }()
	return w, nil
}

// Addr is the socket address, "unix:///path/api.sock".
func (w *WorkloadAPI) Addr() string { return "unix://" + w.path }

// Path is the socket path.
func (w *WorkloadAPI) Path() string { return w.path }

// Stop stops the server, ending every stream.
func (w *WorkloadAPI) Stop() { w.srv.Stop() }

// SetX509 serves svids (the first is the default), the bundle of their
// trust domain, and federated bundles.
func (w *WorkloadAPI) SetX509(svids []*x509svid.SVID, bundle *x509bundle.Bundle, federated ...*x509bundle.Bundle) error {
	resp := &workload.X509SVIDResponse{FederatedBundles: map[string][]byte{}}
	for _, s := range svids {
		chain, key, err := s.MarshalRaw()
		if err != nil {
			return err
		}
		resp.Svids = append(resp.Svids, &workload.X509SVID{
			SpiffeId:    s.ID.String(),
			X509Svid:    chain,
			X509SvidKey: key,
			Bundle:      concat(bundle.X509Authorities()),
			Hint:        s.Hint,
		})
	}
	for _, f := range federated {
		resp.FederatedBundles[f.TrustDomain().IDString()] = concat(f.X509Authorities())
	}
	w.set(resp)
	return nil
}

// DenyIdentity makes the server answer PermissionDenied, "no identity
// issued", to new and open streams.
func (w *WorkloadAPI) DenyIdentity() { w.set(nil) }

func (w *WorkloadAPI) set(resp *workload.X509SVIDResponse) {
	w.mu.Lock()
	w.resp = resp
	close(w.changed)
	w.changed = make(chan struct{})
	w.mu.Unlock()
}

func concat(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, c.Raw...)
	}
	return out
}

// FetchX509SVID implements the Workload API.
func (w *WorkloadAPI) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	for {
		w.mu.Lock()
		resp, changed := w.resp, w.changed
		w.mu.Unlock()
		if resp == nil {
			return status.Error(codes.PermissionDenied, "no identity issued")
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
		w.mu.Lock()
		w.sent++
		w.mu.Unlock()
		select {
		case <-changed:
		case <-stream.Context().Done():
			return nil
		}
	}
}

// SentX509SVIDs returns how many X509SVIDResponses the fake has sent on
// all FetchX509SVID streams: a test waits on it to know that a client
// holds the current response before it changes it.
func (w *WorkloadAPI) SentX509SVIDs() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.sent
}

// FetchX509Bundles implements the Workload API.
func (w *WorkloadAPI) FetchX509Bundles(_ *workload.X509BundlesRequest, stream grpc.ServerStreamingServer[workload.X509BundlesResponse]) error {
	for {
		w.mu.Lock()
		resp, changed := w.resp, w.changed
		w.mu.Unlock()
		if resp == nil {
			return status.Error(codes.PermissionDenied, "no identity issued")
		}
		out := &workload.X509BundlesResponse{Bundles: map[string][]byte{}}
		for k, v := range resp.FederatedBundles {
			out.Bundles[k] = v
		}
		for _, s := range resp.Svids {
			if id, err := spiffeTD(s.SpiffeId); err == nil {
				out.Bundles[id] = s.Bundle
			}
		}
		if err := stream.Send(out); err != nil {
			return err
		}
		select {
		case <-changed:
		case <-stream.Context().Done():
			return nil
		}
	}
}

func spiffeTD(id string) (string, error) {
	sid, err := spiffeid.FromString(id)
	if err != nil {
		return "", err
	}
	return sid.TrustDomain().IDString(), nil
}
