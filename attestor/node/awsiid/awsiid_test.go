package awsiid

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/attestor/node/awsiid/awsiidtest"
	"github.com/sigil-id/sigil/registration"
)

const (
	account  = "123456789012"
	region   = "us-east-1"
	instance = "i-0123456789abcdef0"
)

var now = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

// state is a fake of the server's State: agents by id.
type state struct {
	agents map[string]node.AgentRecord
	err    error
}

func (s *state) Now() time.Time { return now }
func (s *state) CredentialExpiry(context.Context, node.Credential) (time.Time, error) {
	return time.Time{}, errors.New("not used")
}
func (s *state) Used(context.Context, node.Credential) (bool, error) {
	return false, errors.New("not used")
}
func (s *state) Agent(_ context.Context, id string) (node.AgentRecord, error) {
	if s.err != nil {
		return node.AgentRecord{}, s.err
	}
	if r, ok := s.agents[id]; ok {
		return r, nil
	}
	return node.AgentRecord{}, node.ErrNotFound
}

// exchange is an attestation whose agent sent payload and answers no
// challenge.
type exchange []byte

func (e exchange) Payload() []byte { return e }
func (e exchange) Challenge(context.Context, []byte) ([]byte, error) {
	return nil, node.ErrRoundsExhausted
}

type fixture struct {
	signer *awsiidtest.Signer
	doc    awsiidtest.Document
	cfg    Config
}

func newFixture(t *testing.T) *fixture {
	s := awsiidtest.NewSigner(t, "test stand-in for the AWS us-east-1 RSA-2048 certificate")
	return &fixture{
		signer: s,
		doc:    awsiidtest.NewDocument(account, region, instance, now.Add(-time.Hour)),
		cfg:    Config{Regions: map[string][]*x509.Certificate{region: {s.Cert}}, Accounts: []string{account}},
	}
}

func (f *fixture) payload(t *testing.T) []byte {
	doc := f.doc.JSON()
	return mustJSON(t, Payload{Document: string(doc), RSA2048: f.signer.Sign(t, doc)})
}

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }

func mustJSON(t *testing.T, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (f *fixture) verify(t *testing.T, st *state, payload []byte) (*node.Result, error) {
	t.Helper()
	v, err := NewVerifier(f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if st == nil {
		st = &state{}
	}
	return v.Verify(context.Background(), st, exchange(payload))
}

func wantRefused(t *testing.T, err error, reason string) {
	t.Helper()
	var re *node.RefusedError
	if !errors.As(err, &re) {
		t.Fatalf("error %v is not a refusal", err)
	}
	if re.Public != PublicRefusal || !strings.Contains(re.Reason, reason) {
		t.Fatalf("refusal %q / %q, want reason containing %q", re.Public, re.Reason, reason)
	}
	if strings.Count(err.Error(), "awsiid: ") != 1 {
		t.Fatalf("error prefix doubled or missing: %v", err)
	}
}

func wantMalformed(t *testing.T, err error, msg string) {
	t.Helper()
	var re *node.RefusedError
	if err == nil || errors.As(err, &re) || !strings.HasPrefix(err.Error(), "awsiid: ") || !strings.Contains(err.Error(), msg) {
		t.Fatalf("error %v, want a malformed-evidence error containing %q", err, msg)
	}
}

func TestVerifyAccepts(t *testing.T) {
	f := newFixture(t)
	res, err := f.verify(t, nil, f.payload(t))
	if err != nil {
		t.Fatal(err)
	}
	if res.ID != account+"/"+region+"/"+instance || len(res.Consume) != 0 {
		t.Fatalf("result %+v", res)
	}
	var got []string
	for _, s := range res.Selectors {
		if s.Type != Name {
			t.Fatalf("selector type %q", s.Type)
		}
		if err := ValidateSelector(s.Value); err != nil {
			t.Fatalf("produced selector refused by its own validator: %v", err)
		}
		got = append(got, s.Value)
	}
	want := "account:123456789012,region:us-east-1,az:us-east-1a,instance_id:i-0123456789abcdef0,image_id:ami-0abcdef1234567890,instance_type:t3.micro"
	if strings.Join(got, ",") != want {
		t.Fatalf("selectors %v, want %s", got, want)
	}
	id, err := registration.AgentID(spiffeid.RequireTrustDomainFromString("example.org"), Name, res.ID)
	if err != nil || id.String() != "spiffe://example.org/sigil/agent/aws_iid/123456789012/us-east-1/i-0123456789abcdef0" {
		t.Fatalf("agent ID %v, %v", id, err)
	}
}

func TestVerifyRefusesSignatures(t *testing.T) {
	f := newFixture(t)
	doc := f.doc.JSON()
	other := awsiidtest.NewSigner(t, "another certificate")
	tampered := awsiidtest.NewDocument("999999999999", region, instance, now)
	for _, c := range []struct {
		name, reason string
		p            Payload
	}{
		{"signed by another certificate", "none of the region's certificates", Payload{string(doc), other.Sign(t, doc)}},
		{"impostor with the certificate's issuer and serial", "does not verify", Payload{string(doc), f.signer.Impostor(t).Sign(t, doc)}},
		{"signature over another document", "another document", Payload{string(tampered.JSON()), f.signer.Sign(t, doc)}},
		{"document edited after signing", "another document", Payload{strings.Replace(string(doc), "t3.micro", "t3.large", 1), f.signer.Sign(t, doc)}},
		{"SHA-1 digest", "not SHA-256", Payload{string(doc), b64(f.signer.SignDER(t, doc, []int{1, 3, 14, 3, 2, 26}))}},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := f.verify(t, nil, mustJSON(t, c.p))
			wantRefused(t, err, c.reason)
		})
	}
}

