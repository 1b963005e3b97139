package azuremsi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"

	"github.com/sigil-id/sigil/clock"
)

// errKeysUnavailable is wrapped by errors about fetching the issuer's key
// set (unreachable, too slow, too large, not a 200): the verifier cannot
// decide and fails closed without blaming the evidence.
var errKeysUnavailable = errors.New("the issuer's signing keys are unavailable")

// keyFetcher is the http.RoundTripper of the client go-oidc fetches the
// key set with. It fetches only the configured URL, within the client's
// timeout and at most maxBytes, and at most once per interval: between
// fetches it answers with the last body (or the last failure, for a
// shorter interval), so a flood of tokens naming unknown key ids costs the
// issuer one request per interval.
type keyFetcher struct {
	url      string
	base     http.RoundTripper
	maxBytes int64
	timeout  time.Duration
	// refresh is the least time between two fetches after a success,
	// retry after a failure.
	refresh, retry time.Duration
	clock          clock.Clock

	mu      sync.Mutex
	fetched bool
	at      time.Time
	body    []byte
	err     error
}

func (f *keyFetcher) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		req.Body.Close()
	}
	if req.Method != http.MethodGet || req.URL.String() != f.url {
		return nil, fmt.Errorf("%w: refusing to fetch %s, which is not the configured key set URL", errKeysUnavailable, req.URL.Redacted())
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.clock.Now()
	wait := f.refresh
	if f.err != nil {
		wait = f.retry
	}
	if !f.fetched || now.Sub(f.at) >= wait || now.Before(f.at) {
		f.body, f.err = f.get(req)
		f.at, f.fetched = now, true
	}
	if f.err != nil {
		return nil, f.err
	}
	return &http.Response{
		Status:        "200 OK",
		StatusCode:    http.StatusOK,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        http.Header{"Content-Type": {"application/json"}},
		Body:          io.NopCloser(bytes.NewReader(f.body)),
		ContentLength: int64(len(f.body)),
		Request:       req,
	}, nil
}

func (f *keyFetcher) get(req *http.Request) ([]byte, error) {
	ctx, cancel := context.WithTimeout(req.Context(), f.timeout)
	defer cancel()
	out, err := http.NewRequestWithContext(ctx, http.MethodGet, f.url, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errKeysUnavailable, err)
	}
	out.Header.Set("Accept", "application/json")
	resp, err := f.base.RoundTrip(out)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errKeysUnavailable, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%w: %s answered %s", errKeysUnavailable, f.url, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, f.maxBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%w: reading %s: %v", errKeysUnavailable, f.url, err)
	}
	if int64(len(body)) > f.maxBytes {
		return nil, fmt.Errorf("%w: %s answered more than %d bytes", errKeysUnavailable, f.url, f.maxBytes)
	}
	return body, nil
}

// probeKey is the context key of the keyProbe of one verification.
type probeKey struct{}

// keyProbe records, for one verification, whether the key set could not
// be fetched: go-oidc flattens the error, so the key set reports it here.
type keyProbe struct{ err error }

// probedKeySet wraps go-oidc's remote key set to record fetch failures in
// the verification's keyProbe.
type probedKeySet struct{ inner oidc.KeySet }

func (k probedKeySet) VerifySignature(ctx context.Context, jwt string) ([]byte, error) {
	payload, err := k.inner.VerifySignature(ctx, jwt)
	if err != nil && errors.Is(err, errKeysUnavailable) {
		if p, ok := ctx.Value(probeKey{}).(*keyProbe); ok {
			p.err = err
		}
	}
	return payload, err
}

// newKeySet returns the key set at jwksURL, fetched through a keyFetcher,
// each fetch bounded by timeout (the keyFetcher's own, so that its errors
// keep errKeysUnavailable).
func newKeySet(jwksURL string, timeout time.Duration, maxBytes int64, clk clock.Clock) oidc.KeySet {
	// The URL as go-oidc's requests will spell it, so that the fetcher
	// recognizes it (the configuration was validated as an http(s) URL).
	if u, err := url.Parse(jwksURL); err == nil {
		jwksURL = u.String()
	}
	base := http.DefaultTransport.(*http.Transport).Clone()
	base.Proxy = http.ProxyFromEnvironment
	client := &http.Client{
		Transport: &keyFetcher{url: jwksURL, base: base, maxBytes: maxBytes, timeout: timeout,
			refresh: time.Minute, retry: 5 * time.Second, clock: clk},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return probedKeySet{inner: oidc.NewRemoteKeySet(oidc.ClientContext(context.Background(), client), jwksURL)}
}
