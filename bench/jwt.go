package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/clock"
)

// jwtBenchDuration is how long each JWT measurement runs.
const jwtBenchDuration = 4 * time.Second

// jwtBlock is how many operations of one kind run between two reads of
// the clock when the raw and minting rates are taken together.
const jwtBlock = 16

// benchJWT prints the JWT-SVID minting rate of the ca package beside the
// raw ES256 signing rate of the machine (hash and ECDSA P-256 over an
// input of a JWT-SVID's size), and the validation rate of go-spiffe's
// jwtsvid.ParseAndValidate on the minted tokens.
func benchJWT(ctx context.Context) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	kid, err := ca.KeyIDOf(key.Public())
	if err != nil {
		return err
	}
	signer, err := ca.NewJWTSigner(td, kid, key, time.Now().Add(24*time.Hour), ca.DefaultJWTSVIDTTL, clock.New())
	if err != nil {
		return err
	}
	id := spiffeid.RequireFromPath(td, "/bench/jwt")
	params := ca.JWTSVIDParams{SPIFFEID: id, Audience: []string{"spiffe://" + td.Name() + "/db"}}
	token, _, err := signer.SignJWTSVID(ctx, params)
	if err != nil {
		return err
	}
	input := []byte(token[:strings.LastIndexByte(token, '.')]) // header.claims, as signed

	rawOp := func() error {
		d := sha256.Sum256(input)
		_, err := ecdsa.SignASN1(rand.Reader, key, d[:])
		return err
	}
	mintOp := func() error {
		_, _, err := signer.SignJWTSVID(ctx, params)
		return err
	}
	// The two rates are compared as a ratio, so they are taken together:
	// every core alternates blocks of jwtBlock raw signatures and
	// jwtBlock mints, and each rate is its operations over the time its
	// own blocks took. A machine whose speed drifts moves both alike.
	// (Medians of five alternating rounds of 0.4 s each, the earlier
	// way, gave ratios from 0.83 to 0.99 between runs of one build, while
	// go test's BenchmarkSignJWTSVID timed the two operations alike.)
	raw, mint := interleavedRates(jwtBenchDuration, rawOp, mintOp)
	bundle := jwtbundle.New(td)
	if err := bundle.AddJWTAuthority(kid, key.Public()); err != nil {
		return err
	}
	validate := parallelRate(jwtBenchDuration, func() error {
		_, err := jwtsvid.ParseAndValidate(token, bundle, params.Audience)
		return err
	})
	fmt.Printf("limit  raw ES256 signatures (SHA-256+P-256): %9.0f /s\n", raw)
	fmt.Printf("issue  JWT-SVIDs minted (ca.JWTSigner):      %9.0f /s  (%.2f of raw ES256)\n", mint, mint/raw)
	fmt.Printf("check  JWT-SVIDs validated (go-spiffe):      %9.0f /s\n", validate)
	record(newFigure("JWT-SVIDs minted", mint, "/s", raw,
		&Goal{Text: "≥ 0.9 of limit (raw ES256)", Kind: GoalMinRatio, Bound: 0.9}, ""))
	return nil
}

// interleavedRates runs a and b on every core, alternating blocks of
// jwtBlock operations of each, for dur (and at most 10,000,000 blocks per
// core, half of each kind), and returns each one's rate: its operations
// over the time its blocks took, per core, times the cores. A core stops
// at its first error.
func interleavedRates(dur time.Duration, a, b func() error) (rateA, rateB float64) {
	workers := runtime.GOMAXPROCS(0)
	type tally struct {
		n    [2]int64
		took [2]time.Duration
	}
	tallies := make([]tally, workers)
	deadline := time.Now().Add(dur)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := &tallies[w]
			ops := [2]func() error{a, b}
			for i := 0; i < 10_000_000 && time.Now().Before(deadline); i++ {
				k := i % 2
				start := time.Now()
				for range jwtBlock {
					if ops[k]() != nil {
						return
					}
				}
				t.took[k] += time.Since(start)
				t.n[k] += jwtBlock
			}
		}()
	}
	wg.Wait()
	var rates [2]float64
	for k := range rates {
		var n int64
		var took time.Duration
		for _, t := range tallies {
			n, took = n+t.n[k], took+t.took[k]
		}
		if took > 0 {
			rates[k] = float64(n) / (took.Seconds() / float64(workers))
		}
	}
	return rates[0], rates[1]
}
