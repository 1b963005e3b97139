// Package svidfiles keeps an X.509-SVID, its trust bundles and JWT-SVIDs
// current as files in a directory, for software that cannot speak the
// SPIFFE Workload API, and tells that software about each rotation by
// restarting it, signalling it or running a command. It is shared by
// `sigil svid watch -write` (material from the Workload API) and the
// agent's svid_files blocks (material from the agent's own cache).
//
// # Layout
//
// Each X.509 rotation is written into a new hidden directory, and the
// symbolic link "current" is then replaced, in one rename, to point at it:
//
//	DIR/current        -> .svid-XXXXXX           (swapped atomically)
//	DIR/svid.pem       -> current/svid.pem       leaf first, then intermediates
//	DIR/svid.key       -> current/svid.key       PKCS#8, mode 0600
//	DIR/bundle.pem     -> current/bundle.pem     own trust domain's X.509 authorities
//	DIR/federated      -> current/federated      one <trust domain>.pem per federated bundle
//	DIR/jwt_<aud>.token                          one JWT-SVID per audience, mode 0600
//
// A file is never seen half-written. Every file read through one
// resolution of "current" (readlink DIR/current, then read from that
// directory) belongs to one rotation, so the key always matches the
// certificate. The previous rotation's directory is kept until the next
// rotation, so a reader that resolved "current" just before a swap can
// still finish; one that finds a file gone (rotations came faster than it
// read) resolves "current" again. Readers that open DIR/svid.pem and DIR/svid.key separately get a
// matching pair as long as they read after being told of the rotation
// (restart, signal, command), which happens only once every file of the
// rotation is in place.
package svidfiles

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/sigil-id/sigil/internal/atomicfile"
)

// File and link names in the directory.
const (
	CurrentLink   = "current"
	CertFile      = "svid.pem"
	KeyFile       = "svid.key"
	BundleFile    = "bundle.pem"
	FederatedDir  = "federated"
	versionPrefix = ".svid-"
)

// Material is one rotation's X.509 content.
type Material struct {
	// SVID is the X.509-SVID written to svid.pem and svid.key. Required.
	SVID *x509svid.SVID
	// Bundle holds the X.509 authorities of the SVID's own trust domain.
	// Required: a consumer cannot verify its peers without it.
	Bundle []*x509.Certificate
	// Federated holds the X.509 authorities of the federated trust
	// domains, written to federated/<trust domain>.pem.
	Federated map[spiffeid.TrustDomain][]*x509.Certificate
}

// Owner is who the written files belong to. A negative UID or GID leaves
// that part of the ownership as the writing process's.
type Owner struct {
	UID, GID int
}

// NoOwner keeps files owned by the writing process.
var NoOwner = Owner{UID: -1, GID: -1}

// Writer writes Material and JWT-SVIDs into one directory. It is not safe
// for concurrent use; Runner serializes its calls.
type Writer struct {
	dir   string
	owner Owner
}

// NewWriter prepares dir: it is created with mode 0700 (and given to
// owner) when missing; an existing dir must be a directory, not a
// symbolic link, and not writable by group or others, since whoever can
// write into it can swap the files a consumer trusts.
func NewWriter(dir string, owner Owner) (*Writer, error) {
	if dir == "" {
		return nil, errors.New("svidfiles: directory is empty")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("svidfiles: directory %q: %w", dir, err)
	}
	fi, err := os.Lstat(abs)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(filepath.Dir(abs), 0o755); err != nil {
			return nil, fmt.Errorf("svidfiles: %w", err)
		}
		if err := os.Mkdir(abs, 0o700); err != nil {
			return nil, fmt.Errorf("svidfiles: %w", err)
		}
		if err := os.Chmod(abs, 0o700); err != nil { // umask-proof
			return nil, fmt.Errorf("svidfiles: %w", err)
		}
		if err := chown(abs, owner, false); err != nil {
			return nil, err
		}
	case err != nil:
		return nil, fmt.Errorf("svidfiles: %w", err)
	case fi.Mode()&fs.ModeSymlink != 0:
		return nil, fmt.Errorf("svidfiles: %s is a symbolic link; give the directory itself", abs)
	case !fi.IsDir():
		return nil, fmt.Errorf("svidfiles: %s is not a directory", abs)
	case fi.Mode().Perm()&0o022 != 0:
		return nil, fmt.Errorf("svidfiles: directory %s is writable by group or others (mode %v); make it 0700 or 0755", abs, fi.Mode().Perm())
	default:
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			uid := int(st.Uid)
			if uid != os.Geteuid() && uid != owner.UID && uid != 0 {
				return nil, fmt.Errorf("svidfiles: directory %s belongs to uid %d, not to this process (uid %d), root or the files' owner", abs, uid, os.Geteuid())
			}
		}
	}
	return &Writer{dir: abs, owner: owner}, nil
}

