package x509pop

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // checking the SHA-1 fingerprint placeholder
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/registration"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func selectorValues(res *node.Result) []string {
	var out []string
	for _, s := range res.Selectors {
		if s.GetType() != Name {
			out = append(out, "WRONG TYPE "+s.GetType())
		}
		out = append(out, s.GetValue())
	}
	return out
}

func wantRefused(t *testing.T, res *node.Result, err error, reason string) {
	t.Helper()
	var r *node.RefusedError
	if !errors.As(err, &r) {
		t.Fatalf("Verify = %v, %v; want a RefusedError (%s)", res, err, reason)
	}
	if res != nil {
		t.Fatalf("a result with a refusal: %+v", res)
	}
	if r.Public != RefusedMessage {
		t.Fatalf("public text %q, want %q", r.Public, RefusedMessage)
	}
	if !strings.Contains(r.Reason, reason) {
		t.Fatalf("reason %q does not say %q", r.Reason, reason)
	}
	if strings.Count(err.Error(), "x509pop: ") != 1 {
		t.Fatalf("prefix doubled or missing: %v", err)
	}
}

func TestAttestAccepted(t *testing.T) {
	ca := newTestCA(t, "good")
	for _, alg := range []string{"p256", "p384", "ed25519", "rsa"} {
		t.Run(alg, func(t *testing.T) {
			leaf, key, chain := ca.issue(t, leafOpts{alg: alg, cn: "node-1.example", dns: []string{"node-1.example", "n1.internal"}})
			v := newVerifierFor(t, DefaultServerConfig(), ca)
			res, ex, err := attest(t, v, newState(), newAttestorFor(t, testTD, chain, key))
			if err != nil {
				t.Fatal(err)
			}
			if len(ex.challenges) != 1 || len(ex.challenges[0]) != NonceSize {
				t.Fatalf("challenges %d, want one nonce of %d bytes", len(ex.challenges), NonceSize)
			}
			sum := sha256.Sum256(leaf.Raw)
			if res.ID != hex.EncodeToString(sum[:]) {
				t.Fatalf("ID %q, want the leaf's SHA-256 fingerprint", res.ID)
			}
			if _, err := registration.AgentID(spiffeid.RequireTrustDomainFromString(testTD), Name, res.ID); err != nil {
				t.Fatal(err)
			}
			want := []string{
				"ca:fingerprint:" + fingerprint(ca.inter.Raw),
				"ca:fingerprint:" + fingerprint(ca.root.Raw),
				"san:dns:n1.internal",
				"san:dns:node-1.example",
				"serialnumber:" + leaf.SerialNumber.Text(16),
				"subject:cn:node-1.example",
			}
			slices.Sort(want)
			if got := selectorValues(res); !slices.Equal(got, want) {
				t.Fatalf("selectors\n%q\nwant\n%q", got, want)
			}
			for _, s := range res.Selectors {
				if err := registration.ValidateSelectorInput(s); err != nil {
					t.Fatalf("selector %v does not validate: %v", s, err)
				}
			}
			if len(res.Consume) != 0 {
				t.Fatalf("consumes %v: a challenge-response attestor needs no use-once record", res.Consume)
			}
		})
	}
}

// TestAttestRSAPKCS1 checks the PKCS#1 v1.5 answer, which the agent half
// does not produce (it signs with PSS) but other clients may.
func TestAttestRSAPKCS1(t *testing.T) {
	ca := newTestCA(t, "good")
	_, key, chain := ca.issue(t, leafOpts{alg: "rsa", cn: "rsa"})
	v := newVerifierFor(t, DefaultServerConfig(), ca)
	p, _ := encodePayload(chain)
	ex := &exchange{payload: p, answer: func(_ context.Context, nonce []byte) ([]byte, error) {
		d := sha256.Sum256(SignedMessage(testTD, nonce, chain))
		sig, err := key.(*rsa.PrivateKey).Sign(rand.Reader, d[:], crypto.SHA256)
		if err != nil {
			return nil, err
		}
		return json.Marshal(answer{Scheme: SchemeRSAPKCS1SHA256, Signature: sig})
	}}
	if _, err := v.Verify(context.Background(), newState(), ex); err != nil {
		t.Fatal(err)
	}
}

