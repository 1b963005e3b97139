package disk

import (
	"context"
	"crypto/x509"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/clock"
)

// touch gives path a modification time of its own, so that a rewrite is
// seen even within the file system's timestamp granularity.
func touch(t testing.TB, path string, mtime time.Time) {
	t.Helper()
	if err := os.Chtimes(path, mtime, mtime); err != nil {
		t.Fatal(err)
	}
}

// The operator replaces the upstream certificate and key: the next
// MintX509CA signs with the new ones and answers the new chain. A
// replacement that fails a check is ignored (the previous material keeps
// signing) until the files change again.
func TestReload(t *testing.T) {
	now := time.Now()
	root := newCert(t, caOpts("Root", now), nil)
	old := newCert(t, caOpts("Intermediate 1", now), root)
	f := writeUpstream(t, old.key, []*x509.Certificate{old.cert, root.cert}, nil)
	a := newAuthority(t, f.config(clock.NewFake(now)))
	resp, _ := mint(t, a, time.Hour)
	sameChain(t, "chain[1:]", resp.Chain[1:], []*x509.Certificate{old.cert})

	// A valid replacement: a new intermediate under the same root.
	renewed := newCert(t, caOpts("Intermediate 2", now), root)
	writeFile(t, f.cert, pemCerts(renewed.cert, root.cert))
	writeFile(t, f.keyPEM, pemKey(t, renewed.key))
	touch(t, f.cert, now.Add(time.Minute))
	resp, r := mint(t, a, time.Hour)
	sameChain(t, "chain[1:] after the replacement", resp.Chain[1:], []*x509.Certificate{renewed.cert})
	if err := resp.Chain[0].CheckSignatureFrom(renewed.cert); err != nil {
		t.Fatalf("not signed by the new intermediate: %v", err)
	}
	verifyBoth(t, resp, r, now)

	// An invalid replacement: a new certificate but the key is still the
	// previous one (the operator is halfway through). The previous
	// material keeps signing.
	third := newCert(t, caOpts("Intermediate 3", now), root)
	writeFile(t, f.cert, pemCerts(third.cert, root.cert))
	touch(t, f.cert, now.Add(2*time.Minute))
	resp, _ = mint(t, a, time.Hour)
	sameChain(t, "chain[1:] after an invalid replacement", resp.Chain[1:], []*x509.Certificate{renewed.cert})
	if _, bad, _ := a.current(); bad == nil || !strings.Contains(bad.Error(), "the key does not match the signing certificate") {
		t.Fatalf("pending replacement error: %v", bad)
	}
	// Then the key arrives: the replacement is complete and used.
	writeFile(t, f.keyPEM, pemKey(t, third.key))
	touch(t, f.keyPEM, now.Add(3*time.Minute))
	resp, _ = mint(t, a, time.Hour)
	sameChain(t, "chain[1:] after the key arrived", resp.Chain[1:], []*x509.Certificate{third.cert})

	// A file that disappears is not a reason to stop signing.
	if err := os.Remove(f.cert); err != nil {
		t.Fatal(err)
	}
	resp, _ = mint(t, a, time.Hour)
	sameChain(t, "chain[1:] with cert_file gone", resp.Chain[1:], []*x509.Certificate{third.cert})
}

// A new root in bundle_file (the operator's root rotation: old and new
// roots side by side) is what Roots answers next.
func TestReloadBundle(t *testing.T) {
	now := time.Now()
	root := newCert(t, caOpts("Root 1", now), nil)
	inter := newCert(t, caOpts("Intermediate", now), root)
	f := writeUpstream(t, inter.key, []*x509.Certificate{inter.cert}, []*x509.Certificate{root.cert})
	a := newAuthority(t, f.config(clock.NewFake(now)))

	root2 := newCert(t, caOpts("Root 2", now), nil)
	writeFile(t, f.bundle, pemCerts(root.cert, root2.cert))
	touch(t, f.bundle, now.Add(time.Minute))
	roots, err := a.Roots(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	sameChain(t, "roots", roots, []*x509.Certificate{root.cert, root2.cert})

	// A bundle without the root the chain needs is refused: the
	// previous roots stay.
	writeFile(t, f.bundle, pemCerts(root2.cert))
	touch(t, f.bundle, now.Add(2*time.Minute))
	roots, err = a.Roots(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	sameChain(t, "roots after an invalid bundle", roots, []*x509.Certificate{root.cert, root2.cert})
	resp, r := mint(t, a, time.Hour)
	sameChain(t, "mint roots", resp.Roots, []*x509.Certificate{root.cert, root2.cert})
	verifyBoth(t, resp, r, now)
}

// The signing certificate expired and its replacement is invalid:
// MintX509CA says both.
func TestReloadExpiredAndInvalid(t *testing.T) {
	now := time.Now()
	o := caOpts("Root", now)
	o.notAfter = now.Add(time.Hour)
	root := newCert(t, o, nil)
	f := writeUpstream(t, root.key, []*x509.Certificate{root.cert}, nil)
	clk := clock.NewFake(now)
	a := newAuthority(t, f.config(clk))
	clk.Add(2 * time.Hour)
	writeFile(t, f.cert, []byte("not PEM"))
	touch(t, f.cert, now.Add(time.Minute))
	_, err := a.MintX509CA(context.Background(), ca.X509CARequest{CSR: newCSR(t, td).der, TrustDomain: td, TTL: time.Hour})
	if err == nil || !strings.Contains(err.Error(), "expired at") ||
		!strings.Contains(err.Error(), "the replacement files are not usable either: cert_file "+f.cert+" holds no PEM certificate") ||
		strings.Count(err.Error(), "ca/upstream/disk:") != 1 {
		t.Fatalf("mint: %v", err)
	}
}
