package k8s

import (
	"context"
	"testing"

	"github.com/sigil-id/sigil/attestor/workload"
	"github.com/sigil-id/sigil/attestor/workload/k8s/k8stest"
)

// BenchmarkAttestCached is one attestation with the pod list cached: the
// cost the k8s attestor adds to a cached Workload API call.
func BenchmarkAttestCached(b *testing.B) {
	f := newFixture(b, webPod())
	a, err := New(f.cfg)
	if err != nil {
		b.Fatal(err)
	}
	if err := k8stest.WriteCgroup(f.proc, 100, k8stest.CgroupV2(webUID, appID)); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if _, err := a.Attest(ctx, workload.Caller{PID: 100}); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := a.Attest(ctx, workload.Caller{PID: 100}); err != nil {
			b.Fatal(err)
		}
	}
}
