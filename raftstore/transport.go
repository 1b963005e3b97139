package raftstore

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/zap"
)

// ALPN protocols of the cluster port. One TLS listener carries both Raft
// and the server-to-server gRPC service; the protocol negotiated in the
// handshake decides where a connection goes, so a peer's credentials are
// checked before a single Raft byte is read.
const (
	ALPNRaft = "sigil-raft/1"
	ALPNGRPC = "h2"
)

// Transport defaults.
const (
	handshakeTimeout = 10 * time.Second
	// transportMaxPool is how many idle Raft connections are kept per peer.
	transportMaxPool = 3
	// transportTimeout bounds Raft I/O on one connection.
	transportTimeout = 10 * time.Second
)

// ErrMuxClosed is returned by Accept after Close.
var ErrMuxClosed = errors.New("raftstore: cluster listener closed")

// Mux accepts TLS connections on the cluster port and hands each, once
// its handshake (and with it the peer's authentication, in the TLS
// config's VerifyConnection) has succeeded, to Raft or to gRPC.
type Mux struct {
	ln        net.Listener
	serverTLS *tls.Config
	clientTLS func() *tls.Config
	advertise net.Addr
	log       *zap.Logger

	raftCh chan net.Conn
	grpcCh chan net.Conn
	closed chan struct{}
	once   sync.Once
	wg     sync.WaitGroup
}

// NewMux serves ln. serverTLS authenticates inbound peers and must list
// ALPNRaft and ALPNGRPC in NextProtos; clientTLS returns the configuration
// for outbound Raft connections (it is called on every dial, so a rotated
// certificate is picked up). advertise is the address peers reach this
// server at; it is what Raft records in the configuration.
func NewMux(ln net.Listener, serverTLS *tls.Config, clientTLS func() *tls.Config, advertise string, log *zap.Logger) (*Mux, error) {
	if log == nil {
		log = zap.NewNop()
	}
	adv, err := net.ResolveTCPAddr("tcp", advertise)
	if err != nil {
		return nil, fmt.Errorf("raftstore: advertise address %q: %w", advertise, err)
	}
	if adv.IP == nil || adv.IP.IsUnspecified() {
		return nil, fmt.Errorf("raftstore: advertise address %q is not reachable by peers (give a host)", advertise)
	}
	m := &Mux{
		ln:        ln,
		serverTLS: serverTLS,
		clientTLS: clientTLS,
		advertise: adv,
		log:       log,
		raftCh:    make(chan net.Conn, 16),
		grpcCh:    make(chan net.Conn, 16),
		closed:    make(chan struct{}),
	}
	m.wg.Add(1)
	go m.serve()
	return m, nil
}

func (m *Mux) serve() {
	defer m.wg.Done()
	var delay time.Duration
	for {
		c, err := m.ln.Accept()
		if err != nil {
			select {
			case <-m.closed:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			m.log.Error("cluster listener failed", zap.Error(err))
			return
		}
		delay = 0
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.handshake(c)
		}()
	}
}

func (m *Mux) handshake(c net.Conn) {
	tc := tls.Server(c, m.serverTLS)
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	defer cancel()
	go func() {
		select {
		case <-m.closed:
			c.Close()
		case <-ctx.Done():
		}
	}()
	if err := tc.HandshakeContext(ctx); err != nil {
		m.log.Debug("cluster handshake refused", zap.String("remote", c.RemoteAddr().String()), zap.Error(err))
		c.Close()
		return
	}
	var ch chan net.Conn
	switch p := tc.ConnectionState().NegotiatedProtocol; p {
	case ALPNRaft:
		ch = m.raftCh
	case ALPNGRPC:
		ch = m.grpcCh
	default:
		m.log.Debug("cluster connection without a known protocol", zap.String("remote", c.RemoteAddr().String()), zap.String("alpn", p))
		c.Close()
		return
	}
	select {
	case ch <- tc:
	case <-m.closed:
		c.Close()
	}
}

// Close stops accepting; connections already handed out stay open.
func (m *Mux) Close() error {
	var err error
	m.once.Do(func() {
		close(m.closed)
		err = m.ln.Close()
	})
	m.wg.Wait()
	return err
}

// LocalDialAddr is the source address of outbound cluster connections:
// the listener's IP when it listens on one (so peers and firewalls see
// one address per server), else nil (the system's choice).
func (m *Mux) LocalDialAddr() net.Addr {
	if ta, ok := m.ln.Addr().(*net.TCPAddr); ok && ta.IP != nil && !ta.IP.IsUnspecified() {
		return &net.TCPAddr{IP: ta.IP}
	}
	return nil
}

// Addr is the advertised address.
func (m *Mux) Addr() net.Addr { return m.advertise }

// RaftLayer is the raft.StreamLayer over this mux.
func (m *Mux) RaftLayer() raft.StreamLayer { return &raftLayer{m: m} }

// GRPCListener is a net.Listener of the authenticated gRPC connections,
// for grpc.Server.Serve (with MuxCredentials).
func (m *Mux) GRPCListener() net.Listener { return &chanListener{m: m, ch: m.grpcCh} }

type raftLayer struct{ m *Mux }

func (l *raftLayer) Accept() (net.Conn, error) {
	select {
	case c := <-l.m.raftCh:
		return c, nil
	case <-l.m.closed:
		return nil, ErrMuxClosed
	}
}

func (l *raftLayer) Close() error   { return l.m.Close() }
func (l *raftLayer) Addr() net.Addr { return l.m.advertise }

// Dial opens a mutually authenticated TLS connection to a peer's cluster
// port, negotiating the Raft protocol.
func (l *raftLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	cfg := l.m.clientTLS().Clone()
	cfg.NextProtos = []string{ALPNRaft}
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout, LocalAddr: l.m.LocalDialAddr()}, Config: cfg}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", string(address))
	if err != nil {
		return nil, err
	}
	if p := c.(*tls.Conn).ConnectionState().NegotiatedProtocol; p != ALPNRaft {
		c.Close()
		return nil, fmt.Errorf("raftstore: peer %s did not negotiate %s (got %q)", address, ALPNRaft, p)
	}
	return c, nil
}

type chanListener struct {
	m  *Mux
	ch chan net.Conn
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.m.closed:
		return nil, ErrMuxClosed
	}
}

func (l *chanListener) Close() error   { return nil }
func (l *chanListener) Addr() net.Addr { return l.m.advertise }

// NewNetworkTransport is Raft's network transport over the mux.
func NewNetworkTransport(m *Mux, logger *zap.Logger) *raft.NetworkTransport {
	if logger == nil {
		logger = zap.NewNop()
	}
	return raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  m.RaftLayer(),
		MaxPool: transportMaxPool,
		Timeout: transportTimeout,
		Logger:  newZapHCLog(logger, "raft-net"),
	})
}
