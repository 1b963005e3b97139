// Package awskms is a ca.KeyStore whose keys live in AWS KMS: each key a
// server generates is a KMS key (key spec ECC_NIST_P256, ECC_NIST_P384 or
// RSA_2048, key usage SIGN_VERIFY) that never leaves KMS; the server keeps
// only its public key and asks KMS for every signature (Sign with message
// type DIGEST). Signing goes through go.step.sm/crypto/kms/awskms; creating
// keys, moving aliases and scheduling deletion use the AWS SDK's KMS client
// directly.
//
// A key is found again, after a restart, through an alias per slot:
//
//	<alias_prefix>/<trust domain>/<node name>/<scope>/<key id>
//
// (alias_prefix defaults to alias/sigil; see AliasName for how each element
// is escaped to the alias charset [a-zA-Z0-9/_-] and kept within 256
// characters), so several servers, and several trust domains, can share
// one account and region. GenerateKey for an id that already has a key
// creates a new KMS key, moves the alias to it and schedules the old key's
// deletion; DeleteKey schedules the deletion of the key and removes its
// alias. KMS never deletes a key at once: deletion is scheduled with a
// waiting period of 7 days (the shortest KMS allows), during which an
// operator can cancel it.
//
// Credentials come from the standard AWS environment and shared
// configuration (environment variables, ~/.aws files with an optional
// profile, web identity, instance or container roles), never from Sigil's
// configuration. A KMS failure (throttling or server errors still after the
// SDK's retries, access denied, a disabled key) makes GenerateKey, GetKey
// and Sign fail with an error prefixed "awskms:" that wraps ErrThrottled,
// ErrUnavailable, ErrAccessDenied or ErrInvalidState; the key manager never
// falls back to another store.
//
// Security: the private keys never exist outside KMS, so an attacker with
// root on a server obtains no key material, neither from disk nor from
// memory; but with the server's AWS credentials (which root can read or use
// through the instance role) they can have KMS sign anything with the
// server's keys for as long as those credentials and the key policy allow,
// and can schedule the keys' deletion. After a compromise, revoke the
// credentials (or the role's access in the key policy), force a CA rotation
// so that new keys are created, and let the old keys' deletion complete.
package awskms

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	stepawskms "go.step.sm/crypto/kms/awskms"
	"go.uber.org/zap"

	"github.com/sigil-id/sigil/ca"
)

// DefaultAliasPrefix is the default alias_prefix.
const DefaultAliasPrefix = "alias/sigil"

// PendingWindowInDays is the waiting period, in days, of the deletions
// this package schedules: the shortest KMS allows.
const PendingWindowInDays = 7

// cleanupTimeout bounds the scheduling of an unused key's deletion.
const cleanupTimeout = 30 * time.Second

// maxDescriptionLength is the longest description KMS accepts.
const maxDescriptionLength = 8192

// Config configures a Store.
type Config struct {
	// Region is the AWS region of the keys. Empty: the region of the AWS
	// environment or shared configuration (AWS_REGION, the profile); one
	// of them must give one.
	Region string
	// Endpoint overrides the KMS endpoint (https://host[:port]; plain
	// http only to a loopback host). Empty: the region's endpoint.
	Endpoint string
	// Profile selects a profile of the shared AWS configuration. Empty:
	// AWS_PROFILE or the default profile.
	Profile string
	// AliasPrefix prefixes every alias; see AliasName.
	AliasPrefix string
	// TrustDomain and NodeName name this server's keys.
	TrustDomain spiffeid.TrustDomain
	NodeName    string
	// RetryMaxAttempts is how many times the SDK tries a call that fails
	// with a retryable error (throttling, 5xx, network). 0: the SDK's
	// default (3).
	RetryMaxAttempts int
	// Logger receives warnings (an old key whose deletion could not be
	// scheduled). Nil: no logging.
	Logger *zap.Logger

	// retryBackoff replaces the SDK's backoff between retries (tests).
	retryBackoff retry.BackoffDelayer
}

