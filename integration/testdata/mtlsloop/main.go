// Command mtlsloop is a test workload that exchanges mTLS requests
// continuously, one new TLS connection (and handshake) per request, with
// its identity from the Workload API through go-spiffe's X509Source, and
// reports what it saw in a JSON status file that it rewrites every 100ms.
//
//	mtlsloop serve ADDR PEER_ID STATUS   # answer every request from PEER_ID
//	mtlsloop dial ADDR PEER_ID STATUS    # send a request every 20ms to PEER_ID
//
// It runs until SIGTERM, then writes its status one last time.
package main

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// Status is what the test reads.
type Status struct {
	Requests   int      `json:"requests"`
	Failures   int      `json:"failures"`
	LastErrors []string `json:"last_errors,omitempty"`
	// SVIDSerial and SVIDAuthority (hex AuthorityKeyId) describe the SVID
	// the workload holds now; SVIDsSeen counts distinct serials held.
	SVIDSerial    string    `json:"svid_serial"`
	SVIDAuthority string    `json:"svid_authority"`
	SVIDNotAfter  time.Time `json:"svid_not_after"`
	SVIDsSeen     int       `json:"svids_seen"`
	Authorities   []string  `json:"authorities_seen"`
	// PeerBundle lists the X.509 authorities (hex SubjectKeyId) the
	// workload holds now for its peer's trust domain (a federated bundle
	// when the peer is in another trust domain).
	PeerBundle []string `json:"peer_bundle"`
}

type tracker struct {
	peerTD  spiffeid.TrustDomain
	mu      sync.Mutex
	st      Status
	serials map[string]bool
	auths   map[string]bool
}

func (t *tracker) result(err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.st.Requests++
	if err != nil {
		t.st.Failures++
		msg := time.Now().Format(time.RFC3339Nano) + " " + err.Error()
		if len(t.st.LastErrors) < 20 {
			t.st.LastErrors = append(t.st.LastErrors, msg)
		}
	}
}

func (t *tracker) observe(src *workloadapi.X509Source) {
	var peerBundle []string
	if b, err := src.GetX509BundleForTrustDomain(t.peerTD); err == nil {
		for _, c := range b.X509Authorities() {
			peerBundle = append(peerBundle, hex.EncodeToString(c.SubjectKeyId))
		}
	}
	svid, err := src.GetX509SVID()
	if err != nil {
		return
	}
	leaf := svid.Certificates[0]
	serial := leaf.SerialNumber.Text(16)
	aki := hex.EncodeToString(leaf.AuthorityKeyId)
	t.mu.Lock()
	defer t.mu.Unlock()
	t.st.SVIDSerial, t.st.SVIDAuthority, t.st.SVIDNotAfter = serial, aki, leaf.NotAfter
	t.st.PeerBundle = peerBundle
	if !t.serials[serial] {
		t.serials[serial] = true
		t.st.SVIDsSeen++
	}
	if !t.auths[aki] {
		t.auths[aki] = true
		t.st.Authorities = append(t.st.Authorities, aki)
	}
}

func (t *tracker) write(path string) {
	t.mu.Lock()
	b, _ := json.Marshal(t.st)
	t.mu.Unlock()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err == nil {
		os.Rename(tmp, path)
	}
}

func main() {
	if len(os.Args) != 5 {
		fmt.Fprintln(os.Stderr, "usage: mtlsloop serve|dial ADDR PEER_ID STATUS")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2], os.Args[3], os.Args[4]); err != nil {
		fmt.Fprintln(os.Stderr, "mtlsloop:", err)
		os.Exit(1)
	}
}

func run(mode, addr, peer, statusPath string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	peerID, err := spiffeid.FromString(peer)
	if err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	src, err := workloadapi.NewX509Source(sctx)
	cancel()
	if err != nil {
		return fmt.Errorf("x509 source: %w", err)
	}
	defer src.Close()
	t := &tracker{peerTD: peerID.TrustDomain(), serials: map[string]bool{}, auths: map[string]bool{}}
	go func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			t.observe(src)
			t.write(statusPath)
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	switch mode {
	case "serve":
		l, err := spiffetls.ListenWithMode(ctx, "tcp", addr, spiffetls.MTLSServerWithSource(tlsconfig.AuthorizeID(peerID), src))
		if err != nil {
			return err
		}
		go func() { <-ctx.Done(); l.Close() }()
		fmt.Println("serving on", addr)
		for {
			conn, err := l.Accept()
			if err != nil {
				if ctx.Err() != nil {
					break
				}
				t.result(fmt.Errorf("accept: %w", err))
				continue
			}
			go func() {
				defer conn.Close()
				conn.SetDeadline(time.Now().Add(10 * time.Second))
				line, err := bufio.NewReader(conn).ReadString('\n')
				if err == nil {
					_, err = fmt.Fprintf(conn, "ok %s", line)
				}
				t.result(err)
			}()
		}
	case "dial":
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for ctx.Err() == nil {
			t.result(request(ctx, addr, peerID, src))
			select {
			case <-ctx.Done():
			case <-tick.C:
			}
		}
	default:
		return fmt.Errorf("unknown mode %q", mode)
	}
	t.observe(src)
	t.write(statusPath)
	return nil
}

func request(ctx context.Context, addr string, peerID spiffeid.ID, src *workloadapi.X509Source) error {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var conn net.Conn
	var err error
	// The server may not be listening yet at the very start.
	for i := 0; i < 50; i++ {
		conn, err = spiffetls.DialWithMode(rctx, "tcp", addr, spiffetls.MTLSClientWithSource(tlsconfig.AuthorizeID(peerID), src))
		if err == nil || !isRefused(err) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(conn, "ping\n"); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	reply, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if reply != "ok ping\n" {
		return fmt.Errorf("unexpected reply %q", reply)
	}
	return nil
}

func isRefused(err error) bool {
	var se syscall.Errno
	for e := err; e != nil; {
		if x, ok := e.(syscall.Errno); ok {
			se = x
			break
		}
		u, ok := e.(interface{ Unwrap() error })
		if !ok {
			break
		}
		e = u.Unwrap()
	}
	return se == syscall.ECONNREFUSED
}
