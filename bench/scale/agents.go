package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/node/jointoken"
)

// simAgent is one simulated agent: its own key, its own attestation with
// its own join token, its own mTLS connection with the SVID it got, and
// its own Sync stream. It keeps the entries the stream gave it and the
// time each SPIFFE ID first arrived.
type simAgent struct {
	id, token string
	addr      string // node API it talks to
	src       net.IP // loopback source address: one per agent, as one per node
	roots     *x509.CertPool
	key       *ecdsa.PrivateKey
	chain     [][]byte
	conn      *grpc.ClientConn
	cancel    context.CancelFunc
	ended     chan struct{} // closed when the stream's receiver returns

	mu       sync.Mutex
	entries  map[string]*sigilv1.Entry // entry id -> entry
	arrived  map[string]time.Time      // SPIFFE ID -> first arrival
	synced   chan struct{}             // closed at the first full set
	syncedAt time.Time
	err      error // why the stream ended, if it did
}

// verifyServer checks the server's chain against the cluster's bundle.
func verifyServer(roots *x509.CertPool) func([][]byte, [][]*x509.Certificate) error {
	return func(raw [][]byte, _ [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return errors.New("no server certificate")
		}
		leaf, err := x509.ParseCertificate(raw[0])
		if err != nil {
			return err
		}
		inter := x509.NewCertPool()
		for _, r := range raw[1:] {
			if c, err := x509.ParseCertificate(r); err == nil {
				inter.AddCert(c)
			}
		}
		_, err = leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter})
		return err
	}
}

// attest attests the agent with its join token over the node API (one
// TLS connection of its own, no client certificate) and opens its mTLS
// connection with the SVID it got.
func (a *simAgent) attest(ctx context.Context) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "scale agent"}}, key)
	if err != nil {
		return err
	}
	anon, err := grpc.NewClient(a.addr, a.dialer(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		InsecureSkipVerify: true, VerifyPeerCertificate: verifyServer(a.roots), MinVersion: tls.VersionTLS13,
	})))
	if err != nil {
		return err
	}
	defer anon.Close()
	// The server limits attestations per second over all sources: retry
	// ResourceExhausted as the agent does, for at most two minutes.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		err = a.attestOnce(ctx, anon, csr, key)
		if status.Code(err) != codes.ResourceExhausted || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(50+mrand.IntN(450)) * time.Millisecond):
		}
	}
}

// attestOnce is one attestation over the anonymous connection; with its
// SVID it opens the agent's mTLS connection.
func (a *simAgent) attestOnce(ctx context.Context, anon *grpc.ClientConn, csr []byte, key *ecdsa.PrivateKey) error {
	actx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	st, err := sigilv1.NewNodeClient(anon).AttestStream(actx)
	if err != nil {
		return fmt.Errorf("attest: %w", err)
	}
	if err := st.Send(&sigilv1.AttestStreamRequest{Step: &sigilv1.AttestStreamRequest_Attest{Attest: &sigilv1.AttestRequest{
		AttestationType: jointoken.Name, Payload: []byte(a.token), Csr: csr,
	}}}); err != nil {
		return fmt.Errorf("attest: %w", err)
	}
	resp, err := st.Recv()
	if err != nil {
		return fmt.Errorf("attest: %w", err)
	}
	defer func() { _ = st.CloseSend() }()
	res := resp.GetResult()
	if res == nil {
		return errors.New("attest: the server sent a challenge to a join token")
	}
	if res.SpiffeId != a.id {
		return fmt.Errorf("attest: got SPIFFE ID %s, want %s", res.SpiffeId, a.id)
	}
	a.key, a.chain = key, res.SvidChain
	return a.dial()
}

// dialer makes the agent's connections from its own loopback address.
func (a *simAgent) dialer() grpc.DialOption {
	d := &net.Dialer{Timeout: 10 * time.Second}
	if a.src != nil {
		d.LocalAddr = &net.TCPAddr{IP: a.src}
	}
	return grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		return d.DialContext(ctx, "tcp", addr)
	})
}

// loopbackSource is the i-th agent's source address, 127.1.0.1 onwards
// (Linux routes all of 127.0.0.0/8 to loopback).
func loopbackSource(i int) net.IP {
	return net.IPv4(127, byte(1+i/(250*250)), byte((i/250)%250), byte(1+i%250))
}

// dial opens the agent's mTLS connection to its server.
func (a *simAgent) dial() error {
	conn, err := grpc.NewClient(a.addr, a.dialer(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		InsecureSkipVerify: true, VerifyPeerCertificate: verifyServer(a.roots), MinVersion: tls.VersionTLS13,
		Certificates: []tls.Certificate{{Certificate: a.chain, PrivateKey: a.key}},
	})))
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	a.conn = conn
	return nil
}

