package main

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/ca/keymanager/disk"
	"github.com/sigil-id/sigil/internal/secretfile"
)

// keysOptions are the flags of `sigil keys encrypt|decrypt`.
type keysOptions struct {
	dataDir          string
	directory        string
	clusterDirectory string
	passphraseFile   string
	passphraseEnv    string
	// newPassphraseFile and newPassphraseEnv: rekey's new passphrase.
	newPassphraseFile string
	newPassphraseEnv  string
}

func newKeysCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "Encrypt or decrypt the key files of a stopped server's disk key manager",
		Long: `Encrypt or decrypt at rest the key files of the disk key manager (the CA and
JWT signing keys, and the cluster identity key) of a server that is
stopped: the command refuses to run while a server uses the data
directory. Every file is checked and converted in memory before the first
is rewritten, and each rewrite is atomic, so a wrong passphrase changes
nothing. The passphrase comes from a file (mode 0600 or 0400) or an
environment variable, never from the command line.`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(
		newKeysSubcommand("encrypt", "Encrypt the key files in clear with a passphrase, before configuring passphrase_file or passphrase_env", disk.EncryptFiles),
		newKeysSubcommand("decrypt", "Rewrite the encrypted key files in clear, before removing passphrase_file or passphrase_env", disk.DecryptFiles),
		newKeysRekeyCommand(),
	)
	return cmd
}

// newKeysRekeyCommand is `sigil keys rekey`: the passphrase changed in one
// step, the keys never written in clear.
func newKeysRekeyCommand() *cobra.Command {
	var o keysOptions
	cmd := &cobra.Command{
		Use:   "rekey",
		Short: "Change the passphrase of the encrypted key files in one step (the keys are never written in clear)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var newPass string
			var err error
			switch {
			case o.newPassphraseFile != "" && o.newPassphraseEnv != "":
				return errors.New("keys: both -new-passphrase-file and -new-passphrase-env are set: keep one")
			case o.newPassphraseFile != "":
				newPass, err = secretfile.Read(o.newPassphraseFile)
			case o.newPassphraseEnv != "":
				newPass, err = secretfile.ReadEnv(o.newPassphraseEnv)
			default:
				return errors.New("keys: -new-passphrase-file or -new-passphrase-env is required (a passphrase is never given on the command line)")
			}
			if err != nil {
				return fmt.Errorf("keys: new passphrase: %w", err)
			}
			rekey := func(dirs []string, old []byte) ([]string, error) { return disk.RekeyFiles(dirs, old, []byte(newPass)) }
			return runKeys(o, "rekey", rekey, cmd.OutOrStdout())
		},
	}
	addKeysFlags(cmd, &o)
	fs := cmd.Flags()
	fs.StringVar(&o.newPassphraseFile, "new-passphrase-file", "", "file holding the new passphrase (mode 0600 or 0400)")
	fs.StringVar(&o.newPassphraseEnv, "new-passphrase-env", "", "environment variable holding the new passphrase")
	return cmd
}

func newKeysSubcommand(verb, short string, run func([]string, []byte) ([]string, error)) *cobra.Command {
	var o keysOptions
	cmd := &cobra.Command{
		Use:   verb,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runKeys(o, verb, run, cmd.OutOrStdout())
		},
	}
	addKeysFlags(cmd, &o)
	return cmd
}

// addKeysFlags adds the flags every keys subcommand has to cmd.
func addKeysFlags(cmd *cobra.Command, o *keysOptions) {
	fs := cmd.Flags()
	fs.StringVar(&o.dataDir, "data-dir", "", "the server's data_dir (required)")
	fs.StringVar(&o.directory, "directory", "", "the key_manager \"disk\" directory, if set (default <data-dir>/keys)")
	fs.StringVar(&o.clusterDirectory, "cluster-directory", "", "the key_manager \"disk\" cluster_directory, if set (default <data-dir>/cluster/keys)")
	fs.StringVar(&o.passphraseFile, "passphrase-file", "", "file holding the passphrase (mode 0600 or 0400)")
	fs.StringVar(&o.passphraseEnv, "passphrase-env", "", "environment variable holding the passphrase")
}

// runKeys rewrites the key files of o's directories with run, holding the
// server's Raft database lock so that no server runs meanwhile.
func runKeys(o keysOptions, verb string, run func([]string, []byte) ([]string, error), out io.Writer) error {
	if o.dataDir == "" {
		return errors.New("keys: -data-dir is required (the server's data_dir)")
	}
	var pass string
	var err error
	switch {
	case o.passphraseFile != "" && o.passphraseEnv != "":
		return errors.New("keys: both -passphrase-file and -passphrase-env are set: keep one")
	case o.passphraseFile != "":
		pass, err = secretfile.Read(o.passphraseFile)
	case o.passphraseEnv != "":
		pass, err = secretfile.ReadEnv(o.passphraseEnv)
	default:
		return errors.New("keys: -passphrase-file or -passphrase-env is required (a passphrase is never given on the command line)")
	}
	if err != nil {
		return fmt.Errorf("keys: passphrase: %w", err)
	}
	dirs := disk.DefaultDirs(o.dataDir)
	if o.directory != "" {
		dirs[ca.KeyScopeAuthorities] = o.directory
	}
	if o.clusterDirectory != "" {
		dirs[ca.KeyScopeClusterIdentity] = o.clusterDirectory
	}
	release, err := lockStoppedServer(o.dataDir)
	if err != nil {
		return fmt.Errorf("keys: %w", err)
	}
	defer release()
	list := []string{dirs[ca.KeyScopeAuthorities], dirs[ca.KeyScopeClusterIdentity]}
	done, err := run(list, []byte(pass))
	past := verb + "ed"
	if verb == "rekey" {
		past = "rekeyed"
	}
	for _, f := range done {
		fmt.Fprintf(out, "%s %s\n", past, f)
	}
	if err != nil {
		return fmt.Errorf("keys: %w", err)
	}
	if len(done) == 0 {
		fmt.Fprintf(out, "no key file to %s in %s and %s\n", verb, list[0], list[1])
		return nil
	}
	fmt.Fprintf(out, "%d key files %s\n", len(done), past)
	return nil
}

// raftDBPath is the Raft database of a server's data directory, which a
// running server holds locked (bbolt takes an exclusive flock on it).
func raftDBPath(dataDir string) string { return filepath.Join(dataDir, "raft", "raft.db") }
