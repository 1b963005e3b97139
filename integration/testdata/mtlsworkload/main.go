// Command mtlsworkload is a test workload: it gets its identity from the
// Workload API with go-spiffe and runs one side of an mTLS exchange with
// spiffetls.
//
//	mtlsworkload serve ADDR PEER_ID   # accept one connection from PEER_ID, echo our view
//	mtlsworkload dial ADDR PEER_ID    # connect to PEER_ID, print both IDs
package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: mtlsworkload serve|dial ADDR PEER_ID")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2], os.Args[3]); err != nil {
		fmt.Fprintln(os.Stderr, "mtlsworkload:", err)
		os.Exit(1)
	}
}

func run(mode, addr, peer string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	peerID, err := spiffeid.FromString(peer)
	if err != nil {
		return err
	}
	src, err := workloadapi.NewX509Source(ctx)
	if err != nil {
		return fmt.Errorf("x509 source: %w", err)
	}
	defer src.Close()
	me, err := src.GetX509SVID()
	if err != nil {
		return err
	}
	switch mode {
	case "serve":
		l, err := spiffetls.ListenWithMode(ctx, "tcp", addr, spiffetls.MTLSServerWithSource(tlsconfig.AuthorizeID(peerID), src))
		if err != nil {
			return err
		}
		defer l.Close()
		fmt.Printf("listening as %s\n", me.ID)
		conn, err := l.Accept()
		if err != nil {
			return err
		}
		defer conn.Close()
		seen, ok := spiffetls.PeerIDFromConn(conn)
		if ok != nil {
			return ok
		}
		line, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil {
			return err
		}
		fmt.Printf("server %s saw client %s saying %s", me.ID, seen, line)
		_, err = fmt.Fprintf(conn, "server %s saw client %s\n", me.ID, seen)
		return err
	case "dial":
		var conn net.Conn
		for i := 0; i < 100; i++ {
			conn, err = spiffetls.DialWithMode(ctx, "tcp", addr, spiffetls.MTLSClientWithSource(tlsconfig.AuthorizeID(peerID), src))
			if err == nil || !strings.Contains(err.Error(), "connection refused") {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			return err
		}
		defer conn.Close()
		seen, err := spiffetls.PeerIDFromConn(conn)
		if err != nil {
			return err
		}
		if _, err := fmt.Fprintf(conn, "hello from %s\n", me.ID); err != nil {
			return err
		}
		reply, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil {
			return err
		}
		fmt.Printf("client %s saw server %s\n%s", me.ID, seen, reply)
		return nil
	}
	return fmt.Errorf("unknown mode %q", mode)
}
