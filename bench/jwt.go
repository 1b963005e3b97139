package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/clock"
)

// jwtBenchDuration is how long each JWT measurement runs (in all, over
// jwtRounds rounds for the raw and minting rates).
const jwtBenchDuration = 2 * time.Second

// jwtRounds is how many alternating rounds the raw ES256 and minting
// rates are taken in.
const jwtRounds = 5

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
	// The two rates are compared as a ratio, so they are taken in
	// alternating rounds (the order reversed every other round) and
	// their medians compared: a machine whose speed drifts over the
	// seconds of the measurement moves both alike.
	var raws, mints []float64
	for r := 0; r < jwtRounds; r++ {
		if r%2 == 0 {
			raws = append(raws, parallelRate(jwtBenchDuration/jwtRounds, rawOp))
			mints = append(mints, parallelRate(jwtBenchDuration/jwtRounds, mintOp))
		} else {
			mints = append(mints, parallelRate(jwtBenchDuration/jwtRounds, mintOp))
			raws = append(raws, parallelRate(jwtBenchDuration/jwtRounds, rawOp))
		}
	}
	raw, mint := median(raws), median(mints)
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
