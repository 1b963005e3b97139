package main

import (
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/agent"
	"github.com/sigil-id/sigil/cmd/sigil/internal/config"
	"github.com/sigil-id/sigil/registration"
	"github.com/sigil-id/sigil/svidfiles"
)

// agentSVIDFiles turns the agent's svid_files blocks into agent.SVIDFiles;
// agent.Config.Validate checks the rest.
func agentSVIDFiles(blocks *config.SVIDFilesBlocks) ([]agent.SVIDFiles, error) {
	if blocks == nil {
		return nil, nil
	}
	var out []agent.SVIDFiles
	for _, b := range blocks.Blocks {
		f := agent.SVIDFiles{
			Name:         b.Name,
			Directory:    b.Directory,
			JWTAudiences: b.JWTAudiences,
			Owner:        svidfiles.Owner{UID: b.UID, GID: b.GID},
			PIDFile:      b.PIDFile,
			Command:      b.Command,
		}
		for _, s := range b.Selectors {
			sel, err := registration.ParseSelector(s)
			if err != nil {
				return nil, fmt.Errorf("svid_files %q: selector %q: %v", b.Name, s, err)
			}
			f.Selectors = append(f.Selectors, sel)
		}
		if b.SPIFFEID != "" {
			id, err := spiffeid.FromString(b.SPIFFEID)
			if err != nil {
				return nil, fmt.Errorf("svid_files %q: spiffe_id %q: %v", b.Name, b.SPIFFEID, err)
			}
			f.SPIFFEID = id
		}
		if b.Signal != "" {
			sig, err := svidfiles.ParseSignal(b.Signal)
			if err != nil {
				return nil, fmt.Errorf("svid_files %q: %v", b.Name, err)
			}
			f.Signal = sig
		}
		out = append(out, f)
	}
	return out, nil
}
