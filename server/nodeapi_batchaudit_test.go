package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/audit"
)

// TestBatchMixedOutcomesAudited: a batch of 40 requests signed in
// parallel, mixing CSRs of the agent's entries, an entry of another
// agent, an unknown entry, a broken CSR signature and garbage, gets a
// certificate for each good request and the refusal of each bad one,
// and one audit record per request: x509_svid_issued with the SVID's own
// serial and fields for each certificate, x509_svid_refused for each
// entry the agent is not authorized for. The records keep their fields
// after the call, each its own: a sink that keeps them and appends to
// them (as it may) changes no other record's (a batch that shared one
// array of fields between its records, to allocate less, would fail
// here).
func TestBatchMixedOutcomesAudited(t *testing.T) {
	var mu sync.Mutex
	var kept []audit.Event
	sink := audit.SinkFunc(func(ev audit.Event) {
		if ev.What != "x509_svid_issued" && ev.What != "x509_svid_refused" {
			return
		}
		ev.Fields = append(ev.Fields, audit.String("sink", "appended"))
		mu.Lock()
		kept = append(kept, ev)
		mu.Unlock()
	})
	h := startServerConfig(t, nil, nil, func(c *Config) { c.AuditSink = sink })
	a, other := h.attest(), h.attest()
	ids := createThroughAdmin(t, h, a.id, 0, 8)
	foreign := h.createEntry("spiffe://example.org/foreign", other.id, "unix:uid:7")

	const n = 40
	type want struct {
		code  codes.Code
		entry string
	}
	wants := make([]want, n)
	req := &sigilv1.BatchNewX509SVIDRequest{}
	for i := range n {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		w := want{codes.OK, ids[i%len(ids)]}
		csr := newCSR(t, key, "")
		switch i % 10 {
		case 3:
			w = want{codes.PermissionDenied, foreign.Id}
		case 5:
			w = want{codes.PermissionDenied, "no-such-entry"}
		case 7:
			csr[len(csr)-4] ^= 0x40
			w.code = codes.InvalidArgument
		case 9:
			csr = []byte("garbage")
			w.code = codes.InvalidArgument
		}
		wants[i] = w
		req.Requests = append(req.Requests, &sigilv1.X509SVIDRequest{EntryId: w.entry, Csr: csr})
	}
	resp, err := a.node.BatchNewX509SVID(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Results) != n {
		t.Fatalf("%d results for %d requests", len(resp.Results), n)
	}
	type issued struct {
		entry    string
		notAfter time.Time
	}
	serials := map[string]issued{}
	denied := map[string]int{}
	for i, r := range resp.Results {
		if r.EntryId != wants[i].entry || codes.Code(r.Status.GetCode()) != wants[i].code {
			t.Fatalf("request %d: entry %q status %v, want %q %v", i, r.EntryId, r.Status, wants[i].entry, wants[i].code)
		}
		if wants[i].code != codes.OK {
			if len(r.Chain) != 0 {
				t.Fatalf("refused request %d got %d certificates", i, len(r.Chain))
			}
			if wants[i].code == codes.PermissionDenied {
				denied[wants[i].entry]++
			}
			continue
		}
		leaf, err := x509.ParseCertificate(r.Chain[0])
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		serials[leaf.SerialNumber.Text(16)] = issued{wants[i].entry, leaf.NotAfter}
	}
	if len(serials) != 24 {
		t.Fatalf("%d distinct serials, want 24", len(serials))
	}

	mu.Lock()
	defer mu.Unlock()
	nIssued, nRefused := 0, 0
	for _, ev := range kept {
		f := map[string]any{}
		for _, fl := range ev.Fields {
			if _, dup := f[fl.Key]; dup {
				t.Fatalf("%s record has field %q twice: %v", ev.What, fl.Key, ev.Fields)
			}
			f[fl.Key] = fl.Value
		}
		if f["agent_id"] != a.id || ev.Who != a.id || f["sink"] != "appended" {
			t.Fatalf("%s record: %v", ev.What, ev.Fields)
		}
		switch ev.What {
		case "x509_svid_issued":
			nIssued++
			if len(ev.Fields) != 6 {
				t.Fatalf("issuance record with %d fields: %v", len(ev.Fields), ev.Fields)
			}
			serial, _ := f["serial"].(string)
			got, ok := serials[serial]
			if !ok {
				t.Fatalf("issuance record of serial %q: not an SVID of the batch, or recorded twice", serial)
			}
			delete(serials, serial)
			if f["entry_id"] != got.entry || ev.Subject != f["spiffe_id"] || !f["not_after"].(time.Time).Equal(got.notAfter) {
				t.Fatalf("issuance record of %s: %v, want entry %s expiring %v", serial, ev.Fields, got.entry, got.notAfter)
			}
		case "x509_svid_refused":
			nRefused++
			entry, _ := f["entry_id"].(string)
			if denied[entry] == 0 || ev.Outcome != audit.Denied {
				t.Fatalf("refusal record of entry %q: %v", entry, ev)
			}
			denied[entry]--
		}
	}
	if nIssued != 24 || nRefused != 8 || len(serials) != 0 {
		t.Fatalf("%d issuance records (want 24), %d refusal records (want 8), %d SVIDs without a record", nIssued, nRefused, len(serials))
	}
}
