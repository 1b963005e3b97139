package awskms

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"
)

// The kinds of failure a KMS call is classified into. Errors returned by
// this package wrap one of them (when it applies) and the SDK's error, so
// callers can test them with errors.Is. Their text has no package prefix:
// it appears after one.
var (
	// ErrUnavailable: KMS answered with a server error (HTTP 5xx), could
	// not be reached or did not answer in time, still after the SDK's
	// retries.
	ErrUnavailable = errors.New("AWS KMS is unavailable")
	// ErrThrottled: KMS throttled the requests, still after the SDK's
	// retries.
	ErrThrottled = errors.New("AWS KMS throttled the request")
	// ErrAccessDenied: the credentials are refused, or the key policy or
	// IAM policy does not allow the operation.
	ErrAccessDenied = errors.New("access denied by AWS KMS (check the credentials, the IAM policy and the key policy)")
	// ErrInvalidState: the KMS key is disabled or pending deletion.
	ErrInvalidState = errors.New("the KMS key is disabled or pending deletion")
	// ErrClosed: the key store was closed.
	ErrClosed = errors.New("key store is closed")
)

// kmsError is a KMS call's error with its kind.
type kmsError struct {
	kind error
	err  error
}

func (e *kmsError) Error() string   { return e.kind.Error() + ": " + e.err.Error() }
func (e *kmsError) Unwrap() []error { return []error{e.kind, e.err} }

// classify returns err, an error from the SDK, with its kind when it has
// one.
func classify(err error) error {
	if err == nil {
		return nil
	}
	var kind error
	var (
		apiErr   smithy.APIError
		respErr  *awshttp.ResponseError
		netErr   net.Error
		notFound *types.NotFoundException
	)
	switch {
	case errors.Is(err, ErrClosed), errors.Is(err, context.Canceled):
		return err
	case errors.As(err, &notFound):
		return err
	case errors.As(err, &apiErr) && isAccessDenied(apiErr.ErrorCode()):
		kind = ErrAccessDenied
	case errors.As(err, &apiErr) && isThrottling(apiErr.ErrorCode()):
		kind = ErrThrottled
	case errors.As(err, &apiErr) && (apiErr.ErrorCode() == "KMSInvalidStateException" || apiErr.ErrorCode() == "DisabledException"):
		kind = ErrInvalidState
	case errors.As(err, &respErr) && respErr.HTTPStatusCode() >= 500,
		errors.As(err, &apiErr) && apiErr.ErrorFault() == smithy.FaultServer,
		errors.As(err, &netErr),
		errors.Is(err, context.DeadlineExceeded):
		kind = ErrUnavailable
	default:
		return err
	}
	return &kmsError{kind: kind, err: err}
}

func isAccessDenied(code string) bool {
	switch code {
	case "AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException",
		"IncompleteSignature", "ExpiredTokenException", "MissingAuthenticationToken", "InvalidClientTokenId":
		return true
	}
	return false
}

func isThrottling(code string) bool {
	switch code {
	case "ThrottlingException", "Throttling", "ThrottledException", "RequestThrottledException",
		"TooManyRequestsException", "RequestLimitExceeded", "SlowDown":
		return true
	}
	return false
}

// isNotFound reports whether err is KMS saying the key or alias does not
// exist.
func isNotFound(err error) bool {
	var nf *types.NotFoundException
	return errors.As(err, &nf)
}

// stripStepPrefix removes the "awskms <Operation> failed: " wrappers that
// go.step.sm/crypto/kms/awskms puts around errors, so that this package's
// messages name the package once.
func stripStepPrefix(err error) error {
	for strings.HasPrefix(err.Error(), "awskms ") {
		inner := errors.Unwrap(err)
		if inner == nil {
			break
		}
		err = inner
	}
	return err
}

// wrapf prefixes err (classified) with the package name and a context.
func wrapf(err error, format string, args ...any) error {
	return fmt.Errorf("awskms: "+format+": %w", append(args, classify(stripStepPrefix(err)))...)
}
