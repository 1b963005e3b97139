package svidfiles

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func readCerts(t testing.TB, p string) []*x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := parseCerts(b)
	if err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	return certs
}

func parseCerts(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no certificate")
	}
	if len(strings.TrimSpace(string(b))) != 0 {
		return nil, errors.New("trailing bytes after the certificates")
	}
	return out, nil
}

// keyMatches parses a PKCS#8 PEM key and reports whether it is leaf's.
func keyMatches(keyPEM []byte, leaf *x509.Certificate) error {
	blk, rest := pem.Decode(keyPEM)
	if blk == nil || blk.Type != "PRIVATE KEY" || len(strings.TrimSpace(string(rest))) != 0 {
		return errors.New("svid.key is not one PKCS#8 PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return err
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok || !ek.PublicKey.Equal(leaf.PublicKey) {
		return errors.New("svid.key does not match the leaf of svid.pem")
	}
	return nil
}

func mode(t testing.TB, p string) fs.FileMode {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestWriteX509Layout(t *testing.T) {
	ca := newTestCA(t, "example.org")
	fed := newTestCA(t, "other.org")
	dir := filepath.Join(t.TempDir(), "a", "svid")
	w, err := NewWriter(dir, NoOwner)
	if err != nil {
		t.Fatal(err)
	}
	if m := mode(t, dir); m != 0o700 {
		t.Fatalf("created directory has mode %v, want 0700", m)
	}
	svid := ca.svid(t, "/web")
	m := &Material{SVID: svid, Bundle: []*x509.Certificate{ca.root},
		Federated: map[spiffeid.TrustDomain][]*x509.Certificate{fed.td: {fed.root}}}
	if err := w.WriteX509(m); err != nil {
		t.Fatal(err)
	}
	chain := readCerts(t, filepath.Join(dir, CertFile))
	if len(chain) != 2 || !chain[0].Equal(svid.Certificates[0]) || !chain[1].Equal(ca.inter) {
		t.Fatalf("svid.pem holds %d certificates, want the leaf and the intermediate", len(chain))
	}
	key, err := os.ReadFile(filepath.Join(dir, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := keyMatches(key, chain[0]); err != nil {
		t.Fatal(err)
	}
	if b := readCerts(t, filepath.Join(dir, BundleFile)); len(b) != 1 || !b[0].Equal(ca.root) {
		t.Fatal("bundle.pem is not the own trust domain's root")
	}
	if b := readCerts(t, filepath.Join(dir, FederatedDir, "other.org.pem")); len(b) != 1 || !b[0].Equal(fed.root) {
		t.Fatal("federated/other.org.pem is not the federated root")
	}
	if m := mode(t, filepath.Join(dir, KeyFile)); m != 0o600 {
		t.Fatalf("svid.key has mode %v, want 0600", m)
	}
	if m := mode(t, filepath.Join(dir, CertFile)); m != 0o644 {
		t.Fatalf("svid.pem has mode %v, want 0644", m)
	}
	// The chain verifies against the bundle, as a consumer would check.
	inter := x509.NewCertPool()
	inter.AddCert(chain[1])
	roots := x509.NewCertPool()
	roots.AddCert(ca.root)
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("written chain does not verify against bundle.pem: %v", err)
	}

	// A rotation without federated bundles empties federated/.
	if err := w.WriteX509(&Material{SVID: ca.svid(t, "/web"), Bundle: []*x509.Certificate{ca.root}}); err != nil {
		t.Fatal(err)
	}
	if ents, err := os.ReadDir(filepath.Join(dir, FederatedDir)); err != nil || len(ents) != 0 {
		t.Fatalf("federated/ after a rotation without federated bundles: %v entries, err %v", len(ents), err)
	}
}

func TestWriteX509KeepsTwoVersions(t *testing.T) {
	ca := newTestCA(t, "example.org")
	dir := t.TempDir()
	w, err := NewWriter(dir, NoOwner)
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if err := w.WriteX509(&Material{SVID: ca.svid(t, "/x"), Bundle: []*x509.Certificate{ca.root}}); err != nil {
			t.Fatal(err)
		}
	}
	ents, _ := os.ReadDir(dir)
	var versions, others []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), versionPrefix) {
			versions = append(versions, e.Name())
		} else if !strings.HasPrefix(e.Name(), ".link-") {
			others = append(others, e.Name())
		} else {
			t.Fatalf("temporary %s left behind", e.Name())
		}
	}
	if len(versions) != 2 {
		t.Fatalf("%d version directories after 5 rotations, want 2 (current and previous): %v", len(versions), versions)
	}
	want := "bundle.pem current federated svid.key svid.pem"
	if got := strings.Join(others, " "); got != want {
		t.Fatalf("directory holds %q, want %q", got, want)
	}
}

