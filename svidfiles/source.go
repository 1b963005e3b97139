package svidfiles

import (
	"context"
	"crypto/x509"
	"errors"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"go.uber.org/zap"
)

// WorkloadAPISource is a Source that reads a Workload API through a
// go-spiffe client, as the calling process.
type WorkloadAPISource struct {
	// Client is the Workload API client. Required.
	Client *workloadapi.Client
	// Logger logs the watch's passing errors; nil discards them.
	Logger *zap.Logger
}

// WatchX509 watches the X.509 context until ctx is done; the client
// retries lost connections itself.
func (s *WorkloadAPISource) WatchX509(ctx context.Context, update func(*Update)) error {
	if s.Client == nil {
		return errors.New("svidfiles: no Workload API client")
	}
	log := s.Logger
	if log == nil {
		log = zap.NewNop()
	}
	return s.Client.WatchX509Context(ctx, &watcher{update: update, log: log})
}

// FetchJWT fetches a JWT-SVID of id (any, when zero) for audience.
func (s *WorkloadAPISource) FetchJWT(ctx context.Context, id spiffeid.ID, audience string) (string, time.Time, error) {
	if s.Client == nil {
		return "", time.Time{}, errors.New("svidfiles: no Workload API client")
	}
	params := jwtsvid.Params{Audience: audience}
	if !id.IsZero() {
		params.Subject = id
	}
	svid, err := s.Client.FetchJWTSVID(ctx, params)
	if err != nil {
		return "", time.Time{}, err
	}
	return svid.Marshal(), svid.Expiry, nil
}

type watcher struct {
	update func(*Update)
	log    *zap.Logger
}

func (w *watcher) OnX509ContextUpdate(c *workloadapi.X509Context) {
	u := &Update{SVIDs: c.SVIDs, Bundles: map[spiffeid.TrustDomain][]*x509.Certificate{}}
	if c.Bundles != nil {
		for _, b := range c.Bundles.Bundles() {
			u.Bundles[b.TrustDomain()] = b.X509Authorities()
		}
	}
	w.update(u)
}

func (w *watcher) OnX509ContextWatchError(err error) {
	if !errors.Is(err, context.Canceled) {
		w.log.Warn("Workload API watch failed; retrying", zap.Error(err))
	}
}
