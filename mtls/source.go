package mtls

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-id/sigil/internal/unixsock"
)

// DefaultSocket is where `sigil agent` run by root serves the Workload API
// unless configured otherwise; it is used when neither WithSocket nor
// SPIFFE_ENDPOINT_SOCKET says where to connect and the current user runs
// no agent (or `sigil dev`) of their own under $XDG_RUNTIME_DIR/sigil.
const DefaultSocket = "/run/sigil/agent/public/api.sock"

// SocketEnv is the standard environment variable naming the Workload API
// address.
const SocketEnv = "SPIFFE_ENDPOINT_SOCKET"

// ErrNoIdentity is returned (wrapped) by NewSource when the Workload API
// answers that no identity is issued to the calling process.
var ErrNoIdentity = errors.New("mtls: no identity issued to this process")

// ErrSocketMissing is returned (wrapped) by NewSource when the Workload
// API socket does not exist.
var ErrSocketMissing = errors.New("mtls: Workload API socket not found")

// X509Source is what ServerConfig and ClientConfig need: the current
// X.509-SVID to present and the trust bundles (own and federated) to
// verify peers with. *Source implements it, as do go-spiffe's
// workloadapi.X509Source and mtlstest.Source.
type X509Source interface {
	x509svid.Source
	x509bundle.Source
}

// Source keeps this process's X.509-SVIDs, its trust bundle and the
// federated bundles current, from a stream of the SPIFFE Workload API.
// TLS configurations built on it pick up every rotation at the next
// handshake; nothing needs a restart. It is safe for concurrent use.
type Source struct {
	addr   string
	picker func([]*x509svid.SVID) *x509svid.SVID
	log    *zap.Logger
	client *workloadapi.Client
	cancel context.CancelFunc
	done   chan struct{}

	mu       sync.RWMutex
	svids    []*x509svid.SVID
	svid     *x509svid.SVID
	bundles  *x509bundle.Set
	closed   bool
	nextSub  int
	subs     map[int]func(*x509svid.SVID)
	initDone bool
	initErr  chan error
	initWhy  error // why the first update was not usable yet
}

// SourceOption configures NewSource.
type SourceOption interface {
	applySource(*sourceConfig)
}

type sourceConfig struct {
	addr       string
	picker     func([]*x509svid.SVID) *x509svid.SVID
	log        *zap.Logger
	onRotate   []func(*x509svid.SVID)
	clientOpts []workloadapi.ClientOption
}

type sourceOptionFunc func(*sourceConfig)

func (f sourceOptionFunc) applySource(c *sourceConfig) { f(c) }

// WithSocket sets the Workload API address: a socket path, or a
// "unix:///path" or "tcp://host:port" address. The default is
// $SPIFFE_ENDPOINT_SOCKET, then DefaultSocket.
func WithSocket(addr string) SourceOption {
	return sourceOptionFunc(func(c *sourceConfig) { c.addr = addr })
}

// WithSVIDPicker chooses which SVID to present when the process has more
// than one (the default is the first, as the Workload API orders them).
func WithSVIDPicker(pick func([]*x509svid.SVID) *x509svid.SVID) SourceOption {
	return sourceOptionFunc(func(c *sourceConfig) { c.picker = pick })
}

// WithSVIDID presents the SVID with this SPIFFE ID; NewSource waits for it
// and fails if the process is not issued it.
func WithSVIDID(id spiffeid.ID) SourceOption {
	return WithSVIDPicker(func(svids []*x509svid.SVID) *x509svid.SVID {
		for _, s := range svids {
			if s.ID == id {
				return s
			}
		}
		return nil
	})
}

// WithSVIDHint presents the SVID whose registration entry has this hint.
func WithSVIDHint(hint string) SourceOption {
	return WithSVIDPicker(func(svids []*x509svid.SVID) *x509svid.SVID {
		for _, s := range svids {
			if s.Hint == hint {
				return s
			}
		}
		return nil
	})
}

// WithOnRotate calls fn with the new SVID each time the presented SVID
// changes (rotation, or a different identity). Calls are serialized.
func WithOnRotate(fn func(*x509svid.SVID)) SourceOption {
	return sourceOptionFunc(func(c *sourceConfig) { c.onRotate = append(c.onRotate, fn) })
}

// WithClientOptions passes options to go-spiffe's Workload API client.
func WithClientOptions(opts ...workloadapi.ClientOption) SourceOption {
	return sourceOptionFunc(func(c *sourceConfig) { c.clientOpts = append(c.clientOpts, opts...) })
}