// DefaultConfig returns a Config with the default alias prefix; the trust
// domain and node name must still be set.
func DefaultConfig() Config {
	return Config{AliasPrefix: DefaultAliasPrefix}
}

// Validate reports what is wrong with c, if anything.
func (c Config) Validate() error {
	if c.TrustDomain.IsZero() {
		return errors.New("awskms: the trust domain is not set")
	}
	if c.NodeName == "" {
		return errors.New("awskms: the server's node name is not set: it names the server's keys in KMS")
	}
	if err := checkAliasPrefix(c.AliasPrefix); err != nil {
		return fmt.Errorf("awskms: alias prefix: %w", err)
	}
	if c.Endpoint != "" {
		if _, err := checkEndpoint(c.Endpoint); err != nil {
			return fmt.Errorf("awskms: endpoint: %w", err)
		}
	}
	if c.RetryMaxAttempts < 0 {
		return fmt.Errorf("awskms: retry max attempts %d is negative", c.RetryMaxAttempts)
	}
	return nil
}

// client is the KMS client of a Store: the SDK's client, refused once the
// store is closed. It implements stepawskms.KeyManagementClient.
type client struct {
	kms    *kms.Client
	closed *atomic.Bool
}

func (c client) check() error {
	if c.closed.Load() {
		return ErrClosed
	}
	return nil
}

func (c client) GetPublicKey(ctx context.Context, in *kms.GetPublicKeyInput, opts ...func(*kms.Options)) (*kms.GetPublicKeyOutput, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	return c.kms.GetPublicKey(ctx, in, opts...)
}

func (c client) CreateKey(ctx context.Context, in *kms.CreateKeyInput, opts ...func(*kms.Options)) (*kms.CreateKeyOutput, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	return c.kms.CreateKey(ctx, in, opts...)
}

func (c client) CreateAlias(ctx context.Context, in *kms.CreateAliasInput, opts ...func(*kms.Options)) (*kms.CreateAliasOutput, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	return c.kms.CreateAlias(ctx, in, opts...)
}

func (c client) UpdateAlias(ctx context.Context, in *kms.UpdateAliasInput, opts ...func(*kms.Options)) (*kms.UpdateAliasOutput, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	return c.kms.UpdateAlias(ctx, in, opts...)
}

func (c client) DeleteAlias(ctx context.Context, in *kms.DeleteAliasInput, opts ...func(*kms.Options)) (*kms.DeleteAliasOutput, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	return c.kms.DeleteAlias(ctx, in, opts...)
}

func (c client) DescribeKey(ctx context.Context, in *kms.DescribeKeyInput, opts ...func(*kms.Options)) (*kms.DescribeKeyOutput, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	return c.kms.DescribeKey(ctx, in, opts...)
}

func (c client) ScheduleKeyDeletion(ctx context.Context, in *kms.ScheduleKeyDeletionInput, opts ...func(*kms.Options)) (*kms.ScheduleKeyDeletionOutput, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	return c.kms.ScheduleKeyDeletion(ctx, in, opts...)
}

func (c client) Sign(ctx context.Context, in *kms.SignInput, opts ...func(*kms.Options)) (*kms.SignOutput, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	return c.kms.Sign(ctx, in, opts...)
}

func (c client) Decrypt(ctx context.Context, in *kms.DecryptInput, opts ...func(*kms.Options)) (*kms.DecryptOutput, error) {
	return nil, errors.New("decryption is not used by this key manager")
}

var _ stepawskms.KeyManagementClient = client{}

// Store is the AWS KMS key manager as a server opens it (ca.KeyStore): one
// KeyManager per scope, all on one KMS client. It implements io.Closer:
// once closed, its key managers and signers fail with ErrClosed.
type Store struct {
	cfg    Config
	client client
	closed atomic.Bool
}