// TestWriteX509Atomic rewrites the files many times while readers poll
// them: a reader going through one resolution of current/ always finds a
// key that matches the certificate, and one reading the top-level names
// never finds a partial file.
func TestWriteX509Atomic(t *testing.T) {
	ca := newTestCA(t, "example.org")
	dir := t.TempDir()
	w, err := NewWriter(dir, NoOwner)
	if err != nil {
		t.Fatal(err)
	}
	const rotations = 50
	svids := make([]*Material, rotations)
	for i := range svids {
		svids[i] = &Material{SVID: ca.svid(t, "/x"), Bundle: []*x509.Certificate{ca.root}}
	}
	if err := w.WriteX509(svids[0]); err != nil {
		t.Fatal(err)
	}
	var (
		stop      atomic.Bool
		pairs     atomic.Int64
		restarts  atomic.Int64
		distinct  sync.Map
		wg        sync.WaitGroup
		failOnce  sync.Once
		readerErr error
	)
	fail := func(err error) { failOnce.Do(func() { readerErr = err }) }
	// One reader goroutine, so that the writer keeps a processor of its
	// own on a small machine.
	wg.Go(func() {
		for !stop.Load() {
			// A consistent pair through one resolution of current/.
			ver, err := os.Readlink(filepath.Join(dir, CurrentLink))
			if err != nil {
				fail(err)
				return
			}
			certPEM, err1 := os.ReadFile(filepath.Join(dir, ver, CertFile))
			keyPEM, err2 := os.ReadFile(filepath.Join(dir, ver, KeyFile))
			if err := errors.Join(err1, err2); errors.Is(err, fs.ErrNotExist) {
				// Two rotations came while this reader read:
				// the documented protocol starts over.
				restarts.Add(1)
				continue
			} else if err != nil {
				fail(err)
				return
			}
			certs, err := parseCerts(certPEM)
			if err != nil {
				fail(err)
				return
			}
			if err := keyMatches(keyPEM, certs[0]); err != nil {
				fail(err)
				return
			}
			distinct.Store(certs[0].SerialNumber.String(), true)
			pairs.Add(1)

			// Every top-level file is whole.
			for _, name := range []string{CertFile, BundleFile} {
				b, err := os.ReadFile(filepath.Join(dir, name))
				if err != nil {
					fail(err)
					return
				}
				if _, err := parseCerts(b); err != nil {
					fail(fmt.Errorf("%s: %w", name, err))
					return
				}
			}
			b, err := os.ReadFile(filepath.Join(dir, KeyFile))
			if err != nil {
				fail(err)
				return
			}
			if blk, _ := pem.Decode(b); blk == nil {
				fail(errors.New("partial svid.key"))
				return
			}
		}
	})
	for _, m := range svids[1:] {
		if err := w.WriteX509(m); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	if readerErr != nil {
		t.Fatalf("a reader saw a bad state: %v", readerErr)
	}
	n := 0
	distinct.Range(func(any, any) bool { n++; return true })
	if pairs.Load() < 10 || n < 2 {
		t.Fatalf("readers checked %d pairs of %d different SVIDs; want at least 10 of 2", pairs.Load(), n)
	}
	t.Logf("%d consistent key/certificate pairs read across %d different SVIDs during %d rotations (%d reads started over)", pairs.Load(), n, rotations, restarts.Load())
}

func TestNewWriterRefusesBadDirectories(t *testing.T) {
	base := t.TempDir()
	file := filepath.Join(base, "file")
	os.WriteFile(file, []byte("x"), 0o644)
	open := filepath.Join(base, "open")
	os.Mkdir(open, 0o755)
	os.Chmod(open, 0o777)
	real := filepath.Join(base, "real")
	os.Mkdir(real, 0o700)
	link := filepath.Join(base, "link")
	os.Symlink(real, link)
	for _, tc := range []struct{ dir, want string }{
		{"", "directory is empty"},
		{file, "is not a directory"},
		{open, "writable by group or others"},
		{link, "is a symbolic link"},
		{filepath.Join(file, "sub"), "not a directory"},
	} {
		_, err := NewWriter(tc.dir, NoOwner)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "svidfiles: ") {
			t.Errorf("NewWriter(%q) = %v, want an error with %q", tc.dir, err, tc.want)
		}
	}
	if _, err := NewWriter(real, NoOwner); err != nil {
		t.Fatalf("a 0700 directory of ours is refused: %v", err)
	}
}

