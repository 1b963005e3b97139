package main

import (
	"context"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"sort"
	"time"

	"github.com/sigil-id/sigil/agent"
	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/node/jointoken"
	"github.com/sigil-id/sigil/attestor/workload"
	"github.com/sigil-id/sigil/attestor/workload/unix"
	"github.com/sigil-id/sigil/server"
)

// metricsFigures are one round's figures with the metrics on or off.
type metricsFigures struct {
	rate     float64 // X.509-SVIDs per second through node API batches
	p50, p99 time.Duration
}

// benchMetricsCost measures what the server's and the agent's metrics
// cost on the paths they instrument: the node API issuance rate (server:
// sign-time histogram, signed counter, Raft apply histogram) and the
// cached FetchX509SVID latency from a separate workload process (agent:
// the Workload API meter). Each round starts a fresh server and agent
// with the metrics on (the default) and another pair with
// Config.DisableMetrics set, in alternating order; the medians over the
// rounds are printed side by side with their ratio. Nothing scrapes
// /metrics meanwhile: the scrape-time gauges cost nothing then.
func benchMetricsCost(ctx context.Context, dur time.Duration, maxSVIDs, rounds int) error {
	got := map[bool][]metricsFigures{}
	for r := 0; r < rounds; r++ {
		order := []bool{true, false}
		if r%2 == 1 {
			order = []bool{false, true}
		}
		for _, on := range order {
			f, err := metricsRound(ctx, on, dur, maxSVIDs)
			if err != nil {
				return fmt.Errorf("metrics %s: %w", onOff(on), err)
			}
			got[on] = append(got[on], f)
		}
	}
	on, off := medianFigures(got[true]), medianFigures(got[false])
	fmt.Printf("metrics server+agent metrics on vs off (%d rounds, medians; ratio = on/off):\n", rounds)
	fmt.Printf("metrics   X.509-SVIDs via node API batches: on %9.0f /s    off %9.0f /s    ratio %.3f\n", on.rate, off.rate, on.rate/off.rate)
	fmt.Printf("metrics   cached FetchX509SVID p50:         on %9.3f ms   off %9.3f ms   ratio %.3f\n", ms(on.p50), ms(off.p50), ms(on.p50)/ms(off.p50))
	fmt.Printf("metrics   cached FetchX509SVID p99:         on %9.3f ms   off %9.3f ms   ratio %.3f  (%d calls per round from a separate process)\n", ms(on.p99), ms(off.p99), ms(on.p99)/ms(off.p99), fetchCalls)
	return nil
}

func onOff(on bool) string {
	if on {
		return "on"
	}
	return "off"
}

// metricsRound starts a server and an agent with the metrics on or off
// and measures the issuance rate and the cached fetch latency.
func metricsRound(ctx context.Context, on bool, dur time.Duration, maxSVIDs int) (metricsFigures, error) {
	var f metricsFigures
	dir, err := os.MkdirTemp("", "sigil-bench-metrics-")
	if err != nil {
		return f, err
	}
	defer os.RemoveAll(dir)
	srv, admin, stop, err := benchServerWith(ctx, dir, "bench-metrics", func(c *server.Config) { c.DisableMetrics = !on })
	if err != nil {
		return f, err
	}
	defer stop()
	if f.rate, err = nodeAPIRate(ctx, srv, admin, dur, maxSVIDs); err != nil {
		return f, fmt.Errorf("node API issuance: %w", err)
	}

	tok, err := admin.CreateJoinToken(ctx, &sigilv1.CreateJoinTokenRequest{})
	if err != nil {
		return f, err
	}
	acfg := agent.DefaultConfig()
	acfg.TrustDomain = td
	acfg.ServerAddress = srv.NodeAddr().String()
	acfg.DataDir = filepath.Join(dir, "agent")
	acfg.SocketPath = filepath.Join(dir, "public", "api.sock")
	acfg.NodeAttestor = jointoken.NewAttestor(tok.Token)
	acfg.WorkloadAttestors = []workload.Attestor{unix.New()}
	acfg.TrustBundle = srv.Bundle()
	acfg.DisableMetrics = !on
	ag, err := agent.New(acfg)
	if err != nil {
		return f, err
	}
	actx, stopAgent := context.WithCancel(ctx)
	aerr := make(chan error, 1)
	go func() { aerr <- ag.Run(actx) }()
	defer func() { stopAgent(); <-aerr }()
	select {
	case <-ag.Ready():
	case err := <-aerr:
		aerr <- err
		return f, err
	case <-time.After(30 * time.Second):
		return f, fmt.Errorf("agent not ready")
	}
	u, err := user.Current()
	if err != nil {
		return f, err
	}
	res, err := admin.BatchCreateEntry(ctx, &sigilv1.BatchCreateEntryRequest{Entries: []*sigilv1.Entry{{
		SpiffeId: fmt.Sprintf("spiffe://%s/bench/metrics", td.Name()), ParentId: tok.AgentId,
		Selectors: []*sigilv1.Selector{{Type: "unix", Value: "uid:" + u.Uid}},
	}}})
	if err != nil || res.Results[0].Status.Code != 0 {
		return f, fmt.Errorf("create workload entry: %v %v", err, res)
	}
	lat, err := fetchFromChild(ctx, acfg.SocketPath)
	if err != nil {
		return f, err
	}
	f.p50, f.p99 = percentiles(lat)
	return f, nil
}

// medianFigures is the median of each figure over the rounds.
func medianFigures(fs []metricsFigures) metricsFigures {
	rates := make([]float64, len(fs))
	var p50s, p99s []time.Duration
	for i, f := range fs {
		rates[i] = f.rate
		p50s = append(p50s, f.p50)
		p99s = append(p99s, f.p99)
	}
	sort.Float64s(rates)
	sort.Slice(p50s, func(i, j int) bool { return p50s[i] < p50s[j] })
	sort.Slice(p99s, func(i, j int) bool { return p99s[i] < p99s[j] })
	m := len(fs) / 2
	return metricsFigures{rate: rates[m], p50: p50s[m], p99: p99s[m]}
}
