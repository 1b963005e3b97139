package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/attestor/node/x509pop"
	"github.com/sigil-id/sigil/clock"
)

// x509popBenchDuration is how long each x509pop measurement runs.
const x509popBenchDuration = 2 * time.Second

// benchAttestX509pop prints the rate of x509pop attestations through the
// server half (x509pop.Verifier, in-process, no network) beside the raw
// ECDSA P-256 (SHA-256) verify rate of the machine: one attestation checks
// three P-256 signatures (the leaf and the intermediate of the agent's
// chain, then the answer to the nonce), so about 1/3 of the raw rate is
// the ceiling. The agent's answer (one P-256 signature, made in-process by
// the agent half) is timed apart and left out of the verifier's rate; the
// rate with it is printed too.
func benchAttestX509pop(ctx context.Context) error {
	dir, err := os.MkdirTemp("", "sigil-bench-x509pop-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bundle, cert, key, err := x509popBenchPKI(dir)
	if err != nil {
		return err
	}
	cfg := x509pop.DefaultServerConfig()
	cfg.CABundlePath = bundle
	v, err := x509pop.NewVerifier(td.Name(), cfg)
	if err != nil {
		return err
	}
	agentHalf, err := x509pop.NewAttestor(td.Name(), x509pop.AgentConfig{CertificatePath: cert, PrivateKeyPath: key})
	if err != nil {
		return err
	}
	payload, err := agentHalf.Payload(ctx)
	if err != nil {
		return err
	}
	st := benchState{clk: clock.New()}
	// One attestation first, so that a broken setup fails here and not
	// as a zero rate.
	if _, err := v.Verify(ctx, st, &benchExchange{payload: payload, agent: agentHalf}); err != nil {
		return fmt.Errorf("x509pop: %w", err)
	}

	rawKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	digest := sha256.Sum256([]byte("sigil x509pop bench"))
	sig, err := ecdsa.SignASN1(rand.Reader, rawKey, digest[:])
	if err != nil {
		return err
	}
	raw := parallelRate(x509popBenchDuration, func() error {
		d := sha256.Sum256([]byte("sigil x509pop bench"))
		if !ecdsa.VerifyASN1(&rawKey.PublicKey, d[:], sig) {
			return fmt.Errorf("raw verify failed")
		}
		return nil
	})

	// Each worker attests in a loop; the time spent in the agent's
	// Answer is summed apart.
	var n, answerNanos atomic.Int64
	var firstErr atomic.Value
	workers := runtime.GOMAXPROCS(0)
	deadline := time.Now().Add(x509popBenchDuration)
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) && ctx.Err() == nil {
				ex := &benchExchange{payload: payload, agent: agentHalf}
				if _, err := v.Verify(ctx, st, ex); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				answerNanos.Add(int64(ex.answerTime))
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return fmt.Errorf("x509pop: %w", err)
	}
	wall := time.Since(start)
	withAgent := float64(n.Load()) / wall.Seconds()
	verifierBusy := (float64(wall)*float64(workers) - float64(answerNanos.Load())) / float64(workers)
	verifier := float64(n.Load()) / (verifierBusy / float64(time.Second))

	fmt.Printf("limit  raw ECDSA P-256 verifies (SHA-256):    %9.0f /s\n", raw)
	fmt.Printf("attest x509pop verifications (3 verifies):    %9.0f /s  (%.2f of raw verify; ceiling 0.33)\n", verifier, verifier/raw)
	fmt.Printf("attest x509pop with the agent's answer:       %9.0f /s  (in-process, no network)\n", withAgent)
	return nil
}

// benchExchange answers the verifier's challenge with the agent half, in
// the caller's goroutine, and times the answer.
type benchExchange struct {
	payload    []byte
	agent      *x509pop.Attestor
	answerTime time.Duration
}

func (e *benchExchange) Payload() []byte { return e.payload }

func (e *benchExchange) Challenge(ctx context.Context, c []byte) ([]byte, error) {
	start := time.Now()
	a, err := e.agent.Answer(ctx, c)
	e.answerTime += time.Since(start)
	return a, err
}

// benchState is a node.State with only a clock: x509pop reads no records.
type benchState struct{ clk clock.Clock }

func (s benchState) Now() time.Time { return s.clk.Now() }
func (benchState) CredentialExpiry(context.Context, node.Credential) (time.Time, error) {
	return time.Time{}, node.ErrNotFound
}
func (benchState) Used(context.Context, node.Credential) (bool, error) {
	return false, fmt.Errorf("bench: no use-once records")
}
func (benchState) Agent(context.Context, string) (node.AgentRecord, error) {
	return node.AgentRecord{}, node.ErrNotFound
}

// x509popBenchPKI writes a P-256 root (the CA bundle), and an agent's
// chain (leaf, intermediate) and key under dir.
func x509popBenchPKI(dir string) (bundle, cert, key string, err error) {
	now := time.Now()
	rootKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	interKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := func(serial int64, cn string) *x509.Certificate {
		return &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	}
	rootTmpl := ca(1, "bench root")
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	if err != nil {
		return "", "", "", err
	}
	interTmpl := ca(2, "bench intermediate")
	interDER, err := x509.CreateCertificate(rand.Reader, interTmpl, rootTmpl, interKey.Public(), rootKey)
	if err != nil {
		return "", "", "", err
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "bench-node"},
		DNSNames: []string{"bench-node.example"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, interTmpl, leafKey.Public(), interKey)
	if err != nil {
		return "", "", "", err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(leafKey)
	if err != nil {
		return "", "", "", err
	}
	pemOf := func(typ string, ders ...[]byte) []byte {
		var out []byte
		for _, d := range ders {
			out = append(out, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: d})...)
		}
		return out
	}
	bundle, cert, key = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "node.crt"), filepath.Join(dir, "node.key")
	for _, f := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{{bundle, pemOf("CERTIFICATE", rootDER), 0o644}, {cert, pemOf("CERTIFICATE", leafDER, interDER), 0o644}, {key, pemOf("PRIVATE KEY", keyDER), 0o600}} {
		if err := os.WriteFile(f.path, f.data, f.mode); err != nil {
			return "", "", "", err
		}
	}
	return bundle, cert, key, nil
}
