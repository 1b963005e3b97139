// Package cli holds the client subcommands of the sigil binary, which talk
// to a running server's admin API or to an agent's Workload API, and the
// plumbing shared by every subcommand: Go-style single-dash long flags,
// one-line errors and exit codes.
package cli

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// ExitError ends the process with Code. Err, when set, is printed as the
// one-line error; a nil Err means everything was already printed.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("exit status %d", e.Code)
	}
	return e.Err.Error()
}

func (e *ExitError) Unwrap() error { return e.Err }

// Execute runs root with args (without the program name), writing to
// stdout and stderr, and returns the process exit code (ExitOK,
// ExitFailure, ExitUsage, ExitNotFound, or a command's own). Errors are
// printed as a single line: "sigil: <error>".
func Execute(root *cobra.Command, args []string, stdout, stderr io.Writer) int {
	root.SilenceErrors = true
	root.SilenceUsage = true
	root.SetOut(stdout)
	root.SetErr(stderr)
	enforceUsage(root)
	root.SetArgs(NormalizeArgs(root, args))
	err := root.Execute()
	if err == nil {
		return ExitOK
	}
	code := exitCode(err)
	// A nil ExitError.Err means the command printed everything already.
	if ee := (*ExitError)(nil); errors.As(err, &ee) && ee.Err == nil {
		return code
	}
	fmt.Fprintf(stderr, "%s: %s\n", root.Name(), OneLine(err.Error()))
	return code
}

// OneLine folds a possibly multi-line message onto one line.
func OneLine(s string) string {
	s = strings.TrimSpace(s)
	if !strings.ContainsAny(s, "\r\n") {
		return s
	}
	fields := strings.FieldsFunc(s, func(r rune) bool { return r == '\n' || r == '\r' })
	for i := range fields {
		fields[i] = strings.TrimSpace(fields[i])
	}
	return strings.Join(fields, "; ")
}

// NormalizeArgs lets users write long flags with a single dash, as Go's
// flag package, SPIRE and Consul accept ("-config server.hcl",
// "-selector=unix:uid:0"). Cobra only parses "--name", so every "-name"
// whose name is a long flag of some command under root is rewritten to
// "--name". Arguments after "--" are left alone.
func NormalizeArgs(root *cobra.Command, args []string) []string {
	names := map[string]bool{"help": true}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		add := func(f *pflag.Flag) { names[f.Name] = true }
		c.Flags().VisitAll(add)
		c.PersistentFlags().VisitAll(add)
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)

	out := make([]string, 0, len(args))
	for i, a := range args {
		if a == "--" {
			out = append(out, args[i:]...)
			break
		}
		if len(a) > 2 && a[0] == '-' && a[1] != '-' {
			name, _, _ := strings.Cut(a[1:], "=")
			if names[name] {
				a = "-" + a
			}
		}
		out = append(out, a)
	}
	return out
}