var (
	_ ca.KeyStore = (*Store)(nil)
	_ io.Closer   = (*Store)(nil)
)

// NewStore validates cfg and builds the KMS client from it and the AWS
// environment and shared configuration. It reads configuration and
// credential sources but makes no request to KMS.
func NewStore(ctx context.Context, cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var opts []func(*config.LoadOptions) error
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	if cfg.Profile != "" {
		opts = append(opts, config.WithSharedConfigProfile(cfg.Profile))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("awskms: loading the AWS configuration: %w", err)
	}
	if awsCfg.Region == "" {
		return nil, errors.New("awskms: no AWS region: set region in the key_manager block, AWS_REGION, or a region in the AWS profile")
	}
	s := &Store{cfg: cfg}
	s.client = client{
		closed: &s.closed,
		kms: kms.NewFromConfig(awsCfg, func(o *kms.Options) {
			if cfg.Endpoint != "" {
				ep, _ := checkEndpoint(cfg.Endpoint) // validated above
				o.BaseEndpoint = aws.String(ep)
			}
			o.Retryer = retry.NewStandard(func(so *retry.StandardOptions) {
				if cfg.RetryMaxAttempts > 0 {
					so.MaxAttempts = cfg.RetryMaxAttempts
				}
				if cfg.retryBackoff != nil {
					so.Backoff = cfg.retryBackoff
				}
			})
		}),
	}
	return s, nil
}

// OpenKeyManager returns the KeyManager of scope (authorities or
// cluster_identity). It makes no request to KMS.
func (s *Store) OpenKeyManager(_ context.Context, scope ca.KeyScope) (ca.KeyManager, error) {
	switch scope {
	case ca.KeyScopeAuthorities, ca.KeyScopeClusterIdentity:
	default:
		return nil, fmt.Errorf("awskms: unknown key scope %q", scope)
	}
	if s.closed.Load() {
		return nil, fmt.Errorf("awskms: %w", ErrClosed)
	}
	return &KeyManager{store: s, scope: scope, cache: map[string]*signer{}}, nil
}

// Persistent reports true: keys live in KMS.
func (s *Store) Persistent() bool { return true }

// Close makes the store's key managers and signers fail from now on. It
// neither deletes nor disables any key.
func (s *Store) Close() error {
	s.closed.Store(true)
	return nil
}

// KeyManager holds the keys of one scope of a Store. It is safe for
// concurrent use; the signers of keys it has looked up are cached.
type KeyManager struct {
	store *Store
	scope ca.KeyScope

	mu    sync.Mutex
	cache map[string]*signer
}

var (
	_ ca.KeyManager = (*KeyManager)(nil)
	_ ca.KeyDeleter = (*KeyManager)(nil)
)

// Alias returns the alias of the key named id.
func (m *KeyManager) Alias(id string) string {
	c := m.store.cfg
	return AliasName(c.AliasPrefix, c.TrustDomain.Name(), c.NodeName, string(m.scope), id)
}

func checkID(id string) error {
	if id == "" {
		return errors.New("awskms: key id is empty")
	}
	return nil
}

func keySpec(kt ca.KeyType) (types.KeySpec, error) {
	switch kt {
	case ca.KeyTypeECP256:
		return types.KeySpecEccNistP256, nil
	case ca.KeyTypeECP384:
		return types.KeySpecEccNistP384, nil
	case ca.KeyTypeRSA2048:
		return types.KeySpecRsa2048, nil
	}
	return "", fmt.Errorf("awskms: unsupported key type %q (want %q, %q or %q)", string(kt), ca.KeyTypeECP256, ca.KeyTypeECP384, ca.KeyTypeRSA2048)
}

