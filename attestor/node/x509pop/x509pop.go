// Package x509pop is the X.509 proof-of-possession node attestor. The agent
// holds a certificate (with its chain) and the private key of the leaf; the
// server is configured with a CA bundle. The agent sends the chain (DER, no
// secret); the server checks it against the bundle at its own time, then
// sends a fresh random nonce, and the agent answers with a signature, made
// with the leaf's key, over a domain-separated message binding the nonce,
// the trust domain and the presented chain. A copied certificate without
// its key, an expired leaf, a chain to another CA, a wrong answer and an
// answer replayed from another attestation (whose nonce differs) are all
// refused.
//
// The agent's id is rendered from a template over the leaf (by default its
// SHA-256 fingerprint), so its SPIFFE ID is
// spiffe://<td>/sigil/agent/x509pop/<fingerprint>. Node selectors have type
// "x509pop" and the values subject:cn:<cn>, ca:fingerprint:<sha256 hex of
// each CA certificate of the verified chain>, san:dns:<name> and
// serialnumber:<hex>.
package x509pop

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
)

// Name is the attestor name.
const Name = "x509pop"

// Limits on the evidence; the server bounds messages already, these bound
// what the parser accepts within a message.
const (
	// MaxChainLen is the most certificates a payload may hold (leaf first).
	MaxChainLen = 8
	// MaxCertSize bounds one DER certificate, in bytes.
	MaxCertSize = 16 << 10
	// NonceSize is the size of the server's challenge, in bytes.
	NonceSize = 32
	// maxAnswerSize bounds an answer: an RSA-8192 signature is 1 KiB.
	maxAnswerSize = 4 << 10
)

// signingContext is the domain separation string that starts every signed
// message: a signature made for this attestor cannot be taken for one made
// for anything else with the same key.
const signingContext = "sigil x509pop node attestation v1"

// ErrMalformed is wrapped by errors about evidence that cannot be parsed.
var ErrMalformed = errors.New("malformed x509pop evidence")

// RefusedMessage is the one public text of every refusal of well-formed
// evidence (expired, untrusted, wrong answer): the reason goes to the log.
const RefusedMessage = "x509pop certificate or proof of possession refused"

// payload is the agent's evidence: the certificate chain, leaf first, DER.
type payload struct {
	Chain [][]byte `json:"chain"`
}

// encodePayload returns the payload carrying chain.
func encodePayload(chain [][]byte) ([]byte, error) {
	return json.Marshal(payload{Chain: chain})
}

// decodePayload parses and bounds a payload; it does not parse the
// certificates.
func decodePayload(b []byte) ([][]byte, error) {
	var p payload
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("x509pop: %w: %v", ErrMalformed, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("x509pop: %w: trailing data after the payload", ErrMalformed)
	}
	if len(p.Chain) == 0 {
		return nil, fmt.Errorf("x509pop: %w: no certificate", ErrMalformed)
	}
	if len(p.Chain) > MaxChainLen {
		return nil, fmt.Errorf("x509pop: %w: %d certificates, at most %d", ErrMalformed, len(p.Chain), MaxChainLen)
	}
	for i, c := range p.Chain {
		if len(c) == 0 || len(c) > MaxCertSize {
			return nil, fmt.Errorf("x509pop: %w: certificate %d has %d bytes (1 to %d)", ErrMalformed, i, len(c), MaxCertSize)
		}
	}
	return p.Chain, nil
}

// Signature schemes of an answer.
const (
	SchemeECDSASHA256    = "ecdsa-sha256"   // ECDSA P-256, ASN.1 signature
	SchemeECDSASHA384    = "ecdsa-sha384"   // ECDSA P-384, ASN.1 signature
	SchemeEd25519        = "ed25519"        // Ed25519 over the message itself
	SchemeRSAPSSSHA256   = "rsa-pss-sha256" // RSA-PSS, SHA-256, salt length = hash length
	SchemeRSAPKCS1SHA256 = "rsa-pkcs1-sha256"
)

// answer is the agent's answer to a challenge.
type answer struct {
	Scheme    string `json:"scheme"`
	Signature []byte `json:"signature"`
}

func decodeAnswer(b []byte) (answer, error) {
	var a answer
	if len(b) > maxAnswerSize {
		return a, fmt.Errorf("x509pop: %w: answer of %d bytes, at most %d", ErrMalformed, len(b), maxAnswerSize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&a); err != nil {
		return a, fmt.Errorf("x509pop: %w: answer: %v", ErrMalformed, err)
	}
	if dec.More() {
		return a, fmt.Errorf("x509pop: %w: trailing data after the answer", ErrMalformed)
	}
	if len(a.Signature) == 0 {
		return a, fmt.Errorf("x509pop: %w: answer has no signature", ErrMalformed)
	}
	return a, nil
}

// SignedMessage is what the agent signs for one challenge: the context
// string, the trust domain, the nonce and the SHA-256 of the presented
// chain, each length-prefixed (4 bytes, big endian) so that no two inputs
// give the same message.
func SignedMessage(trustDomain string, nonce []byte, chain [][]byte) []byte {
	h := sha256.New()
	var n [4]byte
	for _, c := range chain {
		binary.BigEndian.PutUint32(n[:], uint32(len(c)))
		h.Write(n[:])
		h.Write(c)
	}
	var msg []byte
	for _, part := range [][]byte{[]byte(signingContext), []byte(trustDomain), nonce, h.Sum(nil)} {
		binary.BigEndian.PutUint32(n[:], uint32(len(part)))
		msg = append(msg, n[:]...)
		msg = append(msg, part...)
	}
	return msg
}

// fingerprint returns the lowercase hex SHA-256 of der.
func fingerprint(der []byte) string {
	s := sha256.Sum256(der)
	return hex.EncodeToString(s[:])
}
