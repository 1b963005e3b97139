package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/sigil-id/sigil/internal/clusterpb"
	"github.com/sigil-id/sigil/internal/storepb"
	"github.com/sigil-id/sigil/raftstore"
)

// ErrNoLeader is returned (wrapped) when no leader appears within
// Config.ForwardRetryFor.
var ErrNoLeader = errors.New("no cluster leader")

// Apply commits cmd: locally on the leader, through the leader's Cluster
// service elsewhere. It retries while there is no leader or the leader
// changes, as long as the command cannot have been committed (the leader
// refused it before appending it, or it was never delivered). A nil error
// means the command is committed and (within Config.LocalCatchUp) applied
// on this server too, so the caller reads its own write. A command the
// state machine refused is a *raftstore.CommandError, as from the store.
func (c *Cluster) Apply(ctx context.Context, cmd *storepb.Command) (*storepb.CommandResult, error) {
	store := c.store.Load()
	if store == nil {
		return nil, errors.New("cluster: no store yet")
	}
	until := time.Now().Add(c.cfg.ForwardRetryFor)
	var last error
	for attempt := 0; ; attempt++ {
		if store.IsLeader() {
			start := time.Now()
			res, _, err := store.ApplyIndexed(ctx, cmd)
			if !errors.Is(err, raft.ErrNotLeader) {
				c.metrics.ObserveCommit(time.Since(start), err)
				return res, err
			}
			last = err
		} else if addr, _ := store.Leader(); addr != "" {
			res, err, retry := c.forward(ctx, addr, cmd)
			if !retry {
				return res, err
			}
			last = err
		} else {
			last = ErrNoLeader
		}
		wait := min(time.Duration(attempt+1)*20*time.Millisecond, 250*time.Millisecond)
		if time.Now().Add(wait).After(until) {
			return nil, fmt.Errorf("cluster: write not accepted: %w", last)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("cluster: write: %w (%v)", ctx.Err(), last)
		case <-time.After(wait):
		}
	}
}

// forward sends cmd to the leader at addr. retry reports that the
// command was certainly not committed and may be sent again.
func (c *Cluster) forward(ctx context.Context, addr string, cmd *storepb.Command) (*storepb.CommandResult, error, bool) {
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(cmd)
	if err != nil {
		return nil, fmt.Errorf("cluster: forwarded write: %w", err), false
	}
	cc, err := c.Conn(addr)
	if err != nil {
		return nil, err, true
	}
	start := time.Now()
	resp, err := clusterpb.NewClusterClient(cc).Apply(ctx, &clusterpb.ApplyRequest{Command: data})
	c.metrics.ObserveCommit(time.Since(start), err)
	if err != nil {
		switch status.Code(err) {
		case codes.FailedPrecondition, codes.Unavailable:
			// Not the leader (refused before the log), or the request did
			// not reach it.
			return nil, err, true
		case codes.DeadlineExceeded, codes.Canceled:
			return nil, fmt.Errorf("cluster: forwarded write: %w", context.DeadlineExceeded), false
		default:
			return nil, fmt.Errorf("cluster: forwarded write: %w", err), false
		}
	}
	if resp.ErrorCode != 0 {
		return nil, &raftstore.CommandError{Code: codes.Code(resp.ErrorCode), Msg: resp.ErrorMessage}, false
	}
	res := &storepb.CommandResult{}
	if err := proto.Unmarshal(resp.Result, res); err != nil {
		return nil, fmt.Errorf("cluster: forwarded write result: %w", err), false
	}
	// Read-your-writes: the caller reads this server's store next.
	wctx, cancel := context.WithTimeout(ctx, c.cfg.LocalCatchUp)
	defer cancel()
	if err := c.store.Load().WaitApplied(wctx, resp.Index); err != nil {
		c.log.Debug("forwarded write not applied locally yet", zap.Error(err))
	}
	return res, nil, false
}

// ConsistentRead makes the reads that follow linearizable: the leader
// confirms its leadership, and this server waits until it has applied
// everything the leader had committed. A server that has just started
// calls it to catch up with the log before it serves.
func (c *Cluster) ConsistentRead(ctx context.Context) error {
	store := c.store.Load()
	if store == nil {
		return errors.New("cluster: no store yet")
	}
	until := time.Now().Add(c.cfg.ForwardRetryFor)
	for attempt := 0; ; attempt++ {
		var idx uint64
		var err error
		if store.IsLeader() {
			idx, err = store.ReadIndex(ctx)
		} else if addr, _ := store.Leader(); addr != "" {
			var cc *grpc.ClientConn
			if cc, err = c.Conn(addr); err == nil {
				var resp *clusterpb.ReadIndexResponse
				if resp, err = clusterpb.NewClusterClient(cc).ReadIndex(ctx, &clusterpb.ReadIndexRequest{}); err == nil {
					idx = resp.Index
				}
			}
		} else {
			err = ErrNoLeader
		}
		if err == nil {
			if err := store.WaitApplied(ctx, idx); err != nil {
				return fmt.Errorf("cluster: linearizable read: %w", err)
			}
			return nil
		}
		if time.Now().After(until) || ctx.Err() != nil {
			return fmt.Errorf("cluster: linearizable read: %w", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(min(time.Duration(attempt+1)*20*time.Millisecond, 250*time.Millisecond)):
		}
	}
}
