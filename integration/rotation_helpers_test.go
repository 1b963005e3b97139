package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-id/sigil/internal/eventually"
)

var (
	loopBinOnce sync.Once
	loopBin     string
	loopBinErr  error
)

// mtlsloopBin builds testdata/mtlsloop once, next to the sigil binary.
func mtlsloopBin(t *testing.T) string {
	t.Helper()
	loopBinOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Dir(filepath.Dir(file))
		loopBin = filepath.Join(filepath.Dir(sigilBin), "mtlsloop")
		cmd := exec.Command("go", "build", "-o", loopBin, "./integration/testdata/mtlsloop")
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		if err != nil {
			loopBinErr = err
			loopBin = string(out)
		}
	})
	if loopBinErr != nil {
		t.Fatalf("building mtlsloop: %v\n%s", loopBinErr, loopBin)
	}
	return loopBin
}

// newServerWith is newServer with extra settings in the server block.
func newServerWith(t *testing.T, dir, extra string) *server {
	t.Helper()
	s := newServer(t, dir)
	b, err := os.ReadFile(s.config)
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.TrimRight(string(b), "\n")
	cfg = strings.TrimSuffix(cfg, "}") + extra + "\n}\n"
	if err := os.WriteFile(s.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}

// loopStatus is what an mtlsloop workload reports.
type loopStatus struct {
	Requests      int       `json:"requests"`
	Failures      int       `json:"failures"`
	LastErrors    []string  `json:"last_errors"`
	SVIDSerial    string    `json:"svid_serial"`
	SVIDAuthority string    `json:"svid_authority"`
	SVIDNotAfter  time.Time `json:"svid_not_after"`
	SVIDsSeen     int       `json:"svids_seen"`
	Authorities   []string  `json:"authorities_seen"`
	PeerBundle    []string  `json:"peer_bundle"`
}

// loopPair is a server and a client mtlsloop workload under one agent.
type loopPair struct {
	t                    *testing.T
	web, client          *proc
	webStatus, cliStatus string
}

// startLoopPair registers two entries told apart by executable path and
// starts a continuous mTLS client and server.
func startLoopPair(t *testing.T, s *server, a *agent, root string) *loopPair {
	t.Helper()
	bin := mtlsloopBin(t)
	bins := filepath.Join(root, "bin")
	os.MkdirAll(bins, 0o755)
	srvBin, cliBin := filepath.Join(bins, "loopweb"), filepath.Join(bins, "loopclient")
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{srvBin, cliBin} {
		if err := os.WriteFile(p, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	srvID := "spiffe://" + trustDomain + "/loop/web"
	cliID := "spiffe://" + trustDomain + "/loop/client"
	createEntry(t, s, srvID, a.id, uidSelector(t), "unix:path:"+srvBin)
	createEntry(t, s, cliID, a.id, uidSelector(t), "unix:path:"+cliBin)
	addr := freeAddr(t)
	env := []string{"SPIFFE_ENDPOINT_SOCKET=unix://" + a.socket}
	lp := &loopPair{t: t, webStatus: filepath.Join(root, "web.json"), cliStatus: filepath.Join(root, "client.json")}
	lp.web = startProc(t, "loopweb", filepath.Join(root, "loopweb.log"), env, srvBin, "serve", addr, cliID, lp.webStatus)
	lp.client = startProc(t, "loopclient", filepath.Join(root, "loopclient.log"), env, cliBin, "dial", addr, srvID, lp.cliStatus)
	// Wait for traffic.
	err = eventually.Wait(60*time.Second, func() error {
		if w, c := lp.status(); w.Requests <= 5 || c.Requests <= 5 {
			return fmt.Errorf("web %+v client %+v", w, c)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("no mTLS traffic: %v", err)
	}
	return lp
}

func readLoopStatus(path string) loopStatus {
	var st loopStatus
	if b, err := os.ReadFile(path); err == nil {
		json.Unmarshal(b, &st)
	}
	return st
}

func (lp *loopPair) status() (web, client loopStatus) {
	return readLoopStatus(lp.webStatus), readLoopStatus(lp.cliStatus)
}

// stop ends both workloads and returns their final status.
func (lp *loopPair) stop() (web, client loopStatus) {
	lp.client.stop()
	lp.web.stop()
	return lp.status()
}

// checkNoFailures fails the test if either side saw a failed request.
func (lp *loopPair) checkNoFailures(web, client loopStatus) {
	lp.t.Helper()
	if web.Failures != 0 || client.Failures != 0 {
		lp.t.Errorf("failed requests: web %d of %d %v; client %d of %d %v",
			web.Failures, web.Requests, web.LastErrors, client.Failures, client.Requests, client.LastErrors)
	}
}

// authorityView is `sigil authority show -output json`.
type authorityView struct {
	ServerID string `json:"server_id"`
	Slots    []struct {
		Kind     string `json:"kind"`
		Seq      int    `json:"seq"`
		ID       string `json:"id"`
		State    string `json:"state"`
		NotAfter string `json:"not_after"`
		Tainted  bool   `json:"tainted"`
	} `json:"slots"`
	Bundle []struct {
		Kind     string `json:"kind"`
		ID       string `json:"id"`
		NotAfter string `json:"not_after"`
		Tainted  bool   `json:"tainted"`
	} `json:"bundle"`
}

func (s *server) authorities() authorityView {
	s.t.Helper()
	var v authorityView
	out := s.cli("authority", "show", "-output", "json")
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		s.t.Fatalf("authority show output %q: %v", out, err)
	}
	return v
}

// active returns the ID of the active key of kind.
func (v authorityView) active(kind string) string {
	for _, s := range v.Slots {
		if s.Kind == kind && s.State == "active" {
			return s.ID
		}
	}
	return ""
}

func (v authorityView) inBundle(kind, id string) bool {
	for _, b := range v.Bundle {
		if b.Kind == kind && b.ID == id {
			return true
		}
	}
	return false
}

// healthErr reports the agent's /ready result as an error (nil when ready).
func (a *agent) healthErr() error {
	resp, err := http.Get("http://" + a.health + "/ready")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s: %s", resp.Status, b)
	}
	return nil
}