func TestVerifyRefusesPolicy(t *testing.T) {
	f := newFixture(t)
	for _, c := range []struct {
		name, reason string
		doc          awsiidtest.Document
		cfg          func(*Config)
	}{
		{"unknown region", `region "eu-west-1" is not configured`, awsiidtest.NewDocument(account, "eu-west-1", instance, now), nil},
		{"account not allowed", "account 210987654321 is not in the allow-list", awsiidtest.NewDocument("210987654321", region, instance, now), nil},
		{"older than max_document_age", "more than max_document_age 30m0s", f.doc, func(c *Config) { c.MaxDocumentAge = 30 * time.Minute }},
		{"pendingTime in the future", "is in the future", awsiidtest.NewDocument(account, region, instance, now.Add(MaxClockSkew+time.Minute)), nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			g := *f
			g.doc = c.doc
			g.cfg.Regions = map[string][]*x509.Certificate{region: {f.signer.Cert}, "eu-west-2": {f.signer.Cert}}
			if c.cfg != nil {
				c.cfg(&g.cfg)
			}
			_, err := g.verify(t, nil, g.payload(t))
			wantRefused(t, err, c.reason)
		})
	}
	// Within max_document_age and within the skew: accepted.
	g := *f
	g.cfg.MaxDocumentAge = 2 * time.Hour
	g.doc = awsiidtest.NewDocument(account, region, instance, now.Add(MaxClockSkew-time.Second))
	if _, err := g.verify(t, nil, g.payload(t)); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyTrustOnFirstUse(t *testing.T) {
	f := newFixture(t)
	id := account + "/" + region + "/" + instance
	attested := &state{agents: map[string]node.AgentRecord{id: {AttestedAt: now.Add(-time.Hour)}}}
	banned := &state{agents: map[string]node.AgentRecord{id: {Banned: true}}}
	otherInstance := &state{agents: map[string]node.AgentRecord{account + "/" + region + "/i-0fffffffffffffff0": {}}}

	_, err := f.verify(t, attested, f.payload(t))
	wantRefused(t, err, "already attested")
	_, err = f.verify(t, banned, f.payload(t))
	wantRefused(t, err, "banned")
	if _, err := f.verify(t, otherInstance, f.payload(t)); err != nil {
		t.Fatalf("another instance's record refused this one: %v", err)
	}
	// A state that cannot answer: fail closed, and not as a refusal.
	_, err = f.verify(t, &state{err: errors.New("store unavailable")}, f.payload(t))
	wantMalformed(t, err, "store unavailable")

	f.cfg.AllowReattestation = true
	if _, err := f.verify(t, attested, f.payload(t)); err != nil {
		t.Fatalf("re-attestation allowed but refused: %v", err)
	}
	_, err = f.verify(t, banned, f.payload(t))
	wantRefused(t, err, "banned")
}

