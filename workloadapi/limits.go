package workloadapi

import (
	"fmt"
	"sync"
	"time"

	"github.com/sigil-id/sigil/clock"
)

// Limits bound what local processes may hold open on the Workload API, so
// that a local user without any identity cannot exhaust the agent's file
// descriptors or memory. Every process may connect; these limits only cap
// how much one user can hold at once. The zero value of each field means
// its default.
type Limits struct {
	// MaxConnsPerUID caps the connections open at once from processes
	// that connected with the same effective uid (default 128). A
	// connection over the cap is closed at once.
	MaxConnsPerUID int
	// MaxConns caps all connections open at once (default 4096).
	MaxConns int
	// MaxStreamsPerConn caps the calls in flight on one connection
	// (default 64); go-spiffe's client needs a few.
	MaxStreamsPerConn uint32
	// FirstCallTimeout closes a connection on which no call has started
	// this long after it was accepted (default 10s).
	FirstCallTimeout time.Duration
	// IdleTimeout closes, with a GOAWAY that clients follow by
	// reconnecting, a connection that has had no call in flight this long
	// (default 2m). Open streams (FetchX509SVID) are calls in flight.
	IdleTimeout time.Duration
}

// Default limits.
const (
	DefaultMaxConnsPerUID    = 128
	DefaultMaxConns          = 4096
	DefaultMaxStreamsPerConn = 64
	DefaultFirstCallTimeout  = 10 * time.Second
	DefaultIdleTimeout       = 2 * time.Minute
)

// withDefaults fills the zero fields of l.
func (l Limits) withDefaults() Limits {
	if l.MaxConnsPerUID <= 0 {
		l.MaxConnsPerUID = DefaultMaxConnsPerUID
	}
	if l.MaxConns <= 0 {
		l.MaxConns = DefaultMaxConns
	}
	if l.MaxStreamsPerConn == 0 {
		l.MaxStreamsPerConn = DefaultMaxStreamsPerConn
	}
	if l.FirstCallTimeout <= 0 {
		l.FirstCallTimeout = DefaultFirstCallTimeout
	}
	if l.IdleTimeout <= 0 {
		l.IdleTimeout = DefaultIdleTimeout
	}
	return l
}

// connLimits counts open connections per uid and in all.
type connLimits struct {
	limits Limits
	clk    clock.Clock
	// onRefused is told about each refused connection (metrics, logs).
	onRefused func(uid uint32, reason string)

	mu    sync.Mutex
	total int
	byUID map[uint32]int
}

func newConnLimits(l Limits, clk clock.Clock, onRefused func(uint32, string)) *connLimits {
	return &connLimits{limits: l.withDefaults(), clk: clk, onRefused: onRefused, byUID: make(map[uint32]int)}
}

// admit takes a connection slot for p, or fails when its user or the agent
// is at its cap. The returned function gives the slot back; it may be
// called more than once.
func (c *connLimits) admit(p *PeerInfo) (func(), error) {
	c.mu.Lock()
	var reason string
	switch {
	case c.byUID[p.UID] >= c.limits.MaxConnsPerUID:
		reason = fmt.Sprintf("uid %d has %d connections open (the limit per user)", p.UID, c.limits.MaxConnsPerUID)
	case c.total >= c.limits.MaxConns:
		reason = fmt.Sprintf("%d connections open (the agent's limit)", c.limits.MaxConns)
	default:
		c.byUID[p.UID]++
		c.total++
	}
	c.mu.Unlock()
	if reason != "" {
		if c.onRefused != nil {
			c.onRefused(p.UID, reason)
		}
		return nil, fmt.Errorf("workloadapi: connection refused: %s", reason)
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.total--
			if c.byUID[p.UID]--; c.byUID[p.UID] <= 0 {
				delete(c.byUID, p.UID)
			}
		})
	}, nil
}

// open returns the number of connections open from uid and in all.
func (c *connLimits) open(uid uint32) (fromUID, total int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.byUID[uid], c.total
}

// watchFirstCall closes pc unless a call starts on it within the first
// call timeout. The watch ends when pc is closed first (by its peer, or
// by the server stopping): it neither outlives the connection by the
// timeout nor reports a closed connection as refused.
func (c *connLimits) watchFirstCall(pc *peerConn) {
	timeout := c.clk.After(c.limits.FirstCallTimeout)
	go func() {
		select {
		case <-timeout:
		case <-pc.closed:
			return
		}
		if !pc.peer.hasCalled() {
			if c.onRefused != nil {
				c.onRefused(pc.peer.UID, "no call within "+c.limits.FirstCallTimeout.String())
			}
			pc.Close()
		}
	}()
}

// Connections is the number of Workload API connections open now (those
// admitted under the limits, not yet closed): the workloads connected.
func (s *Server) Connections() int {
	_, total := s.conns.open(0)
	return total
}