// Dir is the absolute path of the directory.
func (w *Writer) Dir() string { return w.dir }

// WriteX509 writes m as a new rotation: every file into a new version
// directory, then "current" is swapped to it in one rename, and the
// version directories older than the previous one are removed. On error
// the directory still shows the previous rotation in full.
func (w *Writer) WriteX509(m *Material) error {
	files, err := encode(m)
	if err != nil {
		return err
	}
	ver, err := os.MkdirTemp(w.dir, versionPrefix)
	if err != nil {
		return fmt.Errorf("svidfiles: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(ver)
		}
	}()
	if err := os.Chmod(ver, 0o755); err != nil {
		return fmt.Errorf("svidfiles: %w", err)
	}
	if err := os.Mkdir(filepath.Join(ver, FederatedDir), 0o755); err != nil {
		return fmt.Errorf("svidfiles: %w", err)
	}
	for _, f := range files {
		p := filepath.Join(ver, f.name)
		if err := createFile(p, f.data, f.mode); err != nil {
			return err
		}
		if err := chown(p, w.owner, false); err != nil {
			return err
		}
	}
	for _, d := range []string{filepath.Join(ver, FederatedDir), ver} {
		if err := chown(d, w.owner, false); err != nil {
			return err
		}
		if err := atomicfile.SyncDir(d); err != nil {
			return fmt.Errorf("svidfiles: %w", err)
		}
	}
	prev, _ := os.Readlink(filepath.Join(w.dir, CurrentLink))
	if err := w.link(CurrentLink, filepath.Base(ver)); err != nil {
		return err
	}
	ok = true
	for _, name := range []string{CertFile, KeyFile, BundleFile, FederatedDir} {
		if err := w.link(name, filepath.Join(CurrentLink, name)); err != nil {
			return err
		}
	}
	w.prune(filepath.Base(ver), filepath.Base(prev))
	return nil
}

// WriteJWT replaces the file of audience with token (mode 0600).
func (w *Writer) WriteJWT(audience, token string) error {
	p := filepath.Join(w.dir, JWTFileName(audience))
	if err := writeFile(p, []byte(token+"\n"), 0o600); err != nil {
		return err
	}
	return chown(p, w.owner, false)
}

// JWTFileName is the name of the file holding the JWT-SVID for audience:
// jwt_<audience>.token, with every byte outside [A-Za-z0-9._-] replaced
// by '_' ("spiffe://example.org/db" is jwt_spiffe___example.org_db.token).
func JWTFileName(audience string) string {
	var b strings.Builder
	b.WriteString("jwt_")
	for i := 0; i < len(audience); i++ {
		c := audience[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_' {
			b.WriteByte(c)
		} else {
			b.WriteByte('_')
		}
	}
	b.WriteString(".token")
	return b.String()
}

// CheckAudiences refuses an empty audience, a repeated one and two whose
// file names (JWTFileName) collide.
func CheckAudiences(auds []string) error {
	seen := make(map[string]string, len(auds))
	for _, a := range auds {
		if a == "" {
			return errors.New("svidfiles: empty JWT audience")
		}
		n := JWTFileName(a)
		if o, dup := seen[n]; dup {
			if o == a {
				return fmt.Errorf("svidfiles: JWT audience %q given twice", a)
			}
			return fmt.Errorf("svidfiles: JWT audiences %q and %q would both be written to %s", o, a, n)
		}
		seen[n] = a
	}
	return nil
}

