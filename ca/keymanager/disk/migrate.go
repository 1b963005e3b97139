package disk

import (
	"errors"
	"fmt"
	"os"

	"github.com/sigil-id/sigil/internal/atomicfile"
)

// EncryptFiles encrypts with passphrase every key file in clear in dirs (a
// directory that does not exist holds none) and returns the files it
// rewrote. A key file already encrypted must decrypt with passphrase, so
// that a rerun after an interruption finishes the job and one passphrase
// opens every key. Every file is read, checked and converted in memory
// before the first is rewritten: an error (a wrong passphrase, a damaged
// file) leaves every file as it was. Each rewrite is atomic and leaves the
// file with mode 0600. The server using dirs must be stopped.
func EncryptFiles(dirs []string, passphrase []byte) ([]string, error) {
	if err := CheckPassphrase(string(passphrase)); err != nil {
		return nil, fmt.Errorf("ca/keymanager/disk: %w", err)
	}
	return convert(dirs, passphrase, formClear, passphrase)
}

// DecryptFiles is the reverse of EncryptFiles: it rewrites every key file
// encrypted with passphrase in clear, on the same terms.
func DecryptFiles(dirs []string, passphrase []byte) ([]string, error) {
	if len(passphrase) == 0 {
		return nil, errors.New("ca/keymanager/disk: the passphrase is empty")
	}
	return convert(dirs, passphrase, formEncrypted, nil)
}

// RekeyFiles changes the passphrase of the encrypted key files in dirs in
// one step: every key file must be encrypted with oldPassphrase (a key
// file in clear is refused: encrypt it first), and each is rewritten
// encrypted with newPassphrase, on the terms of EncryptFiles (all checked
// in memory first, atomic rewrites, mode 0600). The keys are never
// written in clear. The server using dirs must be stopped.
func RekeyFiles(dirs []string, oldPassphrase, newPassphrase []byte) ([]string, error) {
	if len(oldPassphrase) == 0 {
		return nil, errors.New("ca/keymanager/disk: the current passphrase is empty")
	}
	if err := CheckPassphrase(string(newPassphrase)); err != nil {
		return nil, fmt.Errorf("ca/keymanager/disk: new passphrase: %w", err)
	}
	if string(oldPassphrase) == string(newPassphrase) {
		return nil, errors.New("ca/keymanager/disk: the new passphrase is the current one")
	}
	for _, dir := range dirs {
		files, err := keyFiles(dir)
		if err != nil {
			return nil, fmt.Errorf("ca/keymanager/disk: listing key directory: %w", err)
		}
		for _, path := range files {
			data, err := os.ReadFile(path)
			if err != nil {
				return nil, fmt.Errorf("ca/keymanager/disk: reading key file: %w", err)
			}
			f, _ := classify(data)
			clear(data)
			if f == formClear {
				return nil, fmt.Errorf("ca/keymanager/disk: key file %s is in clear: encrypt the key files first (sigil keys encrypt)", path)
			}
		}
	}
	return convert(dirs, oldPassphrase, formEncrypted, newPassphrase)
}

// convert rewrites the key files of form from in dirs with the passphrase
// to (nil: in clear), after checking that every key file decodes with
// passphrase.
func convert(dirs []string, passphrase []byte, from form, to []byte) ([]string, error) {
	type rewrite struct {
		path string
		data []byte
	}
	var todo []rewrite
	defer func() {
		for _, r := range todo {
			clear(r.data)
		}
	}()
	for _, dir := range dirs {
		files, err := keyFiles(dir)
		if err != nil {
			return nil, fmt.Errorf("ca/keymanager/disk: listing key directory: %w", err)
		}
		for _, path := range files {
			fi, err := os.Lstat(path)
			if err != nil {
				return nil, fmt.Errorf("ca/keymanager/disk: %w", err)
			}
			if !fi.Mode().IsRegular() {
				return nil, fmt.Errorf("ca/keymanager/disk: key file %s is not a regular file", path)
			}
			data, err := os.ReadFile(path)
			if err != nil {
				return nil, fmt.Errorf("ca/keymanager/disk: reading key file: %w", err)
			}
			f, _ := classify(data)
			k, err := decodeKey(path, data, passphrase)
			clear(data)
			if err != nil {
				return nil, err
			}
			if f != from {
				continue
			}
			out, err := encodeKey(k, to)
			if err != nil {
				return nil, fmt.Errorf("ca/keymanager/disk: encoding key file %s: %w", path, err)
			}
			todo = append(todo, rewrite{path, out})
		}
	}
	var done []string
	for _, r := range todo {
		if err := atomicfile.WriteFile(r.path, r.data, 0o600); err != nil {
			return done, fmt.Errorf("ca/keymanager/disk: rewriting key file: %w", err)
		}
		done = append(done, r.path)
	}
	return done, nil
}