// LoggerOption is an option accepted by every constructor of this package.
type LoggerOption struct{ log *zap.Logger }

func (o LoggerOption) applySource(c *sourceConfig)     { c.log = o.log }
func (o LoggerOption) applyEnforcer(c *enforcerConfig) { c.log = o.log }

// WithLogger sets the zap logger of a Source or an Enforcer.
func WithLogger(l *zap.Logger) LoggerOption { return LoggerOption{log: l} }

// workloadAddr turns a socket setting into a Workload API address and
// the socket path to check (empty for tcp).
func workloadAddr(s string) (addr, path string, err error) {
	switch {
	case strings.HasPrefix(s, "unix://"):
		return s, strings.TrimPrefix(s, "unix://"), nil
	case strings.HasPrefix(s, "unix:"):
		p := strings.TrimPrefix(s, "unix:")
		return "unix://" + p, p, nil
	case strings.HasPrefix(s, "tcp:"):
		return s, "", nil
	}
	abs, err := filepath.Abs(s)
	if err != nil {
		return "", "", err
	}
	return "unix://" + abs, abs, nil
}

// NewSource connects to the Workload API and waits, until ctx is done, for
// this process's first X.509-SVID. It fails fast with ErrSocketMissing if
// the socket does not exist and with ErrNoIdentity if the agent answers
// that no identity is issued to the process. Close releases it.
func NewSource(ctx context.Context, opts ...SourceOption) (*Source, error) {
	cfg := sourceConfig{log: zap.NewNop()}
	for _, o := range opts {
		o.applySource(&cfg)
	}
	setting := cfg.addr
	if setting == "" {
		setting = os.Getenv(SocketEnv)
	}
	if setting == "" {
		setting = unixsock.ClientSocket(unixsock.WorkloadSocketName)
	}
	addr, path, err := workloadAddr(setting)
	if err != nil {
		return nil, fmt.Errorf("mtls: Workload API address %q: %v", setting, err)
	}
	if path != "" {
		if _, err := os.Stat(path); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("%w: %s does not exist (is the sigil agent running? set %s or use mtls.WithSocket)", ErrSocketMissing, path, SocketEnv)
			}
			return nil, fmt.Errorf("mtls: Workload API socket %s: %v", path, err)
		}
	}
	client, err := workloadapi.New(ctx, append([]workloadapi.ClientOption{workloadapi.WithAddr(addr)}, cfg.clientOpts...)...)
	if err != nil {
		return nil, fmt.Errorf("mtls: Workload API client for %s: %v", addr, err)
	}
	picker := cfg.picker
	if picker == nil {
		picker = func(s []*x509svid.SVID) *x509svid.SVID { return s[0] }
	}
	wctx, cancel := context.WithCancel(context.Background())
	s := &Source{
		addr:    addr,
		picker:  picker,
		log:     cfg.log,
		client:  client,
		cancel:  cancel,
		done:    make(chan struct{}),
		subs:    map[int]func(*x509svid.SVID){},
		initErr: make(chan error, 1),
	}
	for _, fn := range cfg.onRotate {
		s.OnRotate(fn)
	}
	go func() {
		defer close(s.done)
		_ = client.WatchX509Context(wctx, (*sourceWatcher)(s))
	}()
	select {
	case err := <-s.initErr:
		if err != nil {
			s.Close()
			return nil, err
		}
		return s, nil
	case <-ctx.Done():
		s.mu.RLock()
		why := s.initWhy
		s.mu.RUnlock()
		s.Close()
		if why != nil {
			return nil, fmt.Errorf("%w (waited until %v)", why, ctx.Err())
		}
		return nil, fmt.Errorf("mtls: no X.509-SVID from the Workload API at %s before %v (is this process registered? check `sigil entry list`)", addr, ctx.Err())
	}
}

// sourceWatcher receives the Workload API stream.
type sourceWatcher Source

