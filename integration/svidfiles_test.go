package integration

import (
	"bufio"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sigil-id/sigil/internal/eventually"
)

var (
	consumerBinOnce sync.Once
	consumerBin     string
	consumerBinErr  error
)

// svidConsumerBin builds testdata/svidconsumer once, next to the sigil
// binary.
func svidConsumerBin(t *testing.T) string {
	t.Helper()
	consumerBinOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Dir(filepath.Dir(file))
		consumerBin = filepath.Join(filepath.Dir(sigilBin), "svidconsumer")
		cmd := exec.Command("go", "build", "-o", consumerBin, "./integration/testdata/svidconsumer")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			consumerBinErr = fmt.Errorf("%v\n%s", err, out)
		}
	})
	if consumerBinErr != nil {
		t.Fatalf("building svidconsumer: %v", consumerBinErr)
	}
	return consumerBin
}

// consumerRecord is a line written by svidconsumer.
type consumerRecord struct {
	Event    string `json:"event"`
	PID      int    `json:"pid"`
	Serial   string `json:"serial"`
	SPIFFEID string `json:"spiffe_id"`
	ChainLen int    `json:"chain_len"`
	JWT      bool   `json:"jwt"`
	Error    string `json:"error"`
	Reads    int    `json:"reads"`
	BadReads int    `json:"bad_reads"`
	BadError string `json:"bad_error"`
}

func readRecords(t *testing.T, path string) []consumerRecord {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []consumerRecord
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r consumerRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("bad record %q: %v", sc.Text(), err)
		}
		out = append(out, r)
	}
	return out
}

func countEvents(rs []consumerRecord, event string) int {
	n := 0
	for _, r := range rs {
		if r.Event == event {
			n++
		}
	}
	return n
}

// TestSVIDWatchExec runs `sigil svid watch -write DIR -exec` against a
// real server and agent, with an entry whose SVIDs live 6s: the consumer
// is started once the files are written and restarted after each
// rotation with the new files, and it never sees a half-written file or a
// key that does not match the certificate.
func TestSVIDWatchExec(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	bin := svidConsumerBin(t)
	root := t.TempDir()
	s := newServer(t, filepath.Join(root, "server"))
	s.start()
	a := newAgent(t, s, filepath.Join(root, "agent"))
	a.start()
	want := "spiffe://" + trustDomain + "/legacy"
	s.cli("entry", "create", "-spiffe-id", want, "-parent-id", a.id, "-selector", uidSelector(t), "-x509-svid-ttl", "6s")

	dir := filepath.Join(root, "svid")
	record := filepath.Join(root, "record.jsonl")
	w := startProc(t, "svid watch", filepath.Join(root, "watch.log"), nil, sigilBin,
		"svid", "watch", "-socket", a.socket, "-write", dir, "-jwt-audience", "spiffe://"+trustDomain+"/db",
		"-stop-timeout", "5s", "-exec", bin, "--", record, dir)

	// Three starts: the first write and two rotations.
	eventually.NoError(t, 40*time.Second, func() error {
		if w.exited() {
			return eventually.Stop(fmt.Errorf("svid watch exited: %v", w.err))
		}
		if n := countEvents(readRecords(t, record), "start"); n < 3 {
			return fmt.Errorf("consumer started %d times, want 3", n)
		}
		return nil
	})
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("directory %s: %v %v, want mode 0700", dir, fi.Mode().Perm(), err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "svid.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("svid.key: %v, want mode 0600", err)
	}
	w.stop() // SIGTERM: a clean exit, and the consumer is stopped too

	rs := readRecords(t, record)
	serials := map[string]bool{}
	running := map[int]bool{}
	reads := 0
	for i, r := range rs {
		switch r.Event {
		case "start":
			if len(running) != 0 {
				t.Errorf("record %d: consumer %d started while %v still ran", i, r.PID, running)
			}
			running[r.PID] = true
			if r.Error != "" {
				t.Errorf("consumer %d found bad files at start: %s", r.PID, r.Error)
			}
			if r.SPIFFEID != want || !r.JWT || r.ChainLen < 1 {
				t.Errorf("consumer %d saw %+v, want %s with a JWT-SVID", r.PID, r, want)
			}
			if serials[r.Serial] {
				t.Errorf("consumer restarted with the same certificate %s", r.Serial)
			}
			serials[r.Serial] = true
		case "stop":
			if !running[r.PID] {
				t.Errorf("record %d: stop of %d, which was not running", i, r.PID)
			}
			delete(running, r.PID)
			reads += r.Reads
			if r.BadReads != 0 {
				t.Errorf("consumer %d saw bad files %d times in %d reads: %s", r.PID, r.BadReads, r.Reads, r.BadError)
			}
		}
	}
	if len(running) != 0 {
		t.Errorf("consumers %v were not stopped with svid watch", running)
	}
	if reads == 0 {
		t.Error("the consumers never read the files while they ran")
	}
	if len(serials) < 3 {
		t.Errorf("consumer saw %d different certificates, want 3", len(serials))
	}
	t.Logf("%d consumer runs, %d different certificates, %d reads of the files while running, none bad", countEvents(rs, "start"), len(serials), reads)
}