// describe returns the metadata of the key the alias names, or nil if the
// alias does not exist.
func (m *KeyManager) describe(ctx context.Context, alias string) (*types.KeyMetadata, error) {
	out, err := m.store.client.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(alias)})
	if isNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if out.KeyMetadata == nil || out.KeyMetadata.KeyId == nil {
		return nil, errors.New("DescribeKey returned no key metadata")
	}
	return out.KeyMetadata, nil
}

// GenerateKey creates a KMS key of type kt for id and points the id's
// alias at it. When the alias already named a key, that key's deletion is
// scheduled (PendingWindowInDays); if scheduling fails, the new key is
// still returned and the failure logged, since the old key no longer
// serves. If the alias cannot be set, the new key's deletion is scheduled
// and an error returned.
func (m *KeyManager) GenerateKey(ctx context.Context, id string, kt ca.KeyType) (crypto.Signer, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	spec, err := keySpec(kt)
	if err != nil {
		return nil, err
	}
	alias := m.Alias(id)
	c := m.store.cfg

	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.cache, id)

	desc := fmt.Sprintf("Sigil %s key %q of server %q in trust domain %q", m.scope, id, c.NodeName, c.TrustDomain.Name())
	if len(desc) > maxDescriptionLength {
		desc = desc[:maxDescriptionLength]
	}
	out, err := m.store.client.CreateKey(ctx, &kms.CreateKeyInput{
		KeySpec:     spec,
		KeyUsage:    types.KeyUsageTypeSignVerify,
		Description: aws.String(desc),
		Tags:        []types.Tag{{TagKey: aws.String("sigil:alias"), TagValue: aws.String(alias)}},
	})
	if err != nil {
		return nil, wrapf(err, "creating key %q (%s)", id, spec)
	}
	if out.KeyMetadata == nil || out.KeyMetadata.KeyId == nil {
		return nil, fmt.Errorf("awskms: creating key %q: CreateKey returned no key id", id)
	}
	newID := *out.KeyMetadata.KeyId

	s, err := m.newSigner(id, newID)
	if err == nil {
		err = m.pointAlias(ctx, id, alias, newID)
	}
	if err != nil {
		m.scheduleDeletion(ctx, newID, "the new key of "+alias+", which could not be put in place")
		return nil, err
	}
	m.cache[id] = s
	return s, nil
}

// pointAlias points alias at keyID, scheduling the deletion of the key it
// named before.
func (m *KeyManager) pointAlias(ctx context.Context, id, alias, keyID string) error {
	old, err := m.describe(ctx, alias)
	if err != nil {
		return wrapf(err, "looking up alias %s of key %q", alias, id)
	}
	if old == nil {
		_, err = m.store.client.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String(alias), TargetKeyId: aws.String(keyID)})
		var exists *types.AlreadyExistsException
		if !errors.As(err, &exists) {
			if err != nil {
				return wrapf(err, "creating alias %s for key %q", alias, id)
			}
			return nil
		}
		// Created meanwhile by someone else: move it, as below.
	}
	if _, err := m.store.client.UpdateAlias(ctx, &kms.UpdateAliasInput{AliasName: aws.String(alias), TargetKeyId: aws.String(keyID)}); err != nil {
		return wrapf(err, "moving alias %s to the new key of %q", alias, id)
	}
	if old != nil && *old.KeyId != keyID && old.KeyState != types.KeyStatePendingDeletion {
		m.scheduleDeletion(ctx, *old.KeyId, "the replaced key of "+alias)
	}
	return nil
}

// scheduleDeletion schedules keyID's deletion, logging a failure: it is
// used where the key no longer serves and the operation's outcome does not
// depend on it.
func (m *KeyManager) scheduleDeletion(ctx context.Context, keyID, what string) {
	// Even when ctx is done: the key must not be left behind.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	_, err := m.store.client.ScheduleKeyDeletion(ctx, &kms.ScheduleKeyDeletionInput{KeyId: aws.String(keyID), PendingWindowInDays: aws.Int32(PendingWindowInDays)})
	if err != nil && m.store.cfg.Logger != nil {
		m.store.cfg.Logger.Warn("awskms: could not schedule the deletion of a KMS key no longer in use; schedule it by hand",
			zap.String("key_id", keyID), zap.String("key", what), zap.Error(classify(stripStepPrefix(err))))
	}
}

