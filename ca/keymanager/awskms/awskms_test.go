package awskms

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/ca/keymanager/internal/signtest"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/fakekms"
)

const testAccessKeyID = "AKIDSIGILTEST"

var testNow = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

// awsEnv points the AWS SDK at static test credentials and nothing else
// (no shared files, no instance metadata).
func awsEnv(t testing.TB) {
	t.Helper()
	dir := t.TempDir()
	t.Setenv("AWS_ACCESS_KEY_ID", testAccessKeyID)
	t.Setenv("AWS_SECRET_ACCESS_KEY", "test-secret-not-used-anywhere")
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_REGION", "")
	t.Setenv("AWS_DEFAULT_REGION", "")
	t.Setenv("AWS_CONFIG_FILE", dir+"/config")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", dir+"/credentials")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_ENDPOINT_URL", "")
	t.Setenv("AWS_ENDPOINT_URL_KMS", "")
}

// noBackoff retries at once, so tests do not wait.
type noBackoff struct{}

func (noBackoff) BackoffDelay(int, error) (time.Duration, error) { return 0, nil }

type fixture struct {
	fake  *fakekms.Server
	cfg   Config
	store *Store
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	awsEnv(t)
	fake := fakekms.New("eu-west-1", clock.NewFake(testNow).Now)
	t.Cleanup(fake.Close)
	fake.RequireAccessKeyID(testAccessKeyID)
	cfg := DefaultConfig()
	cfg.Region = "eu-west-1"
	cfg.Endpoint = fake.URL
	cfg.TrustDomain = spiffeid.RequireTrustDomainFromString("example.org")
	cfg.NodeName = "server-1"
	cfg.retryBackoff = noBackoff{}
	f := &fixture{fake: fake, cfg: cfg}
	f.store = f.open(t)
	return f
}

