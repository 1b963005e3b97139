package config

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/hashicorp/hcl/v2/hclsyntax"

	"github.com/sigil-id/sigil/ca"
)

// readTemplates reads and validates the certificate templates the server
// block sb names (x509_svid_template_file, ca_template_file; relative
// paths are relative to the directory of filename) into s: a template
// that does not parse or would break a SPIFFE rule is an error that names
// the attribute, the file and the rule.
func readTemplates(filename string, sb *hclsyntax.Block, s *Server) error {
	dir := filepath.Dir(filename)
	if s.X509SVIDTemplateFile != "" {
		s.X509SVIDTemplateFile = resolve(dir, s.X509SVIDTemplateFile)
		text, err := readTemplateFile(s.X509SVIDTemplateFile)
		if err == nil {
			s.X509SVIDTemplate, err = ca.ParseX509SVIDTemplate(text)
		}
		if err != nil {
			return fmt.Errorf("%s: server.x509_svid_template_file %s: %w", attrAt(sb, "x509_svid_template_file"), s.X509SVIDTemplateFile, err)
		}
	}
	if s.CATemplateFile != "" {
		s.CATemplateFile = resolve(dir, s.CATemplateFile)
		text, err := readTemplateFile(s.CATemplateFile)
		if err == nil {
			s.CATemplate, err = ca.ParseCATemplate(text)
		}
		if err != nil {
			return fmt.Errorf("%s: server.ca_template_file %s: %w", attrAt(sb, "ca_template_file"), s.CATemplateFile, err)
		}
	}
	return nil
}

// readTemplateFile reads the regular file at path, at most one byte more
// than ca.MaxTemplateSize (the parser refuses a larger template).
func readTemplateFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	// A FIFO or a device could block or never end: only regular files.
	if fi, err := f.Stat(); err != nil {
		return "", err
	} else if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%s is not a regular file", path)
	}
	b, err := io.ReadAll(io.LimitReader(f, ca.MaxTemplateSize+1))
	if err != nil {
		return "", err // *os.File errors name the path
	}
	return string(b), nil
}
