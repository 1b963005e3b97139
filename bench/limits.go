package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// machineLimits are the raw rates of this machine that Sigil's figures
// are compared with, measured in the same run, on all cores.
type machineLimits struct {
	Sign       float64 // P-256 ECDSA signatures per second (SHA-256 digest given)
	Verify     float64 // P-256 ECDSA verifications per second
	VerifySign float64 // one verify + one sign per second: the X.509-SVID limit
	Fsync      float64 // 4 KiB write + fsync per second on the data directory's file system
	TLS        float64 // TLS 1.3 handshakes per second over loopback, P-256, both sides in process
}

// measureLimits measures the raw limits, each for dur; dataDir is where the
// fsync file is written (the file system of the servers' data
// directories).
func measureLimits(ctx context.Context, dur time.Duration, dataDir string) (machineLimits, error) {
	var l machineLimits
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return l, err
	}
	// A digest per operation, as issuance hashes a TBS certificate and a
	// CSR of about this size.
	tbs := make([]byte, 600)
	digest := sha256.Sum256(tbs)
	sig, err := ecdsa.SignASN1(rand.Reader, key, digest[:])
	if err != nil {
		return l, err
	}
	l.Sign = parallelRate(dur, func() error {
		d := sha256.Sum256(tbs)
		_, err := ecdsa.SignASN1(rand.Reader, key, d[:])
		return err
	})
	l.Verify = parallelRate(dur, func() error {
		d := sha256.Sum256(tbs)
		if !ecdsa.VerifyASN1(&key.PublicKey, d[:], sig) {
			return errors.New("verify failed")
		}
		return nil
	})
	l.VerifySign = parallelRate(dur, func() error {
		d := sha256.Sum256(tbs)
		if !ecdsa.VerifyASN1(&key.PublicKey, d[:], sig) {
			return errors.New("verify failed")
		}
		d = sha256.Sum256(tbs)
		_, err := ecdsa.SignASN1(rand.Reader, key, d[:])
		return err
	})
	if l.Fsync, err = rawFsyncRate(dataDir, dur); err != nil {
		return l, fmt.Errorf("fsync: %w", err)
	}
	if l.TLS, err = tlsHandshakeRate(ctx, dur); err != nil {
		return l, fmt.Errorf("TLS handshakes: %w", err)
	}
	if l.Sign <= 0 || l.Verify <= 0 || l.VerifySign <= 0 || l.TLS <= 0 {
		return l, fmt.Errorf("a raw limit measured zero: %+v", l)
	}
	return l, nil
}

// record adds the limits to the summary as rows of their own.
func (l machineLimits) record() {
	record(newFigure("limit: raw ECDSA P-256 sign", l.Sign, "/s", 0, nil, ""))
	record(newFigure("limit: raw ECDSA P-256 verify", l.Verify, "/s", 0, nil, ""))
	record(newFigure("limit: raw verify + sign (X.509-SVID)", l.VerifySign, "/s", 0, nil, ""))
	record(newFigure("limit: raw fsync (4 KiB, data dir)", l.Fsync, "/s", 0, nil, ""))
	record(newFigure("limit: raw TLS 1.3 handshake (P-256)", l.TLS, "/s", 0, nil, ""))
}

// tlsHandshakeRate is full TLS 1.3 handshakes (no resumption) per second
// over loopback with a P-256 certificate, server and 2×GOMAXPROCS clients
// in this process.
func tlsHandshakeRate(ctx context.Context, dur time.Duration) (float64, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return 0, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench"},
		DNSNames: []string{"bench.local"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return 0, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return 0, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
	})
	if err != nil {
		return 0, err
	}
	var srvWG sync.WaitGroup
	defer srvWG.Wait()
	defer ln.Close()
	srvWG.Add(1)
	go func() {
		defer srvWG.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			srvWG.Add(1)
			go func() {
				defer srvWG.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				_ = c.(*tls.Conn).Handshake()
			}()
		}
	}()
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13, RootCAs: pool, ServerName: "bench.local",
		ClientSessionCache: nil, // a full handshake each time
	}
	var n atomic.Int64
	var firstErr atomic.Value
	deadline := time.Now().Add(dur)
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < 2*runtime.GOMAXPROCS(0); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: cfg}
			for i := 0; i < 1_000_000 && time.Now().Before(deadline); i++ {
				hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				c, err := d.DialContext(hctx, "tcp", ln.Addr().String())
				cancel()
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				c.Close()
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if n.Load() == 0 {
		if err, _ := firstErr.Load().(error); err != nil {
			return 0, err
		}
	}
	return float64(n.Load()) / elapsed.Seconds(), nil
}
