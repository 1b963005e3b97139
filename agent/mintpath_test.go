package agent

import (
	"crypto/x509"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// TestMatchResults: results in the order of the requests are matched by
// position, results in another order (or with some missing) by entry ID;
// a job with no result is a bad response, a denial is a denial, and jobs
// not sent are left alone.
func TestMatchResults(t *testing.T) {
	jobs := make([]*mintJob, 5)
	for i := range jobs {
		jobs[i] = &mintJob{id: fmt.Sprintf("e%d", i)}
	}
	sent := []int{0, 1, 3, 4} // job 2 failed before the call
	ok := func(id string) *sigilv1.X509SVIDResult {
		return &sigilv1.X509SVIDResult{EntryId: id, Chain: [][]byte{[]byte("chain of " + id)}}
	}
	denied := func(id string) *sigilv1.X509SVIDResult {
		return &sigilv1.X509SVIDResult{EntryId: id, Status: &sigilv1.Status{Code: int32(codes.PermissionDenied), Message: "no"}}
	}
	describe := func(outs []mintOutcome) string {
		var b strings.Builder
		for i, o := range outs {
			switch {
			case o.denied:
				fmt.Fprintf(&b, "%d:denied ", i)
			case o.badResponse:
				fmt.Fprintf(&b, "%d:bad ", i)
			case o.err != nil:
				fmt.Fprintf(&b, "%d:err(%s) ", i, status.Code(o.err))
			case o.der != nil:
				fmt.Fprintf(&b, "%d:%s ", i, o.der[0])
			default:
				fmt.Fprintf(&b, "%d:- ", i)
			}
		}
		return b.String()
	}
	for _, tc := range []struct {
		name string
		got  []*sigilv1.X509SVIDResult
		want string
	}{
		{"in order", []*sigilv1.X509SVIDResult{ok("e0"), denied("e1"), ok("e3"), ok("e4")},
			"0:chain of e0 1:denied 2:- 3:chain of e3 4:chain of e4 "},
		{"reversed", []*sigilv1.X509SVIDResult{ok("e4"), ok("e3"), denied("e1"), ok("e0")},
			"0:chain of e0 1:denied 2:- 3:chain of e3 4:chain of e4 "},
		{"one missing", []*sigilv1.X509SVIDResult{ok("e0"), ok("e3"), ok("e4")},
			"0:chain of e0 1:bad 2:- 3:chain of e3 4:chain of e4 "},
		{"none", nil, "0:bad 1:bad 2:- 3:bad 4:bad "},
		{"a result for an entry not asked for", []*sigilv1.X509SVIDResult{ok("e0"), ok("e2"), ok("e3"), ok("e4")},
			"0:chain of e0 1:bad 2:- 3:chain of e3 4:chain of e4 "},
		{"one more", []*sigilv1.X509SVIDResult{ok("e0"), ok("e1"), ok("e3"), ok("e4"), ok("e9")},
			"0:chain of e0 1:chain of e1 2:- 3:chain of e3 4:chain of e4 "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			outs := make([]mintOutcome, len(jobs))
			matchResults(tc.got, jobs, sent, outs)
			if got := describe(outs); got != tc.want {
				t.Fatalf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
}

// TestCheckSVIDKey: a returned leaf must carry the job's key, whether the
// job knows its key's SubjectPublicKeyInfo (compared byte for byte) or
// not (compared by value).
func TestCheckSVIDKey(t *testing.T) {
	now := time.Now()
	ca := newLeafCA(t, now, nil, nil)
	for _, withSPKI := range []bool{true, false} {
		t.Run(fmt.Sprintf("spki=%v", withSPKI), func(t *testing.T) {
			key, spki, _, err := newMintRequest()
			if err != nil {
				t.Fatal(err)
			}
			other, _, _, err := newMintRequest()
			if err != nil {
				t.Fatal(err)
			}
			id := spiffeid.RequireFromPath(testTD, "/w/key")
			job := &mintJob{id: "e", fp: entryFingerprint{spiffeID: id.String()}, key: key}
			if withSPKI {
				job.spki = spki
			}
			if _, err := checkSVID(job, ca.leaf(t, id, key.Public(), now, nil)); err != nil {
				t.Fatalf("a leaf with the job's key: %v", err)
			}
			_, err = checkSVID(job, ca.leaf(t, id, other.Public(), now, nil))
			if err == nil || !strings.Contains(err.Error(), "public key") {
				t.Fatalf("a leaf with another key: %v, want a refusal", err)
			}
		})
	}
}

// TestLeafVerifyKnownIssuerAllocs: an SVID of an issuer verified before
// and outside the sample is checked without any allocation (the issuer is
// looked up without building its name as a string).
func TestLeafVerifyKnownIssuerAllocs(t *testing.T) {
	now := time.Now()
	ca := newLeafCA(t, now, nil, nil)
	bundle := x509bundle.FromX509Authorities(testTD, []*x509.Certificate{ca.cert})
	v := newLeafVerifier(1 << 40) // never sampled after the first
	job, id := leafJob(t, 0)
	chain := ca.leaf(t, id, job.key.Public(), now, nil)
	if _, err := v.verify(chain, bundle, now); err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := v.verify(chain, bundle, now); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per SVID of a known issuer, want 0", allocs)
	}
}

// TestParseLeafLikeAllocs: a leaf parsed against its issuer's template
// costs at most 4 allocations (the certificate and what it points to in
// one, the serial's digits, and url.Parse's two); it cost 8 when each
// value was allocated on its own.
func TestParseLeafLikeAllocs(t *testing.T) {
	src := leafSources(t)[0]
	ref, err := x509.ParseCertificate(mintLeaf(t, src, "/ref").der)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := newLeafTemplate(ref)
	l := mintLeaf(t, src, "/w/1")
	allocs := testing.AllocsPerRun(100, func() {
		if _, ok := tmpl.parseLeafLike(l.der, l.spki, &l.key.PublicKey); !ok {
			t.Fatal("an SVID of the template's CA was not parsed against it")
		}
	})
	if allocs > 4 {
		t.Fatalf("%v allocations per parsed leaf, want at most 4", allocs)
	}
}