func TestWriteX509RefusesIncompleteMaterial(t *testing.T) {
	ca := newTestCA(t, "example.org")
	w, err := NewWriter(t.TempDir(), NoOwner)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteX509(&Material{}); err == nil || !strings.Contains(err.Error(), "no X.509-SVID") {
		t.Fatalf("empty material: %v", err)
	}
	if err := w.WriteX509(&Material{SVID: ca.svid(t, "/x")}); err == nil || !strings.Contains(err.Error(), "no trust bundle for example.org") {
		t.Fatalf("material without a bundle: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(w.Dir(), CurrentLink)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a refused write left %s: %v", CurrentLink, err)
	}
}

func TestWriteOwner(t *testing.T) {
	// Without root only our own ids can be given, which still goes
	// through the chown path; root gives the files away.
	uid, gid := os.Getuid(), os.Getgid()
	if os.Geteuid() == 0 {
		uid, gid = 4242, 4343
	}
	ca := newTestCA(t, "example.org")
	dir := filepath.Join(t.TempDir(), "owned")
	w, err := NewWriter(dir, Owner{UID: uid, GID: gid})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteX509(&Material{SVID: ca.svid(t, "/x"), Bundle: []*x509.Certificate{ca.root}}); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteJWT("aud", "tok"); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{".", CertFile, KeyFile, BundleFile, CurrentLink, JWTFileName("aud")} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if int(st.Uid) != uid || int(st.Gid) != gid {
			t.Errorf("%s belongs to %d:%d, want %d:%d", name, st.Uid, st.Gid, uid, gid)
		}
	}
}

func TestWriteJWT(t *testing.T) {
	w, err := NewWriter(t.TempDir(), NoOwner)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteJWT("spiffe://example.org/db", "a.b.c"); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(w.Dir(), "jwt_spiffe___example.org_db.token")
	b, err := os.ReadFile(p)
	if err != nil || string(b) != "a.b.c\n" {
		t.Fatalf("token file: %q, %v", b, err)
	}
	if m := mode(t, p); m != 0o600 {
		t.Fatalf("token file has mode %v, want 0600", m)
	}
}

func TestCheckAudiences(t *testing.T) {
	if err := CheckAudiences([]string{"a", "spiffe://example.org/db"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		auds []string
		want string
	}{
		{[]string{""}, "empty JWT audience"},
		{[]string{"a", "a"}, `"a" given twice`},
		{[]string{"a/b", "a:b"}, "would both be written to jwt_a_b.token"},
	} {
		if err := CheckAudiences(tc.auds); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CheckAudiences(%q) = %v, want %q", tc.auds, err, tc.want)
		}
	}
}
