package workloadapi

// Envoy's Secret Discovery Service (SDS v3), served beside the Workload
// API: an Envoy on the node gets its SVIDs and trust bundles as Envoy
// secrets, pushed on every rotation. Its calls are attested exactly like
// Workload API calls (peer credentials pinned at connect time, selectors,
// the liveness re-check before every message after the first), so an
// Envoy gets the identities its own process is entitled to and nothing
// else. Envoy sends no Workload API security header; SDS calls are exempt
// from that check (isSDSMethod).

import (
	"context"
	"errors"
	"io"
	"maps"
	"slices"
	"strconv"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	grpcstatus "google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// SDSMeter is implemented by a Meter that also counts what the Secret
// Discovery Service refuses. Methods are called concurrently and must not
// block.
type SDSMeter interface {
	// SDSResourceRefused counts a resource name that a caller asked for
	// and does not get, once per call and name; reason is
	// SDSRefusedInvalid or SDSRefusedNotEntitled.
	SDSResourceRefused(reason string)
	// SDSRejected counts a response that the client rejected (a NACK:
	// a request with the response's nonce and an error_detail).
	SDSRejected()
}

// sdsMethodPrefix is the prefix of the SDS methods' full names.
const sdsMethodPrefix = "/envoy.service.secret.v3.SecretDiscoveryService/"

// isSDSMethod reports whether fullMethod is an SDS method, which Envoy
// calls without the Workload API security header.
func isSDSMethod(fullMethod string) bool {
	return len(fullMethod) > len(sdsMethodPrefix) && fullMethod[:len(sdsMethodPrefix)] == sdsMethodPrefix
}

// maxRefusedRemembered bounds the names a call remembers having refused
// (to log and count each once); past it the memory starts over.
const maxRefusedRemembered = 4 * MaxSDSResourceNames

// sdsServer is the SecretDiscoveryService of a Server.
type sdsServer struct {
	secretv3.UnimplementedSecretDiscoveryServiceServer
	s *Server
}

var _ secretv3.SecretDiscoveryServiceServer = (*sdsServer)(nil)

// sdsCall is one SDS call: its attested caller, the caller's cache
// subscription and its latest snapshot.
type sdsCall struct {
	s    *Server
	ctx  context.Context
	info *PeerInfo
	sels []*sigilv1.Selector
	sub  X509Subscription
	snap *X509Snapshot
	// refused are the names refused on this call so far.
	refused map[string]struct{}
	// sent counts the messages sent.
	sent int
	// nacked is the nonce of the last rejection logged.
	nacked string
}

// open attests the caller and subscribes to its identities.
func (h *sdsServer) open(ctx context.Context) (*sdsCall, error) {
	sels, err := h.s.attest(ctx)
	if err != nil {
		return nil, err
	}
	info, err := peerInfo(ctx)
	if err != nil {
		return nil, err
	}
	return &sdsCall{
		s: h.s, ctx: ctx, info: info, sels: sels,
		sub:     h.s.cache.SubscribeX509(sels),
		refused: make(map[string]struct{}),
	}, nil
}

func (c *sdsCall) close() { c.sub.Close() }

// update takes the subscription's next snapshot. A caller left with no
// identity gets the Workload API's refusal: PermissionDenied, "no
// identity issued".
func (c *sdsCall) update(snap *X509Snapshot, ok bool) error {
	if !ok || snap == nil {
		return grpcstatus.Error(codes.Unavailable, "workload API cache subscription ended")
	}
	if len(snap.Identities) == 0 {
		return c.s.noIdentity(c.ctx, c.sels)
	}
	c.snap = snap
	return nil
}

// wait waits for the first snapshot.
func (c *sdsCall) wait() error {
	select {
	case <-c.ctx.Done():
		return grpcstatus.FromContextError(c.ctx.Err()).Err()
	case <-c.s.stopping:
		return errShuttingDown
	case snap, ok := <-c.sub.Updates():
		return c.update(snap, ok)
	}
}

var errShuttingDown = grpcstatus.Error(codes.Unavailable, "workload API is shutting down")

// build builds the named resources (and every resource the caller may
// have, with wildcard) from the latest snapshot; the names refused for
// the first time on this call are counted and logged.
func (c *sdsCall) build(names []string, wildcard bool) ([]sdsResource, error) {
	b := newSDSBuilder(c.snap)
	if wildcard {
		names = append(b.wildcardNames(), names...)
	}
	rs, refused, err := b.build(names)
	if err != nil {
		c.s.log.Error("building SDS secrets", zap.Error(err))
		return nil, grpcstatus.Error(codes.Internal, "cannot encode secrets")
	}
	c.refuse(refused)
	return rs, nil
}

// refuse counts and logs (rate-limited per uid and pid) the refusals not
// seen before on this call.
func (c *sdsCall) refuse(refused []sdsRefusal) {
	var notEntitled, invalid []string
	var invalidErr error
	for _, r := range refused {
		if _, seen := c.refused[r.name]; seen {
			continue
		}
		if len(c.refused) >= maxRefusedRemembered {
			clear(c.refused)
		}
		c.refused[r.name] = struct{}{}
		if m, ok := c.s.meter.(SDSMeter); ok {
			m.SDSResourceRefused(r.reason)
		}
		if r.reason == SDSRefusedInvalid {
			invalid = append(invalid, quoteName(r.name))
			if invalidErr == nil {
				invalidErr = r.err
			}
		} else {
			notEntitled = append(notEntitled, quoteName(r.name))
		}
	}
	if len(notEntitled)+len(invalid) == 0 {
		return
	}
	if ok, suppressed := c.s.sdsRefusals.allow(c.info.UID, c.info.PID); ok {
		fields := []zap.Field{zap.Int32("pid", c.info.PID), zap.Uint32("uid", c.info.UID), zap.Int("suppressed", suppressed)}
		if len(notEntitled) > 0 {
			fields = append(fields, zap.Strings("not_entitled", notEntitled))
		}
		if len(invalid) > 0 {
			fields = append(fields, zap.Strings("invalid", invalid), zap.NamedError("invalid_error", invalidErr))
		}
		c.s.log.Info("SDS resources refused: the caller is not entitled to them or they are not resource names", fields...)
	}
}

// send sends one message: the caller is checked again to still be the
// process that connected before every message after the first, and the
// first is counted.
func (c *sdsCall) send(send func() error) error {
	if c.sent > 0 {
		if err := c.s.recheck(c.ctx); err != nil {
			return err
		}
	}
	if err := send(); err != nil {
		return err
	}
	if c.sent == 0 {
		c.s.firstResponse(c.ctx)
	}
	c.sent++
	return nil
}

// rejected records a NACK of the response with nonce: counted, and logged
// once per nonce.
func (c *sdsCall) rejected(nonce, version string, code int32, msg string) {
	if nonce == c.nacked {
		return
	}
	c.nacked = nonce
	if m, ok := c.s.meter.(SDSMeter); ok {
		m.SDSRejected()
	}
	c.s.log.Warn("SDS client rejected the secrets sent to it",
		zap.Int32("pid", c.info.PID), zap.Uint32("uid", c.info.UID), zap.String("nonce", nonce),
		zap.String("version", version), zap.Int32("code", code), zap.String("error", msg))
}

// recvLoop receives a bidirectional stream's requests into a channel until
// recv fails (its error is then sent on the second channel) or ctx is
// done.
func recvLoop[T any](ctx context.Context, recv func() (*T, error)) (<-chan *T, <-chan error) {
	reqs := make(chan *T)
	errc := make(chan error, 1)
	go func() {
		for {
			req, err := recv()
			if err != nil {
				errc <- err
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()
	return reqs, errc
}

// recvEnd is the result of a stream whose client stopped sending: a
// clean end when it closed its side.
func recvEnd(err error) error {
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

func checkTypeURL(typeURL string) error {
	if typeURL != "" && typeURL != secretTypeURL {
		return grpcstatus.Errorf(codes.InvalidArgument, "type_url %s is not %s: this server serves only SDS secrets", quoteName(typeURL), secretTypeURL)
	}
	return nil
}

func checkNameCount(n int) error {
	if n > MaxSDSResourceNames {
		return grpcstatus.Errorf(codes.InvalidArgument, "%d resource names asked for; at most %d are served on one stream", n, MaxSDSResourceNames)
	}
	return nil
}

func anys(rs []sdsResource) []*anypb.Any {
	out := make([]*anypb.Any, len(rs))
	for i, r := range rs {
		out[i] = r.secret
	}
	return out
}

// StreamSecrets is SDS over the state-of-the-world protocol: each request
// names the resources the client wants (none: every resource the caller
// may have), and each response carries all of them that the caller may
// have. A response is sent when the requested names change, and whenever
// a rotation or a bundle change changes what the caller would get. A
// request with the last response's nonce acknowledges it (or, with
// error_detail, rejects it: logged and counted, not sent again until
// something changes); a request with an older nonce is stale and
// ignored. Names the caller is not entitled to are left out.
func (h *sdsServer) StreamSecrets(stream grpc.BidiStreamingServer[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]) error {
	c, err := h.open(stream.Context())
	if err != nil {
		return err
	}
	defer c.close()
	reqs, recvErr := recvLoop(c.ctx, stream.Recv)
	var (
		subscribed  bool     // a request has named the resources
		names       []string // the resources named; none: all
		changed     bool     // names changed since the last response
		nonce       uint64
		lastNonce   string
		lastVersion string
	)
	for {
		select {
		case <-c.ctx.Done():
			return grpcstatus.FromContextError(c.ctx.Err()).Err()
		case <-h.s.stopping:
			return errShuttingDown
		case err := <-recvErr:
			return recvEnd(err)
		case req := <-reqs:
			if err := checkTypeURL(req.TypeUrl); err != nil {
				return err
			}
			if err := checkNameCount(len(req.ResourceNames)); err != nil {
				return err
			}
			if req.ResponseNonce != "" {
				if req.ResponseNonce != lastNonce {
					continue // stale: it answers an older response
				}
				if req.ErrorDetail != nil {
					c.rejected(req.ResponseNonce, lastVersion, req.ErrorDetail.GetCode(), req.ErrorDetail.GetMessage())
				}
			}
			if !subscribed || !slices.Equal(names, req.ResourceNames) {
				subscribed, changed = true, true
				names = slices.Clone(req.ResourceNames)
			}
		case snap, ok := <-c.sub.Updates():
			if err := c.update(snap, ok); err != nil {
				return err
			}
		}
		if !subscribed || c.snap == nil {
			continue
		}
		rs, err := c.build(names, len(names) == 0)
		if err != nil {
			return err
		}
		version := sdsVersion(rs)
		if !changed && version == lastVersion {
			continue
		}
		changed = false
		if len(rs) == 0 && c.sent == 0 {
			// Nothing the caller may have: nothing to say yet.
			lastVersion = version
			continue
		}
		nonce++
		resp := &discoveryv3.DiscoveryResponse{
			VersionInfo: version,
			Resources:   anys(rs),
			TypeUrl:     secretTypeURL,
			Nonce:       strconv.FormatUint(nonce, 10),
		}
		if err := c.send(func() error { return stream.Send(resp) }); err != nil {
			return err
		}
		lastNonce, lastVersion = resp.Nonce, version
	}
}

// DeltaSecrets is SDS over the incremental protocol: requests subscribe
// to and unsubscribe from names (a first request naming none, or the name
// "*", subscribes to every resource the caller may have), and responses
// carry only the resources that are new or changed for the client
// (initial_resource_versions tells what it already holds), and, in
// removed_resources, those it held and may no longer have. A request with
// the last response's nonce and an error_detail rejects it (logged and
// counted). Names the caller is not entitled to are left out.
func (h *sdsServer) DeltaSecrets(stream grpc.BidiStreamingServer[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]) error {
	c, err := h.open(stream.Context())
	if err != nil {
		return err
	}
	defer c.close()
	reqs, recvErr := recvLoop(c.ctx, stream.Recv)
	var (
		started    bool
		wildcard   bool
		subscribed = make(map[string]struct{})
		known      = make(map[string]string) // name → version the client holds
		nonce      uint64
		lastNonce  string
		lastSystem string
	)
	for {
		select {
		case <-c.ctx.Done():
			return grpcstatus.FromContextError(c.ctx.Err()).Err()
		case <-h.s.stopping:
			return errShuttingDown
		case err := <-recvErr:
			return recvEnd(err)
		case req := <-reqs:
			if err := checkTypeURL(req.TypeUrl); err != nil {
				return err
			}
			if err := checkNameCount(len(req.ResourceNamesSubscribe)); err != nil {
				return err
			}
			if !started {
				started = true
				wildcard = len(req.ResourceNamesSubscribe) == 0
				if err := checkNameCount(len(req.InitialResourceVersions)); err != nil {
					return err
				}
				maps.Copy(known, req.InitialResourceVersions)
			}
			for _, n := range req.ResourceNamesSubscribe {
				if n == "*" {
					wildcard = true
				} else {
					subscribed[n] = struct{}{}
				}
			}
			for _, n := range req.ResourceNamesUnsubscribe {
				if n == "*" {
					wildcard = false
				} else {
					delete(subscribed, n)
					delete(known, n)
				}
			}
			if err := checkNameCount(len(subscribed)); err != nil {
				return err
			}
			if req.ResponseNonce != "" && req.ResponseNonce == lastNonce && req.ErrorDetail != nil {
				c.rejected(req.ResponseNonce, lastSystem, req.ErrorDetail.GetCode(), req.ErrorDetail.GetMessage())
			}
		case snap, ok := <-c.sub.Updates():
			if err := c.update(snap, ok); err != nil {
				return err
			}
		}
		if !started || c.snap == nil {
			continue
		}
		rs, err := c.build(slices.Sorted(maps.Keys(subscribed)), wildcard)
		if err != nil {
			return err
		}
		resp := &discoveryv3.DeltaDiscoveryResponse{SystemVersionInfo: sdsVersion(rs), TypeUrl: secretTypeURL}
		have := make(map[string]struct{}, len(rs))
		for _, r := range rs {
			have[r.name] = struct{}{}
			if known[r.name] == r.version {
				continue
			}
			known[r.name] = r.version
			resp.Resources = append(resp.Resources, &discoveryv3.Resource{Name: r.name, Version: r.version, Resource: r.secret})
		}
		for n := range known {
			if _, ok := have[n]; !ok {
				resp.RemovedResources = append(resp.RemovedResources, n)
				delete(known, n)
			}
		}
		if len(resp.Resources) == 0 && len(resp.RemovedResources) == 0 {
			continue
		}
		slices.Sort(resp.RemovedResources)
		nonce++
		resp.Nonce = strconv.FormatUint(nonce, 10)
		if err := c.send(func() error { return stream.Send(resp) }); err != nil {
			return err
		}
		lastNonce, lastSystem = resp.Nonce, resp.SystemVersionInfo
	}
}

// FetchSecrets answers one request with the named resources (none named:
// every resource the caller may have), once the caller's SVIDs are ready.
func (h *sdsServer) FetchSecrets(ctx context.Context, req *discoveryv3.DiscoveryRequest) (*discoveryv3.DiscoveryResponse, error) {
	if err := checkTypeURL(req.TypeUrl); err != nil {
		return nil, err
	}
	if err := checkNameCount(len(req.ResourceNames)); err != nil {
		return nil, err
	}
	c, err := h.open(ctx)
	if err != nil {
		return nil, err
	}
	defer c.close()
	if err := c.wait(); err != nil {
		return nil, err
	}
	rs, err := c.build(req.ResourceNames, len(req.ResourceNames) == 0)
	if err != nil {
		return nil, err
	}
	c.s.firstResponse(ctx)
	return &discoveryv3.DiscoveryResponse{VersionInfo: sdsVersion(rs), Resources: anys(rs), TypeUrl: secretTypeURL}, nil
}
