package main

import (
	"strings"
	"syscall"
	"testing"

	"go.uber.org/zap"

	"github.com/sigil-id/sigil/cmd/sigil/internal/config"
)

func TestAgentConfigSVIDFiles(t *testing.T) {
	block := config.SVIDFiles{Name: "web", Directory: "/run/web", Selectors: []string{"unix:uid:33"},
		SPIFFEID: "spiffe://example.org/web", UID: 33, GID: -1, Signal: "hup", PIDFile: "/run/web.pid"}
	cfg, err := agentConfig(&config.Agent{TrustDomain: "example.org", ServerAddress: "10.0.0.1:8081",
		SVIDFiles: &config.SVIDFilesBlocks{Blocks: []config.SVIDFiles{block}}}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.SVIDFiles) != 1 {
		t.Fatalf("%d svid_files blocks, want 1", len(cfg.SVIDFiles))
	}
	f := cfg.SVIDFiles[0]
	if f.Signal != syscall.SIGHUP || f.SPIFFEID.String() != "spiffe://example.org/web" || f.Owner.UID != 33 || f.Owner.GID != -1 ||
		len(f.Selectors) != 1 || f.Selectors[0].Type != "unix" || f.Selectors[0].Value != "uid:33" {
		t.Fatalf("converted block %+v", f)
	}
	for _, tc := range []struct {
		mutate func(*config.SVIDFiles)
		want   string
	}{
		{func(b *config.SVIDFiles) { b.Selectors = []string{"nocolon"} }, `svid_files "web": selector "nocolon"`},
		{func(b *config.SVIDFiles) { b.SPIFFEID = "http://x" }, `svid_files "web": spiffe_id "http://x"`},
		{func(b *config.SVIDFiles) { b.Signal = "SIGWHAT" }, `unknown signal "SIGWHAT"`},
		{func(b *config.SVIDFiles) { b.PIDFile = "" }, "signal and pid_file go together"},
	} {
		b := block
		tc.mutate(&b)
		_, err := agentConfig(&config.Agent{TrustDomain: "example.org", ServerAddress: "10.0.0.1:8081",
			SVIDFiles: &config.SVIDFilesBlocks{Blocks: []config.SVIDFiles{b}}}, zap.NewNop())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("agentConfig = %v, want %q", err, tc.want)
		}
	}
}