func (w *sourceWatcher) OnX509ContextUpdate(xc *workloadapi.X509Context) {
	s := (*Source)(w)
	var picked *x509svid.SVID
	if len(xc.SVIDs) > 0 {
		picked = s.picker(xc.SVIDs)
	}
	s.mu.Lock()
	if picked == nil {
		ids := make([]string, len(xc.SVIDs))
		for i, sv := range xc.SVIDs {
			ids[i] = sv.ID.String()
		}
		err := fmt.Errorf("%w: none of the SVIDs issued to this process (%s) is the one asked for", ErrNoIdentity, strings.Join(ids, ", "))
		if !s.initDone {
			// Entries reach the agent one by one: wait for the wanted
			// SVID until NewSource's context ends.
			s.initWhy = err
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		s.log.Error("Workload API update without the wanted SVID; keeping the current one", zap.Error(err))
		return
	}
	old := s.svid
	s.svids, s.svid, s.bundles = xc.SVIDs, picked, xc.Bundles
	first := !s.initDone
	s.initDone = true
	var subs []func(*x509svid.SVID)
	rotated := old != nil && !sameCert(old, picked)
	if rotated {
		for _, fn := range s.subs {
			subs = append(subs, fn)
		}
	}
	s.mu.Unlock()
	if first {
		s.log.Info("X.509-SVID received", zap.String("spiffe_id", picked.ID.String()),
			zap.Time("expires", picked.Certificates[0].NotAfter), zap.Int("bundles", xc.Bundles.Len()))
		s.signalInit(nil)
	}
	if rotated {
		s.log.Info("X.509-SVID rotated", zap.String("spiffe_id", picked.ID.String()),
			zap.String("serial", picked.Certificates[0].SerialNumber.String()), zap.Time("expires", picked.Certificates[0].NotAfter))
		for _, fn := range subs {
			fn(picked)
		}
	}
}

func (w *sourceWatcher) OnX509ContextWatchError(err error) {
	s := (*Source)(w)
	s.mu.RLock()
	initDone, closed := s.initDone, s.closed
	s.mu.RUnlock()
	if closed || errors.Is(err, context.Canceled) {
		return
	}
	if !initDone {
		if st, ok := status.FromError(err); ok && st.Code() == codes.PermissionDenied {
			exe, _ := os.Executable()
			s.signalInit(fmt.Errorf("%w by the Workload API at %s (%s); register it, e.g. sigil entry create -spiffe-id spiffe://TD/NAME -parent-id AGENT_ID -selector unix:uid:%d -selector unix:path:%s",
				ErrNoIdentity, s.addr, st.Message(), os.Getuid(), exe))
			return
		}
		s.log.Debug("Workload API not ready; retrying", zap.String("addr", s.addr), zap.Error(err))
		return
	}
	s.log.Warn("Workload API stream error; keeping the current SVID and retrying", zap.String("addr", s.addr), zap.Error(err))
}

func (s *Source) signalInit(err error) {
	select {
	case s.initErr <- err:
	default:
	}
}

func sameCert(a, b *x509svid.SVID) bool {
	return a.ID == b.ID && len(a.Certificates) > 0 && len(b.Certificates) > 0 &&
		a.Certificates[0].Equal(b.Certificates[0])
}

// GetX509SVID returns the SVID presented now. It implements
// x509svid.Source.
func (s *Source) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, errors.New("mtls: source is closed")
	}
	if s.svid == nil {
		return nil, errors.New("mtls: no X.509-SVID yet")
	}
	return s.svid, nil
}

// GetX509BundleForTrustDomain returns the current bundle of td: this
// process's trust domain or a federated one. It implements
// x509bundle.Source.
func (s *Source) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, errors.New("mtls: source is closed")
	}
	if s.bundles == nil {
		return nil, errors.New("mtls: no trust bundle yet")
	}
	b, ok := s.bundles.Get(td)
	if !ok {
		return nil, fmt.Errorf("mtls: no trust bundle for trust domain %q (not this trust domain and not federated with it)", td)
	}
	return b, nil
}

// ID is the SPIFFE ID presented now.
func (s *Source) ID() spiffeid.ID {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.svid == nil {
		return spiffeid.ID{}
	}
	return s.svid.ID
}

// SVIDs returns every X.509-SVID issued to this process.
func (s *Source) SVIDs() []*x509svid.SVID {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return append([]*x509svid.SVID(nil), s.svids...)
}

// Bundles returns the current trust bundles, federated ones included.
func (s *Source) Bundles() *x509bundle.Set {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.bundles == nil {
		return x509bundle.NewSet()
	}
	return x509bundle.NewSet(s.bundles.Bundles()...)
}

// OnRotate calls fn with the new SVID each time the presented SVID
// changes, until the returned function is called.
func (s *Source) OnRotate(fn func(*x509svid.SVID)) (remove func()) {
	s.mu.Lock()
	id := s.nextSub
	s.nextSub++
	s.subs[id] = fn
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		delete(s.subs, id)
		s.mu.Unlock()
	}
}

// Close stops the Workload API stream. TLS configurations built on the
// source fail new handshakes after Close; established connections are
// not affected. Close is idempotent.
func (s *Source) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	<-s.done
	return s.client.Close()
}
