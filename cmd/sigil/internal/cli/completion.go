package cli

import (
	"github.com/spf13/cobra"
)

// NewCompletionCommand returns `sigil completion bash|zsh|fish`, which
// prints a shell completion script for the whole command tree.
func NewCompletionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "completion bash|zsh|fish",
		Short: "Print a shell completion script for bash, zsh or fish",
		Long: `Print a script that makes the shell complete sigil's commands and flags
(flags complete in their --name form; -name works too).

  bash: sigil completion bash > /etc/bash_completion.d/sigil
        (needs the bash-completion package; or: source <(sigil completion bash))
  zsh:  sigil completion zsh > "${fpath[1]}/_sigil"
        (with "autoload -U compinit; compinit" in ~/.zshrc)
  fish: sigil completion fish > ~/.config/fish/completions/sigil.fish`,
		ValidArgs: []string{"bash", "zsh", "fish"},
		Args:      cobra.MatchAll(cobra.ExactArgs(1), cobra.OnlyValidArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			root, out := cmd.Root(), cmd.OutOrStdout()
			switch args[0] {
			case "bash":
				return root.GenBashCompletionV2(out, true)
			case "zsh":
				return root.GenZshCompletion(out)
			default:
				return root.GenFishCompletion(out, true)
			}
		},
	}
}
