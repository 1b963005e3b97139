package raftstore

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func testCert(t *testing.T) (tls.Certificate, *x509.Certificate) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, leaf
}

// TestMuxAuthenticatesRaftPeers: only a peer with the trusted certificate
// reaches Raft; plain TCP and other certificates are refused in the
// handshake; gRPC connections go to the gRPC listener.
func TestMuxAuthenticatesRaftPeers(t *testing.T) {
	good, goodLeaf := testCert(t)
	bad, _ := testCert(t)
	verify := func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 || !cs.PeerCertificates[0].Equal(goodLeaf) {
			return errors.New("untrusted peer")
		}
		return nil
	}
	serverTLS := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{good},
		NextProtos: []string{ALPNRaft, ALPNGRPC}, ClientAuth: tls.RequireAnyClientCert, VerifyConnection: verify}
	clientTLS := func() *tls.Config {
		return &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{good}, InsecureSkipVerify: true, VerifyConnection: verify} //nolint:gosec // test
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewMux(ln, serverTLS, clientTLS, ln.Addr().String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	layer := m.RaftLayer()
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := layer.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()

	// Plain TCP speaking Raft bytes.
	plain, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	plain.Write([]byte{1, 0x80})
	plain.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := plain.Read(make([]byte, 1)); err == nil {
		t.Error("plain TCP got an answer")
	}
	plain.Close()
	// Another certificate.
	_, err = tls.Dial("tcp", ln.Addr().String(), &tls.Config{Certificates: []tls.Certificate{bad}, InsecureSkipVerify: true, NextProtos: []string{ALPNRaft}}) //nolint:gosec // test
	if err == nil {
		// TLS 1.3 reports the server's refusal on the first read.
		t.Log("handshake completed on the client side; the server closes it")
	}
	select {
	case <-accepted:
		t.Fatal("an unauthenticated connection reached Raft")
	case <-time.After(300 * time.Millisecond):
	}
	// The trusted peer.
	c, err := layer.Dial(raft.ServerAddress(ln.Addr().String()), 2*time.Second)
	if err != nil {
		t.Fatalf("trusted dial: %v", err)
	}
	defer c.Close()
	select {
	case sc := <-accepted:
		sc.Close()
	case <-time.After(2 * time.Second):
		t.Fatal("the trusted connection never reached Raft")
	}
	// gRPC ALPN goes to the gRPC listener. The client holds its
	// connection open until the test is over.
	held := make(chan struct{})
	defer close(held)
	go func() {
		gc, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{Certificates: []tls.Certificate{good}, InsecureSkipVerify: true, NextProtos: []string{ALPNGRPC}}) //nolint:gosec // test
		if err == nil {
			defer gc.Close()
			<-held
		}
	}()
	gl := m.GRPCListener()
	got := make(chan struct{})
	go func() {
		if c, err := gl.Accept(); err == nil {
			c.Close()
			close(got)
		}
	}()
	select {
	case <-got:
	case <-time.After(2 * time.Second):
		t.Fatal("gRPC connection not handed to the gRPC listener")
	}
}