// connect establishes the agent's connection (TLS handshake included),
// at most within.
func (a *simAgent) connect(ctx context.Context, within time.Duration) error {
	cctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	a.conn.Connect()
	for {
		st := a.conn.GetState()
		if st == connectivity.Ready {
			return nil
		}
		if !a.conn.WaitForStateChange(cctx, st) {
			return fmt.Errorf("agent %s: not connected within %v (state %v)", a.id, within, st)
		}
	}
}

// sync opens the Sync stream and receives in the background until ctx
// ends or the stream fails.
func (a *simAgent) sync(ctx context.Context) error {
	sctx, cancel := context.WithCancel(ctx)
	stream, err := sigilv1.NewNodeClient(a.conn).Sync(sctx, &sigilv1.SyncRequest{})
	if err != nil {
		cancel()
		return fmt.Errorf("sync: %w", err)
	}
	a.mu.Lock()
	a.cancel = cancel
	a.entries = make(map[string]*sigilv1.Entry)
	a.arrived = make(map[string]time.Time)
	a.synced = make(chan struct{})
	a.syncedAt = time.Time{}
	a.ended = make(chan struct{})
	a.err = nil
	a.mu.Unlock()
	go a.receive(stream)
	return nil
}

func (a *simAgent) receive(stream grpc.ServerStreamingClient[sigilv1.SyncResponse]) {
	defer close(a.ended)
	for {
		msg, err := stream.Recv()
		now := time.Now()
		if err != nil {
			a.mu.Lock()
			if !errors.Is(err, io.EOF) {
				a.err = err
			}
			a.mu.Unlock()
			return
		}
		a.mu.Lock()
		if msg.Reset_ {
			clear(a.entries)
		}
		for _, e := range msg.Upserted {
			a.entries[e.Id] = e
			if _, ok := a.arrived[e.SpiffeId]; !ok {
				a.arrived[e.SpiffeId] = now
			}
		}
		for _, id := range msg.Deleted {
			delete(a.entries, id)
		}
		if msg.Synced && a.syncedAt.IsZero() {
			a.syncedAt = now
			close(a.synced)
		}
		a.mu.Unlock()
	}
}

// waitSynced waits for the first full set, at most within.
func (a *simAgent) waitSynced(ctx context.Context, within time.Duration) error {
	t := time.NewTimer(within)
	defer t.Stop()
	select {
	case <-a.synced:
		return nil
	case <-a.ended:
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.err != nil {
			return fmt.Errorf("agent %s: sync ended before the full set: %w", a.id, a.err)
		}
		return fmt.Errorf("agent %s: sync ended before the full set", a.id)
	case <-t.C:
		return fmt.Errorf("agent %s: no full set within %v", a.id, within)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// arrival is when the SPIFFE ID first arrived on the stream.
func (a *simAgent) arrival(spiffeID string) (time.Time, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	t, ok := a.arrived[spiffeID]
	return t, ok
}

// stop ends the stream and closes the connection.
func (a *simAgent) stop() {
	a.mu.Lock()
	cancel, ended := a.cancel, a.ended
	a.mu.Unlock()
	if cancel != nil {
		cancel()
		<-ended
	}
	if a.conn != nil {
		a.conn.Close()
		a.conn = nil
	}
}

// checkEntries compares the agent's entries with want (entry id -> SPIFFE
// ID): every entry it is authorized for and nothing else.
func (a *simAgent) checkEntries(want map[string]string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.err != nil {
		return fmt.Errorf("agent %s: stream ended: %w", a.id, a.err)
	}
	for id, sid := range want {
		e, ok := a.entries[id]
		if !ok {
			return fmt.Errorf("agent %s: missing entry %s (%s)", a.id, id, sid)
		}
		if e.SpiffeId != sid {
			return fmt.Errorf("agent %s: entry %s has SPIFFE ID %s, want %s", a.id, id, e.SpiffeId, sid)
		}
	}
	for id, e := range a.entries {
		if _, ok := want[id]; !ok {
			return fmt.Errorf("agent %s: got entry %s (%s, parent %s) it is not authorized for", a.id, id, e.SpiffeId, e.ParentId)
		}
	}
	return nil
}

// forEach runs f on items with at most workers at a time and returns the
// first error.
func forEach[T any](ctx context.Context, items []T, workers int, f func(T) error) error {
	ch := make(chan T)
	var once sync.Once
	var first error
	var wg sync.WaitGroup
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for it := range ch {
				if err := f(it); err != nil {
					once.Do(func() { first = err; cancel() })
				}
			}
		}()
	}
feed:
	for _, it := range items {
		select {
		case ch <- it:
		case <-wctx.Done():
			break feed
		}
	}
	close(ch)
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return first
}
