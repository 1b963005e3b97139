package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"os/user"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/sigil-id/sigil/agent"
	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/node/jointoken"
	"github.com/sigil-id/sigil/attestor/workload"
	"github.com/sigil-id/sigil/attestor/workload/unix"
)

// benchAgentStart measures the time from a fresh agent's start to the
// first X.509-SVID in the hands of a workload already waiting on its
// socket, with others entries already registered for the agent (minted
// in the background; the waiting workload's entry is one more). The
// agent runs in this process against the server at nodeAddr, whose trust
// bundle is bundle; the workload is this process,
// matched by uid, polling the socket every 2 ms with a fresh client.
func benchAgentStart(ctx context.Context, nodeAddr string, bundle []*x509.Certificate, admin sigilv1.AdminClient, dir string, others int) (time.Duration, error) {
	tok, err := admin.CreateJoinToken(ctx, &sigilv1.CreateJoinTokenRequest{})
	if err != nil {
		return 0, err
	}
	u, err := user.Current()
	if err != nil {
		return 0, err
	}
	entries := []*sigilv1.Entry{{
		SpiffeId: fmt.Sprintf("spiffe://%s/bench/start%d/workload", td.Name(), others), ParentId: tok.AgentId,
		Selectors: []*sigilv1.Selector{{Type: "unix", Value: "uid:" + u.Uid}},
	}}
	for i := 0; i < others; i++ {
		entries = append(entries, &sigilv1.Entry{
			SpiffeId: fmt.Sprintf("spiffe://%s/bench/start%d/%d", td.Name(), others, i), ParentId: tok.AgentId,
			Selectors: []*sigilv1.Selector{noWorkloadSelector(fmt.Sprintf("start%d-%d", others, i))},
		})
	}
	created, err := admin.BatchCreateEntry(ctx, &sigilv1.BatchCreateEntryRequest{Entries: entries})
	if err != nil {
		return 0, err
	}
	var ids []string
	for _, r := range created.Results {
		if r.Status.Code != 0 {
			return 0, fmt.Errorf("create: %s", r.Status.Message)
		}
		ids = append(ids, r.Entry.Id)
	}
	defer func() {
		_, _ = admin.BatchDeleteEntry(ctx, &sigilv1.BatchDeleteEntryRequest{Ids: ids})
		_, _ = admin.EvictAgent(ctx, &sigilv1.EvictAgentRequest{SpiffeId: tok.AgentId})
	}()

	acfg := agent.DefaultConfig()
	acfg.TrustDomain = td
	acfg.ServerAddress = nodeAddr
	acfg.DataDir = filepath.Join(dir, fmt.Sprintf("agent-start%d", others))
	acfg.SocketPath = filepath.Join(dir, fmt.Sprintf("start%d", others), "api.sock")
	acfg.NodeAttestor = jointoken.NewAttestor(tok.Token)
	acfg.WorkloadAttestors = []workload.Attestor{unix.New()}
	acfg.TrustBundle = bundle
	ag, err := agent.New(acfg)
	if err != nil {
		return 0, err
	}
	actx, stop := context.WithCancel(ctx)
	aerr := make(chan error, 1)
	start := time.Now()
	go func() { aerr <- ag.Run(actx) }()
	defer func() { stop(); <-aerr }()

	deadline := start.Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-aerr:
			aerr <- err
			return 0, fmt.Errorf("agent stopped: %v", err)
		default:
		}
		if fetchOnce(ctx, acfg.SocketPath) == nil {
			return time.Since(start), nil
		}
		time.Sleep(2 * time.Millisecond)
	}
	return 0, fmt.Errorf("no SVID on %s within 30 s of the agent's start", acfg.SocketPath)
}

// fetchOnce asks the Workload API on socket for an X.509-SVID once, with
// a fresh client (a failed gRPC connection would back off for a second).
func fetchOnce(ctx context.Context, socket string) error {
	fctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	c, err := workloadapi.New(fctx, workloadapi.WithAddr("unix://"+socket))
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.FetchX509SVID(fctx)
	return err
}