// TestAgentSVIDFiles configures an svid_files block on the agent: it
// writes the SVID of the entry whose selectors are among the block's,
// with the files given to the configured uid and gid, and runs the
// rotation command.
func TestAgentSVIDFiles(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	root := t.TempDir()
	s := newServer(t, filepath.Join(root, "server"))
	s.start()
	a := newAgent(t, s, filepath.Join(root, "agent"))
	dir := filepath.Join(root, "files")
	hookOut := filepath.Join(root, "hook.out")
	owner := os.Getuid()
	if owner == 0 {
		owner = 4321 // root can give the files away
	}
	cfg, err := os.ReadFile(a.config)
	if err != nil {
		t.Fatal(err)
	}
	block := fmt.Sprintf(`
  svid_files "legacy" {
    directory     = %q
    selectors     = ["unix:uid:%d", "unix:gid:%d"]
    jwt_audiences = ["db"]
    uid           = %d
    gid           = %d
    command       = ["sh", "-c", "echo rotated >> %s"]
  }
}
`, dir, owner, owner, owner, owner, hookOut)
	newCfg := strings.TrimSuffix(strings.TrimRight(string(cfg), "\n"), "}") + block
	if err := os.WriteFile(a.config, []byte(newCfg), 0o600); err != nil {
		t.Fatal(err)
	}
	a.start()
	want := "spiffe://" + trustDomain + "/legacy-files"
	// An entry with a selector the block does not have is not its.
	createEntry(t, s, "spiffe://"+trustDomain+"/not-this", a.id, fmt.Sprintf("unix:uid:%d", owner), "unix:path:/nope")
	createEntry(t, s, want, a.id, fmt.Sprintf("unix:uid:%d", owner))

	eventually.NoError(t, 30*time.Second, func() error {
		b, err := os.ReadFile(hookOut)
		if err != nil || !strings.Contains(string(b), "rotated") {
			return fmt.Errorf("the rotation command has not run: %v", err)
		}
		return nil
	})
	certPEM, err := os.ReadFile(filepath.Join(dir, "svid.pem"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(certPEM)
	if blk == nil {
		t.Fatal("svid.pem holds no certificate")
	}
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != want {
		t.Fatalf("svid.pem is for %v, want %s", leaf.URIs, want)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, "svid.key"))
	if err != nil {
		t.Fatal(err)
	}
	kblk, _ := pem.Decode(keyPEM)
	key, err := x509.ParsePKCS8PrivateKey(kblk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if !key.(crypto.Signer).Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(leaf.PublicKey) {
		t.Fatal("svid.key does not match svid.pem")
	}
	for name, mode := range map[string]os.FileMode{".": 0o700, "svid.key": 0o600, "svid.pem": 0o644, "bundle.pem": 0o644, "jwt_db.token": 0o600} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode().Perm() != mode || int(st.Uid) != owner || int(st.Gid) != owner {
			t.Errorf("%s: mode %v owner %d:%d, want %v %d:%d", name, fi.Mode().Perm(), st.Uid, st.Gid, mode, owner, owner)
		}
	}
	a.p.stop()
}