func TestAttestRefusals(t *testing.T) {
	ca := newTestCA(t, "good")
	other := newTestCA(t, "other")
	v := newVerifierFor(t, DefaultServerConfig(), ca)
	ctx := context.Background()

	t.Run("expired leaf", func(t *testing.T) {
		_, key, chain := ca.issue(t, leafOpts{cn: "n", notAfter: t0.Add(time.Hour)})
		st := newState()
		st.clk.Set(t0.Add(time.Hour + time.Second))
		res, ex, err := attest(t, v, st, newAttestorFor(t, testTD, chain, key))
		wantRefused(t, res, err, "expired")
		if len(ex.challenges) != 0 {
			t.Fatal("a challenge was sent for an expired leaf")
		}
	})
	t.Run("leaf not yet valid", func(t *testing.T) {
		_, key, chain := ca.issue(t, leafOpts{cn: "n", notBefore: t0.Add(time.Hour)})
		res, _, err := attest(t, v, newState(), newAttestorFor(t, testTD, chain, key))
		wantRefused(t, res, err, "not yet valid")
	})
	t.Run("chain to another CA", func(t *testing.T) {
		_, key, chain := other.issue(t, leafOpts{cn: "n"})
		res, _, err := attest(t, v, newState(), newAttestorFor(t, testTD, chain, key))
		wantRefused(t, res, err, "unknown authority")
		// Presenting the other CA's root as an intermediate does not help.
		_, key, chain = other.issue(t, leafOpts{cn: "n"})
		chain = append(chain, other.root.Raw)
		res, _, err = attest(t, v, newState(), newAttestorFor(t, testTD, chain, key))
		wantRefused(t, res, err, "unknown authority")
	})
	t.Run("wrong answer", func(t *testing.T) {
		_, _, chain := ca.issue(t, leafOpts{cn: "victim"})
		thief := newKey(t, "p256") // holds the certificate, not its key
		p, _ := encodePayload(chain)
		ex := &exchange{payload: p, answer: func(_ context.Context, nonce []byte) ([]byte, error) {
			a, err := sign(thief, SignedMessage(testTD, nonce, chain))
			if err != nil {
				return nil, err
			}
			return json.Marshal(a)
		}}
		res, err := v.Verify(ctx, newState(), ex)
		wantRefused(t, res, err, "does not verify")
		if strings.Contains(err.Error(), hex.EncodeToString(ex.answers[0])) {
			t.Fatal("the error echoes the answer")
		}
	})
	t.Run("replayed answer", func(t *testing.T) {
		_, key, chain := ca.issue(t, leafOpts{cn: "n"})
		a := newAttestorFor(t, testTD, chain, key)
		_, first, err := attest(t, v, newState(), a)
		if err != nil {
			t.Fatal(err)
		}
		captured := first.answers[0]
		p, _ := a.Payload(ctx)
		ex := &exchange{payload: p, answer: func(context.Context, []byte) ([]byte, error) { return captured, nil }}
		res, err := v.Verify(ctx, newState(), ex)
		wantRefused(t, res, err, "does not verify")
		if string(ex.challenges[0]) == string(first.challenges[0]) {
			t.Fatal("two attestations got the same nonce")
		}
	})
	t.Run("answer for another trust domain", func(t *testing.T) {
		_, key, chain := ca.issue(t, leafOpts{cn: "n"})
		res, _, err := attest(t, v, newState(), newAttestorFor(t, "evil.example", chain, key))
		wantRefused(t, res, err, "does not verify")
	})
	t.Run("answer over another chain", func(t *testing.T) {
		_, key, chain := ca.issue(t, leafOpts{cn: "n"})
		p, _ := encodePayload(chain)
		ex := &exchange{payload: p, answer: func(_ context.Context, nonce []byte) ([]byte, error) {
			a, err := sign(key, SignedMessage(testTD, nonce, chain[:1]))
			if err != nil {
				return nil, err
			}
			return json.Marshal(a)
		}}
		res, err := v.Verify(ctx, newState(), ex)
		wantRefused(t, res, err, "does not verify")
	})
	t.Run("scheme of another key type", func(t *testing.T) {
		_, key, chain := ca.issue(t, leafOpts{cn: "n"})
		p, _ := encodePayload(chain)
		ex := &exchange{payload: p, answer: func(_ context.Context, nonce []byte) ([]byte, error) {
			a, _ := sign(key, SignedMessage(testTD, nonce, chain))
			a.Scheme = SchemeEd25519
			return json.Marshal(a)
		}}
		res, err := v.Verify(ctx, newState(), ex)
		wantRefused(t, res, err, "does not fit")
	})
	t.Run("server auth only", func(t *testing.T) {
		_, key, chain := ca.issue(t, leafOpts{cn: "n", eku: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		res, _, err := attest(t, v, newState(), newAttestorFor(t, testTD, chain, key))
		wantRefused(t, res, err, "key usage")
		cfg := DefaultServerConfig()
		cfg.ExtKeyUsage = EKUAny
		if _, _, err := attest(t, newVerifierFor(t, cfg, ca), newState(), newAttestorFor(t, testTD, chain, key)); err != nil {
			t.Fatalf("ext_key_usage any: %v", err)
		}
	})
	t.Run("no digitalSignature", func(t *testing.T) {
		_, key, chain := ca.issue(t, leafOpts{cn: "n", keyUsage: x509.KeyUsageKeyEncipherment})
		res, _, err := attest(t, v, newState(), newAttestorFor(t, testTD, chain, key))
		wantRefused(t, res, err, "digitalSignature")
	})
	t.Run("CA leaf", func(t *testing.T) {
		_, key, chain := ca.issue(t, leafOpts{cn: "n", isCA: true, keyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign})
		res, _, err := attest(t, v, newState(), newAttestorFor(t, testTD, chain, key))
		wantRefused(t, res, err, "CA certificate")
	})
	t.Run("unsupported key", func(t *testing.T) {
		_, key, chain := ca.issue(t, leafOpts{cn: "n", alg: "p521"})
		p, _ := encodePayload(chain)
		ex := &exchange{payload: p, answer: func(context.Context, []byte) ([]byte, error) { return nil, errors.New("unreachable") }}
		res, err := v.Verify(ctx, newState(), ex)
		wantRefused(t, res, err, "P-521")
		if _, err := NewAttestor(testTD, AgentConfig{}); err == nil {
			t.Fatal("empty agent config accepted")
		}
		dir := t.TempDir()
		_, err = NewAttestor(testTD, AgentConfig{
			CertificatePath: writeFile(t, dir, "c.pem", pemCerts(chain...), 0o644),
			PrivateKeyPath:  writeFile(t, dir, "k.pem", pemKey(t, key), 0o600),
		})
		if err == nil || !strings.Contains(err.Error(), "P-521") {
			t.Fatalf("agent with a P-521 leaf: %v", err)
		}
	})
	t.Run("selector that entries could not name", func(t *testing.T) {
		leaf, key, chain := ca.issue(t, leafOpts{cn: "bad\ncn"})
		res, _, err := attest(t, v, newState(), newAttestorFor(t, testTD, chain, key))
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range selectorValues(res) {
			if strings.HasPrefix(s, "subject:cn:") {
				t.Fatalf("selector %q with a control character", s)
			}
		}
		if !slices.Contains(selectorValues(res), "serialnumber:"+leaf.SerialNumber.Text(16)) {
			t.Fatalf("selectors %q", selectorValues(res))
		}
	})
	t.Run("id template not a path", func(t *testing.T) {
		cfg := DefaultServerConfig()
		cfg.AgentIDTemplate = "{{ .Subject.CN }}"
		_, key, chain := ca.issue(t, leafOpts{cn: "has space"})
		res, _, err := attest(t, newVerifierFor(t, cfg, ca), newState(), newAttestorFor(t, testTD, chain, key))
		wantRefused(t, res, err, "not allowed in a SPIFFE ID path segment")
		_, key, chain = ca.issue(t, leafOpts{cn: strings.Repeat("a", 1100)})
		res, ex, err := attest(t, newVerifierFor(t, cfg, ca), newState(), newAttestorFor(t, testTD, chain, key))
		wantRefused(t, res, err, "at most 1024")
		if len(ex.challenges) != 0 {
			t.Fatal("a challenge was sent for a leaf that cannot name an agent")
		}
	})
}

func TestAttestMalformed(t *testing.T) {
	ca := newTestCA(t, "good")
	v := newVerifierFor(t, DefaultServerConfig(), ca)
	_, key, chain := ca.issue(t, leafOpts{cn: "n"})
	good, _ := encodePayload(chain)
	many := make([][]byte, MaxChainLen+1)
	for i := range many {
		many[i] = chain[0]
	}
	tooMany, _ := encodePayload(many)
	garbage, _ := encodePayload([][]byte{[]byte("not DER")})
	big, _ := encodePayload([][]byte{make([]byte, MaxCertSize+1)})
	for name, p := range map[string][]byte{
		"empty": nil, "not json": []byte("chain"), "no chain": []byte(`{}`), "empty chain": []byte(`{"chain":[]}`),
		"unknown field": []byte(`{"chain":[],"key":"x"}`), "trailing": append(append([]byte{}, good...), []byte(`{}`)...),
		"too many": tooMany, "not DER": garbage, "oversized cert": big,
	} {
		ex := &exchange{payload: p}
		res, err := v.Verify(context.Background(), newState(), ex)
		var r *node.RefusedError
		if err == nil || res != nil || errors.As(err, &r) || !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Verify = %v, %v; want a malformed-evidence error", name, res, err)
		}
		if len(ex.challenges) != 0 {
			t.Errorf("%s: a challenge for malformed evidence", name)
		}
	}
	for name, ans := range map[string][]byte{
		"not json": []byte("sig"), "no signature": []byte(`{"scheme":"ecdsa-sha256"}`),
		"oversized": make([]byte, maxAnswerSize+1),
	} {
		ex := &exchange{payload: good, answer: func(context.Context, []byte) ([]byte, error) { return ans, nil }}
		if res, err := v.Verify(context.Background(), newState(), ex); err == nil || res != nil || !errors.Is(err, ErrMalformed) {
			t.Errorf("answer %s: Verify = %v, %v", name, res, err)
		}
	}
	// A failed round (no rounds allowed, the agent gone) refuses.
	ex := &exchange{payload: good}
	if res, err := v.Verify(context.Background(), newState(), ex); !errors.Is(err, node.ErrRoundsExhausted) || res != nil {
		t.Fatalf("Verify without rounds = %v, %v", res, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := v.Verify(ctx, newState(), &exchange{payload: good}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Verify with an ended context = %v", err)
	}
	_ = key
}

func TestCABundleReload(t *testing.T) {
	first, second := newTestCA(t, "first"), newTestCA(t, "second")
	dir := t.TempDir()
	path := writeFile(t, dir, "bundle.pem", pemCerts(first.root.Raw), 0o644)
	cfg := DefaultServerConfig()
	cfg.CABundlePath = path
	v, err := NewVerifier(testTD, cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, k1, c1 := first.issue(t, leafOpts{cn: "a"})
	_, k2, c2 := second.issue(t, leafOpts{cn: "b"})
	a1, a2 := newAttestorFor(t, testTD, c1, k1), newAttestorFor(t, testTD, c2, k2)
	if _, _, err := attest(t, v, newState(), a1); err != nil {
		t.Fatal(err)
	}
	res, _, err := attest(t, v, newState(), a2)
	wantRefused(t, res, err, "unknown authority")

	// The operator replaces the bundle: the second CA in, the first out.
	// The size differs (two roots), so the change is seen whatever the
	// file system's time resolution.
	writeFile(t, dir, "bundle.pem", pemCerts(second.root.Raw, second.inter.Raw), 0o644)
	if _, _, err := attest(t, v, newState(), a2); err != nil {
		t.Fatalf("after the reload: %v", err)
	}
	res, _, err = attest(t, v, newState(), a1)
	wantRefused(t, res, err, "unknown authority")

	// A broken bundle fails closed, and recovers when fixed.
	writeFile(t, dir, "bundle.pem", []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), 0o644)
	if res, _, err := attest(t, v, newState(), a2); err == nil || res != nil || !strings.Contains(err.Error(), "ca_bundle_path") {
		t.Fatalf("with a broken bundle: %v, %v", res, err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, _, err := attest(t, v, newState(), a2); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("with no bundle: %v", err)
	}
	writeFile(t, dir, "bundle.pem", pemCerts(second.root.Raw), 0o644)
	if _, _, err := attest(t, v, newState(), a2); err != nil {
		t.Fatalf("after the fix: %v", err)
	}
}

func TestServerConfig(t *testing.T) {
	ca := newTestCA(t, "good")
	dir := t.TempDir()
	good := writeFile(t, dir, "bundle.pem", pemCerts(ca.root.Raw), 0o644)
	for _, tc := range []struct {
		cfg  ServerConfig
		want string
	}{
		{ServerConfig{}, "ca_bundle_path is required"},
		{ServerConfig{CABundlePath: good, ExtKeyUsage: "server_auth"}, `ext_key_usage "server_auth"`},
		{ServerConfig{CABundlePath: good, AgentIDTemplate: "{{ .Subject.O }}"}, "unknown placeholder"},
		{ServerConfig{CABundlePath: joinPath(dir, "missing.pem")}, "no such file"},
		{ServerConfig{CABundlePath: writeFile(t, dir, "empty.pem", []byte("\n"), 0o644)}, "holds no certificate"},
		{ServerConfig{CABundlePath: writeFile(t, dir, "key.pem", pemKey(t, newKey(t, "p256")), 0o644)}, `"PRIVATE KEY", want CERTIFICATE`},
		{ServerConfig{CABundlePath: writeFile(t, dir, "trail.pem", append(pemCerts(ca.root.Raw), "junk"...), 0o644)}, "trailing data"},
	} {
		_, err := NewVerifier(testTD, tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "x509pop: ") || strings.Count(err.Error(), "x509pop: ") != 1 {
			t.Errorf("NewVerifier(%+v) = %v, want %q", tc.cfg, err, tc.want)
		}
	}
	if _, err := NewVerifier("", ServerConfig{CABundlePath: good}); err == nil {
		t.Error("no trust domain accepted")
	}
}

func joinPath(dir, name string) string { return dir + "/" + name }

func TestAgentIDTemplate(t *testing.T) {
	ca := newTestCA(t, "good")
	leaf, _, _ := ca.issue(t, leafOpts{cn: "web-01"})
	s256 := sha256.Sum256(leaf.Raw)
	s1 := sha1.Sum(leaf.Raw) //nolint:gosec // test of the placeholder
	for tmpl, want := range map[string]string{
		DefaultAgentIDTemplate:                        hex.EncodeToString(s256[:]),
		"{{.Fingerprint.SHA1}}":                       hex.EncodeToString(s1[:]),
		"dc1/{{ .Subject.CN }}/{{ .SerialNumber }}":   "dc1/web-01/" + leaf.SerialNumber.Text(16),
		"cn-{{ .Subject.CN }}_{{.Fingerprint.SHA1 }}": "cn-web-01_" + hex.EncodeToString(s1[:]),
	} {
		p, err := parseIDTemplate(tmpl)
		if err != nil {
			t.Fatalf("%q: %v", tmpl, err)
		}
		if got, err := p.render(leaf); err != nil || got != want {
			t.Errorf("%q renders %q, %v; want %q", tmpl, got, err, want)
		}
	}
	for tmpl, want := range map[string]string{
		"":                                      "empty",
		"fixed":                                 "no placeholder",
		"{{ .Subject.O }}":                      "unknown placeholder",
		"{{ index . 1 }}":                       "unknown placeholder",
		"{{ .Subject.CN ":                       "without }}",
		"a }} {{ .Subject.CN }}":                "without {{",
		"a b/{{ .Subject.CN }}":                 `character ' '`,
		"{{ .Subject.CN }}?x":                   `character '?'`,
		strings.Repeat("{{.SerialNumber}}", 40): "longer than",
	} {
		if _, err := parseIDTemplate(tmpl); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("parseIDTemplate(%q) = %v, want %q", tmpl, err, want)
		}
	}
	p, _ := parseIDTemplate("x/{{ .Subject.CN }}")
	for _, cn := range []string{"", "..", "a/b/", "a/b", "é"} {
		l, _, _ := ca.issue(t, leafOpts{cn: cn})
		if id, err := p.render(l); err == nil {
			t.Errorf("CN %q rendered to %q", cn, id)
		}
	}
}

func TestValidateSelector(t *testing.T) {
	fp := strings.Repeat("ab", 32)
	for _, ok := range []string{"subject:cn:web 01", "ca:fingerprint:" + fp, "san:dns:a.example", "serialnumber:1f", "serialnumber:-1f"} {
		if err := ValidateSelector(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "cn:x", "subject:cn:", "ca:fingerprint:" + fp[:62], "ca:fingerprint:" + strings.ToUpper(fp), "serialnumber:0x1f", "serialnumber:-", "san:dns:"} {
		if err := ValidateSelector(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestAgentFiles(t *testing.T) {
	ca := newTestCA(t, "good")
	_, key, chain := ca.issue(t, leafOpts{cn: "n"})
	dir := t.TempDir()
	cert := writeFile(t, dir, "cert.pem", pemCerts(chain...), 0o644)
	keyPath := writeFile(t, dir, "key.pem", pemKey(t, key), 0o600)

	open := writeFile(t, dir, "open.pem", pemKey(t, key), 0o640)
	_, err := NewAttestor(testTD, AgentConfig{CertificatePath: cert, PrivateKeyPath: open})
	if err == nil || !strings.Contains(err.Error(), "accessible by group or others (mode 0640)") || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("group-readable key: %v", err)
	}
	otherKey := writeFile(t, dir, "other.pem", pemKey(t, newKey(t, "p256")), 0o600)
	if _, err := NewAttestor(testTD, AgentConfig{CertificatePath: cert, PrivateKeyPath: otherKey}); err == nil || !strings.Contains(err.Error(), "is not the key of the leaf") {
		t.Fatalf("mismatched key: %v", err)
	}
	if _, err := NewAttestor(testTD, AgentConfig{CertificatePath: keyPath, PrivateKeyPath: keyPath}); err == nil || !strings.Contains(err.Error(), "want CERTIFICATE") {
		t.Fatalf("key as certificate: %v", err)
	}
	notKey := writeFile(t, dir, "notkey.pem", pemCerts(chain[0]), 0o600)
	if _, err := NewAttestor(testTD, AgentConfig{CertificatePath: cert, PrivateKeyPath: notKey}); err == nil || !strings.Contains(err.Error(), "not a private key") {
		t.Fatalf("certificate as key: %v", err)
	}
	if _, err := NewAttestor(testTD, AgentConfig{CertificatePath: cert, PrivateKeyPath: dir}); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("directory as key: %v", err)
	}
	if _, err := NewAttestor("", AgentConfig{CertificatePath: cert, PrivateKeyPath: keyPath}); err == nil {
		t.Fatal("no trust domain accepted")
	}

	// SEC 1 EC and PKCS#1 RSA keys load as well as PKCS#8, and sign.
	ecDER, err := x509.MarshalECPrivateKey(key.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	_, rkey, rchain := ca.issue(t, leafOpts{cn: "r", alg: "rsa"})
	v := newVerifierFor(t, DefaultServerConfig(), ca)
	for name, files := range map[string][2][]byte{
		"EC PRIVATE KEY":  {pemCerts(chain...), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER})},
		"RSA PRIVATE KEY": {pemCerts(rchain...), pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rkey.(*rsa.PrivateKey))})},
	} {
		a, err := NewAttestor(testTD, AgentConfig{
			CertificatePath: writeFile(t, dir, "c-"+name, files[0], 0o644),
			PrivateKeyPath:  writeFile(t, dir, "k-"+name, files[1], 0o600),
		})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if _, _, err := attest(t, v, newState(), a); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}

	a, err := NewAttestor(testTD, AgentConfig{CertificatePath: cert, PrivateKeyPath: keyPath})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Answer(context.Background(), make([]byte, NonceSize)); err == nil || !strings.Contains(err.Error(), "before the payload") {
		t.Fatalf("Answer before Payload: %v", err)
	}
	if _, err := a.Payload(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, NonceSize - 1, 2*NonceSize + 1} {
		if _, err := a.Answer(context.Background(), make([]byte, n)); err == nil {
			t.Fatalf("Answer to a %d-byte challenge accepted", n)
		}
	}
	// The agent re-reads its files for each attestation: a key made
	// group-readable later is refused then.
	if err := os.Chmod(keyPath, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Payload(context.Background()); err == nil || !strings.Contains(err.Error(), "group or others") {
		t.Fatalf("Payload with an open key: %v", err)
	}
	if a.Name() != Name || v.Name() != Name {
		t.Fatal("names")
	}
	if _, ok := any(a).(node.ChallengeFree); ok {
		t.Fatal("the x509pop attestor needs a challenge: it must not be ChallengeFree")
	}
}
