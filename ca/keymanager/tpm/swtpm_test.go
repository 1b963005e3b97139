package tpm

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigil-id/sigil/internal/eventually"
)

// swtpm is a software TPM 2.0 (Debian's swtpm) run by a test, reached
// through its unix socket like a device.
type swtpm struct {
	t      *testing.T
	state  string // the TPM's own state (its seeds): the "hardware"
	socket string
	cmd    *exec.Cmd
	out    *bytes.Buffer
}

// startSWTPM starts a fresh software TPM; it is stopped when the test
// ends. .ci/run installs swtpm.
func startSWTPM(t testing.TB) *swtpm {
	t.Helper()
	dir, err := os.MkdirTemp("", "swtpm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := &swtpm{state: filepath.Join(dir, "state"), socket: filepath.Join(dir, "tpm.sock")}
	if err := os.Mkdir(s.state, 0o700); err != nil {
		t.Fatal(err)
	}
	s.start(t)
	t.Cleanup(s.stop)
	return s
}

// start runs swtpm on s's state directory and waits for its socket.
func (s *swtpm) start(t testing.TB) {
	t.Helper()
	bin, err := exec.LookPath("swtpm")
	if err != nil {
		t.Fatalf("swtpm is not installed (apt-get install swtpm; .ci/run does): %v", err)
	}
	os.Remove(s.socket)
	s.out = new(bytes.Buffer)
	s.cmd = exec.Command(bin, "socket", "--tpm2",
		"--server", "type=unixio,path="+s.socket,
		"--ctrl", "type=unixio,path="+s.socket+".ctrl",
		"--tpmstate", "dir="+s.state,
		"--flags", "not-need-init,startup-clear",
	)
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("starting swtpm: %v", err)
	}
	err = eventually.Wait(10*time.Second, func() error {
		c, err := net.Dial("unix", s.socket)
		if err != nil {
			return err
		}
		return c.Close()
	})
	if err != nil {
		s.stop()
		t.Fatalf("swtpm did not listen on %s: %v\n%s", s.socket, err, s.out)
	}
}

// stop ends swtpm (its state stays: start runs the same TPM again, as
// after a reboot).
func (s *swtpm) stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Kill()
	s.cmd.Wait()
	s.cmd = nil
}

// restart stops and starts the same TPM.
func (s *swtpm) restart(t testing.TB) {
	t.Helper()
	s.stop()
	s.start(t)
}

func (s *swtpm) String() string { return fmt.Sprintf("swtpm at %s", s.socket) }
