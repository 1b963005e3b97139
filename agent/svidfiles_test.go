package agent

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/svidfiles"
)

func TestSVIDFilesValidate(t *testing.T) {
	good := func() Config {
		c := DefaultConfig()
		c.TrustDomain = testTD
		c.ServerAddress = "127.0.0.1:8081"
		c.DataDir = "/tmp/x"
		withPlugins(&c, "")
		c.SVIDFiles = []SVIDFiles{{
			Name: "web", Directory: "/run/web", Selectors: []*sigilv1.Selector{{Type: "unix", Value: "uid:33"}},
			JWTAudiences: []string{"db"}, Signal: syscall.SIGHUP, PIDFile: "/run/web.pid",
		}}
		return c
	}
	if c := good(); c.Validate() != nil {
		t.Fatalf("good config refused: %v", c.Validate())
	}
	for _, tc := range []struct {
		name   string
		mutate func(*SVIDFiles)
		want   string
	}{
		{"no name", func(f *SVIDFiles) { f.Name = "" }, "svid_files block without a name"},
		{"relative directory", func(f *SVIDFiles) { f.Directory = "svid" }, `svid_files "web": directory "svid" must be an absolute path`},
		{"no selectors", func(f *SVIDFiles) { f.Selectors = nil }, `svid_files "web": no selectors`},
		{"empty selector", func(f *SVIDFiles) { f.Selectors = append(f.Selectors, &sigilv1.Selector{Type: "unix"}) }, "selector 1 is empty"},
		{"signal without pid file", func(f *SVIDFiles) { f.PIDFile = "" }, "signal and pid_file go together"},
		{"signal and command", func(f *SVIDFiles) { f.Command = []string{"true"} }, "not both"},
		{"audience twice", func(f *SVIDFiles) { f.JWTAudiences = []string{"db", "db"} }, `JWT audience "db" given twice`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := good()
			tc.mutate(&c.SVIDFiles[0])
			if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "agent: ") {
				t.Fatalf("Validate = %v, want agent: ...%s", err, tc.want)
			}
		})
	}
	c := good()
	c.SVIDFiles = append(c.SVIDFiles, c.SVIDFiles[0])
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), `two svid_files blocks are named "web"`) {
		t.Fatalf("two blocks with one name: %v", err)
	}
	c = good()
	other := c.SVIDFiles[0]
	other.Name, other.Directory = "other", "/run/web/"
	c.SVIDFiles = append(c.SVIDFiles, other)
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), `svid_files "web" and "other" both write to /run/web`) {
		t.Fatalf("two blocks with one directory: %v", err)
	}
}

// A block whose directory cannot be used stops the agent before it
// attests or serves anything.
func TestSVIDFilesBadDirectoryStopsTheAgent(t *testing.T) {
	tmp := t.TempDir()
	open := filepath.Join(tmp, "open")
	if err := os.Mkdir(open, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(open, 0o777)
	c := DefaultConfig()
	c.TrustDomain = testTD
	c.ServerAddress = "127.0.0.1:8081"
	c.DataDir = filepath.Join(tmp, "data")
	withPlugins(&c, "")
	c.SVIDFiles = []SVIDFiles{{Name: "web", Directory: open, Selectors: []*sigilv1.Selector{{Type: "unix", Value: "uid:33"}}}}
	a, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.prepareSVIDFiles()
	if err == nil || !strings.HasPrefix(err.Error(), `agent: svid_files "web": svidfiles: directory `) || !strings.Contains(err.Error(), "writable by group or others") {
		t.Fatalf("prepareSVIDFiles = %v", err)
	}
	made := filepath.Join(tmp, "made", "svid")
	a.cfg.SVIDFiles[0].Directory = made
	runs, err := a.prepareSVIDFiles()
	if err != nil || len(runs) != 1 {
		t.Fatalf("prepareSVIDFiles = %d runs, %v", len(runs), err)
	}
	if fi, err := os.Stat(made); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("directory not created 0700: %v", err)
	}
}

// chanNotifier reports each rotation on a channel.
type chanNotifier chan struct{}

func (c chanNotifier) Rotated(context.Context) error { c <- struct{}{}; return nil }
func (c chanNotifier) Exited() <-chan error          { return nil }
func (c chanNotifier) Stop()                         {}

// The files of a block hold the SVID of the entry whose selectors are
// among the block's, from the agent's own cache, and follow its renewal.
func TestSVIDFilesFromTheCache(t *testing.T) {
	f := newCacheFixture(t)
	f.c.SetBundle(f.bundle(f.ca))
	f.c.ReplaceEntries([]*sigilv1.Entry{
		entry("b", "needs-gid", 1, "uid:1", "gid:9"), // not a subset: not served
		entry("a", "web", 2, "uid:1"),
	})
	f.mintAll(f.ca)

	dir := filepath.Join(t.TempDir(), "files")
	w, err := svidfiles.NewWriter(dir, svidfiles.NoOwner)
	if err != nil {
		t.Fatal(err)
	}
	rotated := make(chanNotifier, 4)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- svidfiles.Run(ctx, svidfiles.Config{Writer: w, Notifier: rotated, Clock: f.clk},
			&cacheSource{c: f.c, selectors: []*sigilv1.Selector{sel("uid:1")}, log: zap.NewNop()})
	}()
	<-rotated
	leaf := readLeaf(t, dir)
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://example.org/web" {
		t.Fatalf("svid.pem is for %v, want spiffe://example.org/web", leaf.URIs)
	}
	first := leaf.SerialNumber.String()

	// Renewal: the cache mints again past half the lifetime.
	f.clk.Add(45 * time.Minute)
	if n := f.mintAll(f.ca); n == 0 {
		t.Fatal("nothing renewed")
	}
	<-rotated
	if leaf := readLeaf(t, dir); leaf.SerialNumber.String() == first {
		t.Fatal("the renewed SVID was not written")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func readLeaf(t *testing.T, dir string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, svidfiles.CertFile))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatal("svid.pem holds no PEM block")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
