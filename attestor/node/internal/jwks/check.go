package jwks

import (
	"context"
	"errors"
	"fmt"
	"time"

	gooidc "github.com/coreos/go-oidc/v3/oidc"
)

// InvalidError is the error of a token that does not verify (a bad
// signature, an unknown key, another issuer or audience, expired, issued
// in the future): the evidence's fault, to be refused. Reason is for the
// server's log.
type InvalidError struct{ Reason string }

func (e *InvalidError) Error() string { return e.Reason }

// maxFuture is how far in the future a token's issue time may be (clock
// skew between the issuer and the server).
const maxFuture = 5 * time.Minute

// Check verifies raw, signed with one of k's algorithms by a key of k, issued by
// issuer for audience, valid at now (the server's State time) and issued
// at most five minutes after it, and returns it. Errors: *InvalidError
// when the token does not verify; else the keys could not be had (wraps
// ErrUnavailable) or ctx ended (wraps ctx.Err()).
func (k *KeySet) Check(ctx context.Context, raw, issuer, audience string, now time.Time) (*gooidc.IDToken, error) {
	algs := make([]string, len(k.cfg.Algs))
	for i, a := range k.cfg.Algs {
		algs[i] = string(a)
	}
	v := gooidc.NewVerifier(issuer, k, &gooidc.Config{
		ClientID:             audience,
		SupportedSigningAlgs: algs,
		Now:                  func() time.Time { return now },
	})
	tok, err := Verify(ctx, v, raw)
	switch {
	case errors.Is(err, ErrUnavailable) || errors.Is(err, ctx.Err()) && ctx.Err() != nil:
		return nil, err
	case err != nil:
		var expired *gooidc.TokenExpiredError
		if errors.As(err, &expired) {
			return nil, &InvalidError{Reason: fmt.Sprintf("token expired at %s", expired.Expiry.UTC().Format(time.RFC3339))}
		}
		return nil, &InvalidError{Reason: fmt.Sprintf("token not valid: %v", err)}
	}
	if tok.IssuedAt.After(now.Add(maxFuture)) {
		return nil, &InvalidError{Reason: fmt.Sprintf("token issued in the future (%s)", tok.IssuedAt.UTC().Format(time.RFC3339))}
	}
	return tok, nil
}