type file struct {
	name string
	data []byte
	mode fs.FileMode
}

func encode(m *Material) ([]file, error) {
	if m == nil || m.SVID == nil || len(m.SVID.Certificates) == 0 || m.SVID.PrivateKey == nil {
		return nil, errors.New("svidfiles: no X.509-SVID to write")
	}
	if len(m.Bundle) == 0 {
		return nil, fmt.Errorf("svidfiles: no trust bundle for %s", m.SVID.ID.TrustDomain())
	}
	der, err := x509.MarshalPKCS8PrivateKey(m.SVID.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("svidfiles: encode private key: %w", err)
	}
	files := []file{
		{KeyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600},
		{CertFile, certsPEM(m.SVID.Certificates), 0o644},
		{BundleFile, certsPEM(m.Bundle), 0o644},
	}
	tds := make([]spiffeid.TrustDomain, 0, len(m.Federated))
	for td := range m.Federated {
		tds = append(tds, td)
	}
	sort.Slice(tds, func(i, j int) bool { return tds[i].String() < tds[j].String() })
	for _, td := range tds {
		if td.IsZero() || len(m.Federated[td]) == 0 {
			continue
		}
		files = append(files, file{filepath.Join(FederatedDir, td.String()+".pem"), certsPEM(m.Federated[td]), 0o644})
	}
	return files, nil
}

func certsPEM(certs []*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range certs {
		pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return b.Bytes()
}

func writeFile(p string, data []byte, mode fs.FileMode) error {
	if err := atomicfile.WriteFile(p, data, mode); err != nil {
		return fmt.Errorf("svidfiles: %w", err)
	}
	return nil
}

// createFile writes a new file that no reader can see yet (it is in a
// version directory "current" does not point to), flushed to disk so that
// it is complete once "current" points to it, even after a crash.
func createFile(p string, data []byte, mode fs.FileMode) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("svidfiles: %w", err)
	}
	defer f.Close()
	// The mode does not depend on the umask.
	if err := f.Chmod(mode); err != nil {
		return fmt.Errorf("svidfiles: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("svidfiles: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("svidfiles: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("svidfiles: %w", err)
	}
	return nil
}

// link makes DIR/name a symbolic link to target, replacing whatever is
// there in one rename; an existing directory (not a link) is refused.
func (w *Writer) link(name, target string) error {
	p := filepath.Join(w.dir, name)
	if cur, err := os.Readlink(p); err == nil && cur == target {
		return nil
	}
	if fi, err := os.Lstat(p); err == nil && fi.IsDir() {
		return fmt.Errorf("svidfiles: %s is a directory; remove it so that it can be a link to %s", p, target)
	}
	tmp, err := os.MkdirTemp(w.dir, ".link-")
	if err != nil {
		return fmt.Errorf("svidfiles: %w", err)
	}
	defer os.RemoveAll(tmp)
	l := filepath.Join(tmp, name)
	if err := os.Symlink(target, l); err != nil {
		return fmt.Errorf("svidfiles: %w", err)
	}
	if err := chown(l, w.owner, true); err != nil {
		return err
	}
	if err := atomicfile.Rename(l, p); err != nil {
		return fmt.Errorf("svidfiles: %w", err)
	}
	return nil
}

// prune removes the version directories other than keep.
func (w *Writer) prune(keep ...string) {
	ents, err := os.ReadDir(w.dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		n := e.Name()
		if !strings.HasPrefix(n, versionPrefix) || !e.IsDir() {
			continue
		}
		kept := false
		for _, k := range keep {
			kept = kept || n == k
		}
		if !kept {
			os.RemoveAll(filepath.Join(w.dir, n))
		}
	}
}

func chown(p string, o Owner, link bool) error {
	if o.UID < 0 && o.GID < 0 {
		return nil
	}
	f := os.Chown
	if link {
		f = os.Lchown
	}
	if err := f(p, o.UID, o.GID); err != nil {
		if errors.Is(err, syscall.EPERM) {
			return fmt.Errorf("svidfiles: give %s to uid %d gid %d: %w (only root can)", p, o.UID, o.GID, err)
		}
		return fmt.Errorf("svidfiles: %w", err)
	}
	return nil
}
