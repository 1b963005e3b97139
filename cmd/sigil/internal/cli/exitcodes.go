package cli

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Exit codes of every sigil command (docs/cli.md, "Exit codes"). A command
// may add codes of its own, as `sigil policy test` does with 3 (allowed
// only by shadow mode).
const (
	// ExitOK: the command did what was asked.
	ExitOK = 0
	// ExitFailure: the command failed: the server refused, could not be
	// reached, or some items of a batch failed.
	ExitFailure = 1
	// ExitUsage: the command line or an input file is invalid (unknown
	// command or flag, missing or conflicting flags, a malformed -data
	// file); nothing was sent.
	ExitUsage = 2
	// ExitNotFound: the one thing the command names (an entry, agent,
	// relationship or bundle) does not exist.
	ExitNotFound = 4
)

// usageError marks err as a usage error (exit code ExitUsage).
func usageError(err error) error {
	if err == nil {
		return nil
	}
	var ee *ExitError
	if errors.As(err, &ee) {
		return err
	}
	return &ExitError{Code: ExitUsage, Err: err}
}

// usagef is fmt.Errorf for usage errors.
func usagef(format string, args ...any) error {
	return usageError(fmt.Errorf(format, args...))
}

// rpcCodeError carries the gRPC code of a failed call under the one-line
// message the command prints, so that Execute can map it to an exit code.
type rpcCodeError struct {
	code codes.Code
	err  error
}

func (e *rpcCodeError) Error() string { return e.err.Error() }
func (e *rpcCodeError) Unwrap() error { return e.err }

// RPCError describes a failed admin call in one line; a NotFound answer
// ends the process with ExitNotFound.
func (c *AdminConn) RPCError(what string, err error) error {
	return withRPCCode(err, c.rpcError(what, err))
}

// withRPCCode attaches the gRPC code of cause to msg.
func withRPCCode(cause, msg error) error {
	if st, ok := status.FromError(cause); ok && st.Code() != codes.OK {
		return &rpcCodeError{code: st.Code(), err: msg}
	}
	return msg
}

// exitCode maps an error returned by a command to the process exit code.
func exitCode(err error) int {
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	var rc *rpcCodeError
	if errors.As(err, &rc) && rc.code == codes.NotFound {
		return ExitNotFound
	}
	return ExitFailure
}

// enforceUsage makes every usage error of the tree under root end with
// ExitUsage: bad flags (cobra's flag errors, and an -output other than text
// or json, checked while parsing), wrong positional arguments, and unknown
// subcommands of a command group (which cobra otherwise answers with the
// group's help and exit code 0).
func enforceUsage(root *cobra.Command) {
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		var iv *pflag.InvalidValueError
		var ne *pflag.NotExistError
		switch {
		case errors.As(err, &iv):
			// In the words of the commands' own checks: invalid -ttl "x": ...
			err = fmt.Errorf("invalid -%s %q: %v", iv.GetFlag().Name, iv.GetValue(), errors.Unwrap(iv))
		case errors.As(err, &ne) && len(ne.GetSpecifiedShortnames()) > 1:
			// "-bogus" is no long flag, so pflag read it as shorthands.
			name, _, _ := strings.Cut(ne.GetSpecifiedShortnames(), "=")
			err = fmt.Errorf("unknown flag -%s", name)
		}
		return usagef("%v (see '%s -help')", err, c.CommandPath())
	})
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if f := c.Flags().Lookup("output"); f != nil && f.Value.Type() == "string" {
			if _, ok := f.Value.(*outputValue); !ok {
				f.Value = &outputValue{Value: f.Value}
			}
		}
		switch {
		case c.Runnable() && c.Args != nil:
			if _, done := c.Annotations[usageWrapped]; !done {
				check := c.Args
				c.Args = func(cmd *cobra.Command, args []string) error {
					if err := check(cmd, args); err != nil {
						return usagef("%v (see '%s -help')", err, cmd.CommandPath())
					}
					return nil
				}
				if c.Annotations == nil {
					c.Annotations = map[string]string{}
				}
				c.Annotations[usageWrapped] = "true"
			}
		case !c.Runnable() && c.HasSubCommands():
			// A group: its help when called alone, a usage error for an
			// unknown subcommand.
			c.Args = cobra.ArbitraryArgs
			c.RunE = func(cmd *cobra.Command, args []string) error {
				if len(args) == 0 {
					return cmd.Help()
				}
				msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
				if cmd.SuggestionsMinimumDistance <= 0 {
					cmd.SuggestionsMinimumDistance = 2
				}
				if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
					msg += fmt.Sprintf(" (did you mean %s?)", strings.Join(s, ", "))
				}
				return usagef("%s (see '%s -help')", msg, cmd.CommandPath())
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// usageWrapped marks a command whose Args enforceUsage has wrapped.
const usageWrapped = "sigil.usage-wrapped"

// outputValue refuses, while flags are parsed, an -output other than text
// or json.
type outputValue struct{ pflag.Value }

func (v *outputValue) Set(s string) error {
	if s != "text" && s != "json" {
		return fmt.Errorf("want text or json")
	}
	return v.Value.Set(s)
}
