package agent

import (
	"github.com/sigil-id/sigil/attestor/node/jointoken"
	"github.com/sigil-id/sigil/attestor/workload"
	"github.com/sigil-id/sigil/attestor/workload/unix"
)

// withPlugins gives cfg the plugins cmd/sigil configures by default: the
// join_token attestor presenting token ("" for none) and the unix
// workload attestor.
func withPlugins(cfg *Config, token string) {
	cfg.NodeAttestor = jointoken.NewAttestor(token)
	cfg.WorkloadAttestors = []workload.Attestor{unix.New()}
}
