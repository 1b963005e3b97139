// Command sigil is the one Sigil binary: the server and agent daemons, the
// single-process `dev` mode, and the client commands that talk to a
// server's admin API or to an agent's Workload API.
package main

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/sigil-id/sigil/cmd/sigil/internal/cli"
)

func main() {
	os.Exit(cli.Execute(newRootCommand(), os.Args[1:], os.Stdout, os.Stderr))
}

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "sigil",
		Short: "Sigil issues SPIFFE workload identities",
		Long: `Sigil is a SPIFFE workload identity issuer: servers form the certificate
authority of a trust domain, agents attest their node and serve SVIDs to
local workloads over the SPIFFE Workload API.

Long flags take one dash or two: -config and --config are the same.`,
		CompletionOptions: cobra.CompletionOptions{HiddenDefaultCmd: true},
	}
	agentCmd := newAgentCommand()
	agentCmd.AddCommand(cli.AgentAdminCommands()...)
	root.AddCommand(
		newServerCommand(),
		agentCmd,
		newDevCommand(),
		cli.NewEntryCommand(),
		cli.NewTokenCommand(),
		cli.NewBundleCommand(),
		cli.NewFederationCommand(),
		cli.NewSVIDCommand(),
		cli.NewWorkloadCommand(),
		cli.NewJWTCommand(),
		cli.NewAuthorityCommand(),
		cli.NewClusterCommand(),
		cli.NewHealthcheckCommand(),
		cli.NewPolicyCommand(),
		cli.NewAlertCommand(),
		cli.NewCompletionCommand(),
		newKeysCommand(),
		newVersionCommand(),
	)
	return root
}
