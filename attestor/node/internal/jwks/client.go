package jwks

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"
)

// NewClient returns the client of the fetches a verifier makes: each
// bounded in time (timeout) and in size (a response body over maxBytes
// fails to read rather than being cut short, since a truncated key set
// could parse), following no redirect (only configured URLs are fetched).
// base carries the requests; nil for http.DefaultTransport.
func NewClient(base http.RoundTripper, timeout time.Duration, maxBytes int64) *http.Client {
	if base == nil {
		base = http.DefaultTransport
	}
	return &http.Client{
		Timeout:   timeout,
		Transport: limitTransport{base: base, max: maxBytes},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return errors.New("redirects are not followed: configure the final URL")
		},
	}
}

type limitTransport struct {
	base http.RoundTripper
	max  int64
}

func (t limitTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	resp.Body = &limitedBody{rc: resp.Body, n: t.max, max: t.max}
	return resp, nil
}

// limitedBody fails a read past n bytes (io.LimitReader would truncate
// silently).
type limitedBody struct {
	rc     io.ReadCloser
	n, max int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.n <= 0 {
		var one [1]byte
		n, err := b.rc.Read(one[:])
		if n > 0 {
			return 0, fmt.Errorf("response body over %d bytes", b.max)
		}
		return 0, err
	}
	if int64(len(p)) > b.n {
		p = p[:b.n]
	}
	n, err := b.rc.Read(p)
	b.n -= int64(n)
	return n, err
}

func (b *limitedBody) Close() error { return b.rc.Close() }
