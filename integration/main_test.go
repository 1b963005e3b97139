// Package integration drives real sigil processes: servers with Raft on
// disk, agents, and workloads that use go-spiffe over real unix sockets and
// real TLS.
package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

var (
	sigilBin    string
	workloadBin string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "sigil-it-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Dir(filepath.Dir(file))
	sigilBin = filepath.Join(dir, "sigil")
	workloadBin = filepath.Join(dir, "mtlsworkload")
	for _, b := range []struct{ out, pkg string }{
		{sigilBin, "./cmd/sigil"},
		{workloadBin, "./integration/testdata/mtlsworkload"},
	} {
		cmd := exec.Command("go", "build", "-o", b.out, b.pkg)
		cmd.Dir = root
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "building %s: %v\n", b.pkg, err)
			return 1
		}
	}
	return m.Run()
}
