package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A server of the bench cluster that exits before it is ready ends the
// wait for it with its exit status and the end of its log, instead of a
// minute of polling and "not ready".
func TestStartBenchClusterReportsExit(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "exits.sh")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\necho listen: address already in use\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	nodes, err := startBenchCluster(context.Background(), bin, dir, 3)
	if err == nil {
		t.Fatal("a server that exits was waited for as ready")
	}
	if len(nodes) != 1 {
		t.Errorf("%d servers started, want the first only", len(nodes))
	}
	for _, want := range []string{"s1: exited before it was ready", "exit status 3", "listen: address already in use"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}