func TestVerifyMalformed(t *testing.T) {
	f := newFixture(t)
	doc := f.doc.JSON()
	sig := f.signer.Sign(t, doc)
	bad := f.doc
	bad.InstanceID = "i-../../x"
	for _, c := range []struct {
		name, payload, msg string
	}{
		{"not JSON", "not json", "not the aws_iid JSON evidence"},
		{"unknown field", `{"document":"x","rsa2048":"y","pkcs7":"z"}`, "unknown field"},
		{"trailing data", string(mustJSON(t, Payload{string(doc), sig})) + "{}", "data after"},
		{"no document", string(mustJSON(t, Payload{"", sig})), "no document"},
		{"no signature", string(mustJSON(t, Payload{string(doc), ""})), "no rsa2048"},
		{"oversized document", string(mustJSON(t, Payload{strings.Repeat(" ", MaxDocumentSize+1), sig})), "at most"},
		{"signature not base64", string(mustJSON(t, Payload{string(doc), "!!!"})), "not base64"},
		{"signature not PKCS#7", string(mustJSON(t, Payload{string(doc), b64([]byte("garbage"))})), "malformed rsa2048"},
		{"document not JSON", string(mustJSON(t, Payload{"<html>", sig})), "not JSON"},
		{"instance ID not an instance ID", string(mustJSON(t, Payload{string(bad.JSON()), f.signer.Sign(t, bad.JSON())})), "instanceId"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := f.verify(t, nil, []byte(c.payload))
			wantMalformed(t, err, c.msg)
		})
	}
}

func TestConfigValidate(t *testing.T) {
	f := newFixture(t)
	if err := f.cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		msg string
		mod func(*Config)
	}{
		{"no region", func(c *Config) { c.Regions = nil }},
		{"not an AWS region", func(c *Config) { c.Regions = map[string][]*x509.Certificate{"moon": {f.signer.Cert}} }},
		{"has no certificate", func(c *Config) { c.Regions = map[string][]*x509.Certificate{region: nil} }},
		{"allow-list is empty", func(c *Config) { c.Accounts = nil }},
		{"not an AWS account ID", func(c *Config) { c.Accounts = []string{"12"} }},
		{"negative", func(c *Config) { c.MaxDocumentAge = -time.Second }},
	} {
		cfg := f.cfg
		c.mod(&cfg)
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("Validate = %v, want %q", err, c.msg)
		}
		if _, err := NewVerifier(cfg); err == nil {
			t.Errorf("NewVerifier accepted a config with %s", c.msg)
		}
	}
	if err := DefaultConfig().Validate(); err == nil {
		t.Error("the default config (no region, no account) validates")
	}
}

func TestValidateSelector(t *testing.T) {
	for v, ok := range map[string]bool{
		"account:123456789012": true, "region:us-gov-west-1": true, "az:eu-central-1b": true,
		"instance_id:i-0123abcd": true, "image_id:ami-0123abcd": true, "instance_type:m5.xlarge": true,
		"account:12": false, "zone:us-east-1a": false, "instance_id": false, "instance_id:../x": false, "region:US-EAST-1": false,
	} {
		if err := ValidateSelector(v); (err == nil) != ok {
			t.Errorf("ValidateSelector(%q) = %v", v, err)
		}
	}
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
