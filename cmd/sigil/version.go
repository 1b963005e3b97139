package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/sigil-id/sigil/internal/version"
)

func newVersionCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the version of this binary",
		Long: `Print the version of this binary: the release (git describe at build time,
"dev" for a build outside make release), the commit, the build date, the Go
toolchain and target, and whether it was built with cgo (without cgo, as the
static release binaries are, the pkcs11 key manager is not available).

-output json prints one object with the fields version, commit, modified,
build_date, go_version, os, arch and cgo (a stable schema: fields are only
ever added).`,
		Example: `  sigil version
  sigil version -output json | jq -r .version`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			info := version.Get()
			out := cmd.OutOrStdout()
			switch output {
			case "json":
				b, err := json.Marshal(info)
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "%s\n", b)
			case "text":
				fmt.Fprintf(out, "sigil %s (%s, %s/%s)\n", info.Version, info.GoVersion, info.OS, info.Arch)
				commit := info.Commit
				if commit == "" {
					commit = "unknown"
				}
				if info.Modified {
					commit += " (modified)"
				}
				built := info.BuildDate
				if built == "" {
					built = "unknown"
				}
				fmt.Fprintf(out, "commit: %s\nbuilt:  %s\n", commit, built)
				if info.Cgo {
					fmt.Fprintln(out, "cgo:    yes")
				} else {
					fmt.Fprintln(out, "cgo:    no (static build: the pkcs11 key manager is not available)")
				}
			default:
				return fmt.Errorf("invalid -output %q: want text or json", output)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&output, "output", "text", "output format: text or json")
	return cmd
}
