// Package awsiidtest fakes the AWS side of the aws_iid attestor for tests:
// a certificate standing in for AWS's regional RSA-2048 certificate, which
// signs instance identity documents as PKCS#7 SignedData (SHA-256, the
// rsa2048 format), and an IMDSv2 metadata service on loopback that serves
// them behind a session token.
package awsiidtest

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/smallstep/pkcs7"
)

// Signer stands in for AWS's regional certificate and key.
type Signer struct {
	Cert    *x509.Certificate
	Key     *rsa.PrivateKey
	CertPEM []byte
}

// NewSigner returns a self-signed RSA-2048 certificate named cn.
func NewSigner(tb testing.TB, cn string) *Signer {
	tb.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		tb.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"Amazon Web Services LLC"}},
		NotBefore:    time.Now().Add(-24 * time.Hour),
		NotAfter:     time.Now().Add(10 * 365 * 24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return &Signer{Cert: cert, Key: key, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// Impostor returns a signer with another key but the same issuer and
// serial number as s: a signature it makes names s's certificate.
func (s *Signer) Impostor(tb testing.TB) *Signer {
	tb.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := *s.Cert
	tmpl.PublicKey = &key.PublicKey
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return &Signer{Cert: cert, Key: key, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// Sign returns doc's rsa2048 signature as the metadata service serves it:
// base64 of a PKCS#7 SignedData holding doc, signed with SHA-256 and RSA,
// in lines of 64 characters.
func (s *Signer) Sign(tb testing.TB, doc []byte) string {
	tb.Helper()
	return wrap(base64.StdEncoding.EncodeToString(s.SignDER(tb, doc, pkcs7.OIDDigestAlgorithmSHA256)))
}

// SignDER returns the DER PKCS#7 SignedData of doc with the given digest
// algorithm.
func (s *Signer) SignDER(tb testing.TB, doc []byte, digest []int) []byte {
	tb.Helper()
	sd, err := pkcs7.NewSignedData(doc)
	if err != nil {
		tb.Fatal(err)
	}
	sd.SetDigestAlgorithm(digest)
	if err := sd.AddSigner(s.Cert, s.Key, pkcs7.SignerInfoConfig{}); err != nil {
		tb.Fatal(err)
	}
	der, err := sd.Finish()
	if err != nil {
		tb.Fatal(err)
	}
	return der
}

func wrap(s string) string {
	var b strings.Builder
	for len(s) > 64 {
		b.WriteString(s[:64] + "\n")
		s = s[64:]
	}
	b.WriteString(s)
	return b.String()
}

// Document is an instance identity document, with every field AWS
// serves.
type Document struct {
	AccountID               string    `json:"accountId"`
	Architecture            string    `json:"architecture"`
	AvailabilityZone        string    `json:"availabilityZone"`
	BillingProducts         []string  `json:"billingProducts"`
	DevpayProductCodes      []string  `json:"devpayProductCodes"`
	MarketplaceProductCodes []string  `json:"marketplaceProductCodes"`
	ImageID                 string    `json:"imageId"`
	InstanceID              string    `json:"instanceId"`
	InstanceType            string    `json:"instanceType"`
	KernelID                *string   `json:"kernelId"`
	PendingTime             time.Time `json:"pendingTime"`
	PrivateIP               string    `json:"privateIp"`
	RamdiskID               *string   `json:"ramdiskId"`
	Region                  string    `json:"region"`
	Version                 string    `json:"version"`
}

// NewDocument returns a document of instance in account and region
// (zone <region>a), launched at pending.
func NewDocument(account, region, instance string, pending time.Time) Document {
	return Document{
		AccountID:        account,
		Architecture:     "x86_64",
		AvailabilityZone: region + "a",
		ImageID:          "ami-0abcdef1234567890",
		InstanceID:       instance,
		InstanceType:     "t3.micro",
		PendingTime:      pending.UTC().Truncate(time.Second),
		PrivateIP:        "172.31.5.17",
		Region:           region,
		Version:          "2017-09-30",
	}
}

// JSON returns the document as the metadata service serves it (indented,
// "key" : value).
func (d Document) JSON() []byte {
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		panic(err)
	}
	return []byte(strings.ReplaceAll(string(b), `": `, `" : `))
}

// IMDS is a fake IMDSv2 metadata service on loopback.
type IMDS struct {
	*httptest.Server
	mu        sync.Mutex
	document  []byte
	signature string
	tokens    map[string]bool
	// Requests counts the requests served.
	Requests atomic.Int64
	// Hang, when set, makes every request wait until the client goes.
	Hang atomic.Bool
}

// NewIMDS starts a metadata service serving document and signature; it
// stops when the test ends.
func NewIMDS(tb testing.TB, document []byte, signature string) *IMDS {
	m := &IMDS{document: document, signature: signature, tokens: map[string]bool{}}
	m.Server = httptest.NewServer(http.HandlerFunc(m.serve))
	tb.Cleanup(m.Close)
	return m
}

// Set replaces the document and signature served.
func (m *IMDS) Set(document []byte, signature string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.document, m.signature = document, signature
}

func (m *IMDS) serve(w http.ResponseWriter, r *http.Request) {
	m.Requests.Add(1)
	if m.Hang.Load() {
		<-r.Context().Done()
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if r.URL.Path == "/latest/api/token" {
		if r.Method != http.MethodPut || r.Header.Get("X-aws-ec2-metadata-token-ttl-seconds") == "" {
			http.Error(w, "bad token request", http.StatusBadRequest)
			return
		}
		tok := base64.RawURLEncoding.EncodeToString(big.NewInt(time.Now().UnixNano()).Bytes()) + "-token"
		m.tokens[tok] = true
		w.Write([]byte(tok))
		return
	}
	if r.Method != http.MethodGet || !m.tokens[r.Header.Get("X-aws-ec2-metadata-token")] {
		http.Error(w, "Unauthorized", http.StatusUnauthorized)
		return
	}
	switch r.URL.Path {
	case "/latest/dynamic/instance-identity/document":
		w.Write(m.document)
	case "/latest/dynamic/instance-identity/rsa2048":
		w.Write([]byte(m.signature))
	default:
		http.NotFound(w, r)
	}
}
