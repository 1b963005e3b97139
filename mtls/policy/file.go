package policy

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// ParseSpec decodes an HCL policy without compiling it.
func ParseSpec(src []byte, name string) (Spec, error) {
	var spec Spec
	if name == "" {
		name = "policy.hcl"
	}
	file, diags := hclsyntax.ParseConfig(src, name, hcl.Pos{Line: 1, Column: 1})
	if diags.HasErrors() {
		return spec, diagError(diags)
	}
	if diags := gohcl.DecodeBody(file.Body, nil, &spec); diags.HasErrors() {
		return spec, diagError(diags)
	}
	// Record where each rule starts, for error messages and lint.
	if body, ok := file.Body.(*hclsyntax.Body); ok {
		i := 0
		for _, b := range body.Blocks {
			if b.Type == "rule" && i < len(spec.Rules) {
				spec.Rules[i].Line = b.DefRange().Start.Line
				i++
			}
		}
	}
	return spec, nil
}

// diagError folds HCL diagnostics into one error with file:line:column.
func diagError(diags hcl.Diagnostics) error {
	var msgs []string
	for _, d := range diags {
		if d.Severity != hcl.DiagError {
			continue
		}
		loc := ""
		if d.Subject != nil {
			loc = fmt.Sprintf("%s:%d:%d: ", d.Subject.Filename, d.Subject.Start.Line, d.Subject.Start.Column)
		}
		msg := d.Summary
		if d.Detail != "" {
			msg += ": " + d.Detail
		}
		msgs = append(msgs, loc+msg)
	}
	return errors.New(strings.Join(msgs, "\n"))
}

// Load reads and compiles the policy file at path.
func Load(path string) (*Policy, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	return Parse(src, path)
}
