package raftstore

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrNotFound is returned by Reader lookups of an object that does not exist.
var ErrNotFound = errors.New("raftstore: not found")

// ErrBanned is wrapped by the error of Reader.AuthorizedEntries for a banned
// node.
var ErrBanned = errors.New("raftstore: node is banned")

// CommandError is the state machine's refusal of a command (or, inside a
// CommandResult, of one item of a batch). Code is a gRPC code: NotFound,
// AlreadyExists, InvalidArgument, PermissionDenied or FailedPrecondition.
type CommandError struct {
	Code codes.Code
	Msg  string
}

func (e *CommandError) Error() string {
	return fmt.Sprintf("raftstore: %s: %s", e.Code, e.Msg)
}

// GRPCStatus lets a CommandError returned by a gRPC handler reach the client
// with its code.
func (e *CommandError) GRPCStatus() *status.Status {
	return status.New(e.Code, e.Msg)
}

func cmdErr(code codes.Code, format string, args ...any) *CommandError {
	return &CommandError{Code: code, Msg: fmt.Sprintf(format, args...)}
}