// open builds a new Store on the fixture's configuration, as a restarted
// server would.
func (f *fixture) open(t testing.TB) *Store {
	t.Helper()
	s, err := NewStore(context.Background(), f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func openKM(t testing.TB, s *Store, scope ca.KeyScope) *KeyManager {
	t.Helper()
	km, err := s.OpenKeyManager(context.Background(), scope)
	if err != nil {
		t.Fatal(err)
	}
	return km.(*KeyManager)
}

func TestGenerateGetSignPerKeyType(t *testing.T) {
	f := newFixture(t)
	km := openKM(t, f.store, ca.KeyScopeAuthorities)
	ctx := context.Background()
	for _, tc := range []struct {
		kt   ca.KeyType
		spec string
		bits int
	}{
		{ca.KeyTypeECP256, "ECC_NIST_P256", 256},
		{ca.KeyTypeECP384, "ECC_NIST_P384", 384},
		{ca.KeyTypeRSA2048, "RSA_2048", 2048},
	} {
		t.Run(string(tc.kt), func(t *testing.T) {
			id := "key-" + string(tc.kt)
			s, err := km.GenerateKey(ctx, id, tc.kt)
			if err != nil {
				t.Fatal(err)
			}
			switch pub := s.Public().(type) {
			case *ecdsa.PublicKey:
				if pub.Curve.Params().BitSize != tc.bits {
					t.Fatalf("curve size %d, want %d", pub.Curve.Params().BitSize, tc.bits)
				}
			case *rsa.PublicKey:
				if pub.N.BitLen() != tc.bits {
					t.Fatalf("RSA size %d, want %d", pub.N.BitLen(), tc.bits)
				}
			}
			signtest.SignVerify(t, s)

			keyID := f.fake.Aliases()[km.Alias(id)]
			k, ok := f.fake.Key(keyID)
			if !ok || k.Spec != tc.spec || k.State != fakekms.StateEnabled || k.Tags["sigil:alias"] != km.Alias(id) {
				t.Fatalf("KMS key behind %s = %+v (found %v), want an enabled %s key tagged with its alias", km.Alias(id), k, ok, tc.spec)
			}
			got, err := km.GetKey(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if !got.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(s.Public()) {
				t.Fatal("GetKey returned another key")
			}
		})
	}
	if n := f.fake.Calls("Sign"); n < 4 {
		t.Fatalf("the fake saw %d Sign calls: signatures were not made by KMS", n)
	}
}

func TestGetKeyAfterReopen(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	km := openKM(t, f.store, ca.KeyScopeAuthorities)
	s, err := km.GenerateKey(ctx, "x509-ca", ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	cl := openKM(t, f.store, ca.KeyScopeClusterIdentity)
	if _, err := cl.GetKey(ctx, "x509-ca"); !errors.Is(err, ca.ErrKeyNotFound) {
		t.Fatalf("another scope's GetKey: %v, want ErrKeyNotFound", err)
	}
	f.store.Close()

	// A restarted server finds the key through its alias.
	re := openKM(t, f.open(t), ca.KeyScopeAuthorities)
	got, err := re.GetKey(ctx, "x509-ca")
	if err != nil {
		t.Fatal(err)
	}
	if !got.Public().(*ecdsa.PublicKey).Equal(s.Public()) {
		t.Fatal("the reopened store found another key")
	}
	signtest.SignVerify(t, got)

	// Another node of the same account does not see it.
	other := *f
	other.cfg.NodeName = "server-2"
	if _, err := openKM(t, other.open(t), ca.KeyScopeAuthorities).GetKey(ctx, "x509-ca"); !errors.Is(err, ca.ErrKeyNotFound) {
		t.Fatalf("another node's GetKey: %v, want ErrKeyNotFound", err)
	}
}

func TestReplaceSchedulesOldKeyDeletion(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	km := openKM(t, f.store, ca.KeyScopeAuthorities)
	old, err := km.GenerateKey(ctx, "x509-ca", ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	alias := km.Alias("x509-ca")
	oldID := f.fake.Aliases()[alias]

	repl, err := km.GenerateKey(ctx, "x509-ca", ca.KeyTypeECP384)
	if err != nil {
		t.Fatal(err)
	}
	newID := f.fake.Aliases()[alias]
	if newID == oldID || newID == "" {
		t.Fatalf("alias %s still names %s after the replacement", alias, oldID)
	}
	ok, _ := f.fake.Key(oldID)
	if ok.State != fakekms.StatePendingDeletion || ok.PendingWindowInDays != PendingWindowInDays || !ok.DeletionDate.Equal(testNow.Add(7*24*time.Hour)) {
		t.Fatalf("old key = %+v, want pending deletion in 7 days", ok)
	}
	if nk, _ := f.fake.Key(newID); nk.State != fakekms.StateEnabled || nk.Spec != "ECC_NIST_P384" {
		t.Fatalf("new key = %+v", nk)
	}
	signtest.SignVerify(t, repl)
	// The old signer is bound to the old key, not to the alias: it fails
	// clearly rather than signing with the new key.
	d := sha256.Sum256([]byte("x"))
	if _, err := old.Sign(rand.Reader, d[:], crypto.SHA256); !errors.Is(err, ErrInvalidState) || !strings.HasPrefix(err.Error(), `awskms: sign with key "x509-ca"`) {
		t.Fatalf("signing with the replaced key: %v", err)
	}
	got, err := openKM(t, f.open(t), ca.KeyScopeAuthorities).GetKey(ctx, "x509-ca")
	if err != nil || !got.Public().(*ecdsa.PublicKey).Equal(repl.Public()) {
		t.Fatalf("GetKey after the replacement: %v", err)
	}
}

func TestDeleteKey(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	km := openKM(t, f.store, ca.KeyScopeAuthorities)
	if _, err := km.GenerateKey(ctx, "jwt-1", ca.KeyTypeECP256); err != nil {
		t.Fatal(err)
	}
	alias := km.Alias("jwt-1")
	keyID := f.fake.Aliases()[alias]
	if err := km.DeleteKey(ctx, "jwt-1"); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.fake.Aliases()[alias]; ok {
		t.Fatal("the alias survived DeleteKey")
	}
	if k, _ := f.fake.Key(keyID); k.State != fakekms.StatePendingDeletion || k.PendingWindowInDays != 7 {
		t.Fatalf("deleted key = %+v, want pending deletion in 7 days", k)
	}
	if _, err := km.GetKey(ctx, "jwt-1"); !errors.Is(err, ca.ErrKeyNotFound) {
		t.Fatalf("GetKey after DeleteKey: %v", err)
	}
	// Deleting again, or a key that never was, is not an error.
	if err := km.DeleteKey(ctx, "jwt-1"); err != nil {
		t.Fatal(err)
	}
	if err := km.DeleteKey(ctx, "never"); err != nil {
		t.Fatal(err)
	}
	if n := f.fake.Calls("ScheduleKeyDeletion"); n != 1 {
		t.Fatalf("ScheduleKeyDeletion called %d times, want 1", n)
	}
}

func TestDeleteKeyRetryAfterAliasFailure(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	km := openKM(t, f.store, ca.KeyScopeAuthorities)
	if _, err := km.GenerateKey(ctx, "k", ca.KeyTypeECP256); err != nil {
		t.Fatal(err)
	}
	f.fake.FailNext("DeleteAlias", 1, fakekms.FaultAccessDenied)
	if err := km.DeleteKey(ctx, "k"); !errors.Is(err, ErrAccessDenied) {
		t.Fatalf("DeleteKey with DeleteAlias denied: %v", err)
	}
	// The key is pending deletion, and GetKey says so clearly.
	if _, err := km.GetKey(ctx, "k"); !errors.Is(err, ErrInvalidState) || !strings.Contains(err.Error(), "PendingDeletion") {
		t.Fatalf("GetKey of a key pending deletion: %v", err)
	}
	if err := km.DeleteKey(ctx, "k"); err != nil {
		t.Fatalf("retried DeleteKey: %v", err)
	}
	if len(f.fake.Aliases()) != 0 {
		t.Fatalf("aliases left: %v", f.fake.Aliases())
	}
}

func TestServerErrorIsClear(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	km := openKM(t, f.store, ca.KeyScopeAuthorities)
	s, err := km.GenerateKey(ctx, "x509-ca", ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("x"))

	// One 500 is retried away by the SDK.
	f.fake.FailNext("Sign", 1, fakekms.FaultInternal)
	before := f.fake.Calls("Sign")
	if _, err := s.Sign(rand.Reader, d[:], crypto.SHA256); err != nil {
		t.Fatalf("sign after one 500: %v", err)
	}
	if n := f.fake.Calls("Sign") - before; n != 2 {
		t.Fatalf("%d Sign calls, want 2 (one retry)", n)
	}

	// 5xx on every attempt: a clear error after the SDK's 3 attempts.
	f.fake.FailNext("Sign", 3, fakekms.FaultUnavailable)
	before = f.fake.Calls("Sign")
	_, err = s.Sign(rand.Reader, d[:], crypto.SHA256)
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("sign with KMS down: %v, want ErrUnavailable", err)
	}
	msg := err.Error()
	for _, want := range []string{`awskms: sign with key "x509-ca"`, "AWS KMS is unavailable", "503", "ServiceUnavailableException"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not contain %q", msg, want)
		}
	}
	t.Logf("error: %s", msg)
	if strings.Count(msg, "awskms") != 1 {
		t.Errorf("error %q names the package more than once", msg)
	}
	if n := f.fake.Calls("Sign") - before; n != 3 {
		t.Fatalf("%d Sign calls, want 3 attempts", n)
	}

	// The same for GetKey and GenerateKey.
	f.fake.FailNext("DescribeKey", 3, fakekms.FaultInternal)
	_, err = openKM(t, f.open(t), ca.KeyScopeAuthorities).GetKey(ctx, "x509-ca")
	if !errors.Is(err, ErrUnavailable) || errors.Is(err, ca.ErrKeyNotFound) || !strings.HasPrefix(err.Error(), `awskms: looking up key "x509-ca"`) {
		t.Fatalf("GetKey with KMS down: %v", err)
	}
	f.fake.FailNext("CreateKey", 3, fakekms.FaultInternal)
	if _, err := km.GenerateKey(ctx, "other", ca.KeyTypeECP256); !errors.Is(err, ErrUnavailable) || !strings.HasPrefix(err.Error(), `awskms: creating key "other"`) {
		t.Fatalf("GenerateKey with KMS down: %v", err)
	}
}

func TestThrottling(t *testing.T) {
	f := newFixture(t)
	f.cfg.RetryMaxAttempts = 2
	ctx := context.Background()
	km := openKM(t, f.open(t), ca.KeyScopeAuthorities)
	s, err := km.GenerateKey(ctx, "x509-ca", ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("x"))
	f.fake.FailNext("Sign", 2, fakekms.FaultThrottling)
	before := f.fake.Calls("Sign")
	_, err = s.Sign(rand.Reader, d[:], crypto.SHA256)
	if !errors.Is(err, ErrThrottled) || !strings.Contains(err.Error(), "ThrottlingException") {
		t.Fatalf("sign while throttled: %v, want ErrThrottled", err)
	}
	if n := f.fake.Calls("Sign") - before; n != 2 {
		t.Fatalf("%d Sign calls, want 2 (RetryMaxAttempts)", n)
	}
	if _, err := s.Sign(rand.Reader, d[:], crypto.SHA256); err != nil {
		t.Fatalf("sign once the throttling stopped: %v", err)
	}
}

func TestAccessDenied(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	km := openKM(t, f.store, ca.KeyScopeAuthorities)
	f.fake.FailNext("CreateKey", 1, fakekms.FaultAccessDenied)
	before := f.fake.Calls("CreateKey")
	_, err := km.GenerateKey(ctx, "x509-ca", ca.KeyTypeECP256)
	if !errors.Is(err, ErrAccessDenied) || !strings.Contains(err.Error(), "not authorized") {
		t.Fatalf("GenerateKey denied: %v", err)
	}
	if n := f.fake.Calls("CreateKey") - before; n != 1 {
		t.Fatalf("an access denial was retried (%d calls)", n)
	}

	// Wrong credentials.
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDWRONG")
	_, err = openKM(t, f.open(t), ca.KeyScopeAuthorities).GetKey(ctx, "x509-ca")
	if !errors.Is(err, ErrAccessDenied) || !strings.Contains(err.Error(), "UnrecognizedClientException") {
		t.Fatalf("GetKey with wrong credentials: %v", err)
	}
}

func TestUnknownKey(t *testing.T) {
	f := newFixture(t)
	km := openKM(t, f.store, ca.KeyScopeAuthorities)
	_, err := km.GetKey(context.Background(), "absent")
	if !errors.Is(err, ca.ErrKeyNotFound) || !strings.Contains(err.Error(), km.Alias("absent")) || !strings.HasPrefix(err.Error(), "awskms: ") {
		t.Fatalf("GetKey of an unknown key: %v", err)
	}
	if _, err := km.GetKey(context.Background(), ""); err == nil {
		t.Fatal("an empty id was accepted")
	}
}

func TestUnsupportedKeyType(t *testing.T) {
	f := newFixture(t)
	km := openKM(t, f.store, ca.KeyScopeAuthorities)
	_, err := km.GenerateKey(context.Background(), "k", "ed25519")
	if err == nil || !strings.Contains(err.Error(), `awskms: unsupported key type "ed25519"`) {
		t.Fatalf("GenerateKey ed25519: %v", err)
	}
	if n := f.fake.Calls("CreateKey"); n != 0 {
		t.Fatalf("CreateKey called %d times for an unsupported type", n)
	}
}

func TestAliasFailureSchedulesNewKeyDeletion(t *testing.T) {
	f := newFixture(t)
	km := openKM(t, f.store, ca.KeyScopeAuthorities)
	f.fake.FailNext("CreateAlias", 1, fakekms.FaultAccessDenied)
	_, err := km.GenerateKey(context.Background(), "k", ca.KeyTypeECP256)
	if !errors.Is(err, ErrAccessDenied) || !strings.Contains(err.Error(), "creating alias") {
		t.Fatalf("GenerateKey with CreateAlias denied: %v", err)
	}
	ids := f.fake.Keys()
	if len(ids) != 1 {
		t.Fatalf("keys = %v", ids)
	}
	if k, _ := f.fake.Key(ids[0]); k.State != fakekms.StatePendingDeletion {
		t.Fatalf("the orphaned new key is %s, want PendingDeletion", k.State)
	}
}

func TestClosedStore(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	km := openKM(t, f.store, ca.KeyScopeAuthorities)
	s, err := km.GenerateKey(ctx, "k", ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.store.Close(); err != nil {
		t.Fatal(err)
	}
	calls := f.fake.Calls("Sign")
	d := sha256.Sum256([]byte("x"))
	if _, err := s.Sign(rand.Reader, d[:], crypto.SHA256); !errors.Is(err, ErrClosed) {
		t.Fatalf("sign after Close: %v", err)
	}
	if _, err := km.GenerateKey(ctx, "k2", ca.KeyTypeECP256); !errors.Is(err, ErrClosed) {
		t.Fatalf("GenerateKey after Close: %v", err)
	}
	if _, err := f.store.OpenKeyManager(ctx, ca.KeyScopeAuthorities); !errors.Is(err, ErrClosed) {
		t.Fatalf("OpenKeyManager after Close: %v", err)
	}
	if f.fake.Calls("Sign") != calls {
		t.Fatal("a closed store still called KMS")
	}
}

func TestStoreConfig(t *testing.T) {
	awsEnv(t)
	base := DefaultConfig()
	base.Region = "eu-west-1"
	base.TrustDomain = spiffeid.RequireTrustDomainFromString("example.org")
	base.NodeName = "n1"
	for name, tc := range map[string]struct {
		mod  func(*Config)
		want string
	}{
		"no node":        {func(c *Config) { c.NodeName = "" }, "node name is not set"},
		"no td":          {func(c *Config) { c.TrustDomain = spiffeid.TrustDomain{} }, "trust domain is not set"},
		"bad prefix":     {func(c *Config) { c.AliasPrefix = "sigil" }, "alias prefix"},
		"aws prefix":     {func(c *Config) { c.AliasPrefix = "alias/aws/sigil" }, "AWS reserves"},
		"http endpoint":  {func(c *Config) { c.Endpoint = "http://kms.example.com" }, "only allowed to a loopback host"},
		"no region":      {func(c *Config) { c.Region = "" }, "no AWS region"},
		"missing prof":   {func(c *Config) { c.Profile = "nope" }, "loading the AWS configuration"},
		"negative retry": {func(c *Config) { c.RetryMaxAttempts = -1 }, "negative"},
	} {
		c := base
		tc.mod(&c)
		if _, err := NewStore(context.Background(), c); err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "awskms: ") {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
	s, err := NewStore(context.Background(), base)
	if err != nil {
		t.Fatal(err)
	}
	if !s.Persistent() {
		t.Error("not persistent")
	}
	if _, err := s.OpenKeyManager(context.Background(), "other"); err == nil {
		t.Error("an unknown scope was opened")
	}
	// AWS_REGION stands in for region.
	t.Setenv("AWS_REGION", "us-east-2")
	c := base
	c.Region = ""
	if _, err := NewStore(context.Background(), c); err != nil {
		t.Errorf("region from AWS_REGION: %v", err)
	}
}

func TestUnreachableEndpoint(t *testing.T) {
	f := newFixture(t)
	f.fake.Close()
	_, err := openKM(t, f.store, ca.KeyScopeAuthorities).GetKey(context.Background(), "x509-ca")
	if !errors.Is(err, ErrUnavailable) || errors.Is(err, ca.ErrKeyNotFound) || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("GetKey with KMS unreachable: %v", err)
	}
}

func TestSignRefusesUnsupportedHash(t *testing.T) {
	f := newFixture(t)
	s, err := openKM(t, f.store, ca.KeyScopeAuthorities).GenerateKey(context.Background(), "k", ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	before := f.fake.Calls("Sign")
	_, err = s.Sign(rand.Reader, make([]byte, 20), crypto.SHA1)
	if err == nil || !strings.HasPrefix(err.Error(), `awskms: sign with key "k"`) || strings.Count(err.Error(), "awskms") != 1 {
		t.Fatalf("sign with SHA-1: %v", err)
	}
	if f.fake.Calls("Sign") != before {
		t.Fatal("an unsupported hash reached KMS")
	}
}

func TestConcurrentUse(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	km := openKM(t, f.store, ca.KeyScopeAuthorities)
	s, err := km.GenerateKey(ctx, "x509-ca", ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 16)
	for i := range 8 {
		go func() {
			d := sha256.Sum256([]byte{byte(i)})
			sig, err := s.Sign(rand.Reader, d[:], crypto.SHA256)
			if err == nil && !ecdsa.VerifyASN1(s.Public().(*ecdsa.PublicKey), d[:], sig) {
				err = errors.New("bad signature")
			}
			errs <- err
		}()
		go func() {
			_, err := km.GetKey(ctx, "x509-ca")
			errs <- err
		}()
	}
	for range 16 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

func TestReplaceLogsFailedDeletion(t *testing.T) {
	f := newFixture(t)
	core, logs := observer.New(zap.WarnLevel)
	f.cfg.Logger = zap.New(core)
	ctx := context.Background()
	km := openKM(t, f.open(t), ca.KeyScopeAuthorities)
	if _, err := km.GenerateKey(ctx, "x509-ca", ca.KeyTypeECP256); err != nil {
		t.Fatal(err)
	}
	oldID := f.fake.Aliases()[km.Alias("x509-ca")]
	f.fake.FailNext("ScheduleKeyDeletion", 1, fakekms.FaultAccessDenied)
	s, err := km.GenerateKey(ctx, "x509-ca", ca.KeyTypeECP256)
	if err != nil {
		t.Fatalf("the replacement failed because the old key could not be scheduled for deletion: %v", err)
	}
	signtest.SignVerify(t, s)
	if k, _ := f.fake.Key(oldID); k.State != fakekms.StateEnabled {
		t.Fatalf("old key state %s", k.State)
	}
	entries := logs.FilterField(zap.String("key_id", oldID)).All()
	if len(entries) != 1 || !strings.Contains(entries[0].Message, "schedule it by hand") {
		t.Fatalf("log entries for the old key: %v", logs.All())
	}
}

func TestCancelledGenerateLeavesNoKey(t *testing.T) {
	f := newFixture(t)
	km := openKM(t, f.store, ca.KeyScopeAuthorities)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The caller gives up while the alias is looked up, after the key was
	// created.
	f.fake.OnRequest("DescribeKey", cancel)
	if _, err := km.GenerateKey(ctx, "k", ca.KeyTypeECP256); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled GenerateKey: %v", err)
	}
	ids := f.fake.Keys()
	if len(ids) != 1 {
		t.Fatalf("keys = %v", ids)
	}
	if k, _ := f.fake.Key(ids[0]); k.State != fakekms.StatePendingDeletion {
		t.Fatalf("the key of a cancelled GenerateKey is %s, want PendingDeletion", k.State)
	}
	if len(f.fake.Aliases()) != 0 {
		t.Fatalf("aliases = %v", f.fake.Aliases())
	}
}