func (m *KeyManager) newSigner(id, keyID string) (*signer, error) {
	inner, err := stepawskms.NewSigner(m.store.client, keyID)
	if err != nil {
		return nil, wrapf(err, "public key of key %q (KMS key %s)", id, keyID)
	}
	return &signer{inner: inner, id: id, keyID: keyID}, nil
}

// GetKey returns the key id's alias names, or an error wrapping
// ca.ErrKeyNotFound if there is no such alias. A key that is disabled or
// pending deletion is an error wrapping ErrInvalidState.
func (m *KeyManager) GetKey(ctx context.Context, id string) (crypto.Signer, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	alias := m.Alias(id)
	m.mu.Lock()
	defer m.mu.Unlock()
	if s, ok := m.cache[id]; ok {
		return s, nil
	}
	md, err := m.describe(ctx, alias)
	if err != nil {
		return nil, wrapf(err, "looking up key %q (alias %s)", id, alias)
	}
	if md == nil {
		return nil, fmt.Errorf("awskms: key %q (alias %s): %w", id, alias, ca.ErrKeyNotFound)
	}
	if md.KeyState != types.KeyStateEnabled {
		return nil, fmt.Errorf("awskms: key %q (alias %s) is KMS key %s in state %s: %w", id, alias, *md.KeyId, md.KeyState, ErrInvalidState)
	}
	if md.KeyUsage != types.KeyUsageTypeSignVerify {
		return nil, fmt.Errorf("awskms: key %q (alias %s) is KMS key %s, whose usage is %s, not SIGN_VERIFY", id, alias, *md.KeyId, md.KeyUsage)
	}
	s, err := m.newSigner(id, *md.KeyId)
	if err != nil {
		return nil, err
	}
	m.cache[id] = s
	return s, nil
}

// DeleteKey schedules the deletion of the key id's alias names
// (PendingWindowInDays) and removes the alias. A missing alias is not an
// error; neither is a key already pending deletion.
func (m *KeyManager) DeleteKey(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	alias := m.Alias(id)
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.cache, id)
	md, err := m.describe(ctx, alias)
	if err != nil {
		return wrapf(err, "looking up key %q (alias %s)", id, alias)
	}
	if md == nil {
		return nil
	}
	// Deletion first, alias second: when the alias cannot be removed, a
	// retry finds the key pending deletion and removes the alias.
	if md.KeyState != types.KeyStatePendingDeletion {
		_, err := m.store.client.ScheduleKeyDeletion(ctx, &kms.ScheduleKeyDeletionInput{KeyId: md.KeyId, PendingWindowInDays: aws.Int32(PendingWindowInDays)})
		if err != nil {
			return wrapf(err, "scheduling the deletion of key %q (KMS key %s)", id, *md.KeyId)
		}
	}
	if _, err := m.store.client.DeleteAlias(ctx, &kms.DeleteAliasInput{AliasName: aws.String(alias)}); err != nil && !isNotFound(err) {
		return wrapf(err, "deleting alias %s of key %q", alias, id)
	}
	return nil
}

// signer is a key in KMS: go.step.sm/crypto's signer with this package's
// errors.
type signer struct {
	inner *stepawskms.Signer
	id    string
	keyID string
}

// Public returns the key's public key.
func (s *signer) Public() crypto.PublicKey { return s.inner.Public() }

// Sign has KMS sign digest (message type DIGEST).
func (s *signer) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	sig, err := s.inner.Sign(rand, digest, opts)
	if err != nil {
		return nil, wrapf(err, "sign with key %q (KMS key %s)", s.id, s.keyID)
	}
	return sig, nil
}
