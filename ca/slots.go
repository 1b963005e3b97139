package ca

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sigil-id/sigil/internal/atomicfile"
)

// Publisher writes authorities to the replicated trust bundle. Both calls
// return once the write is committed.
type Publisher interface {
	// Publish adds or replaces the slot's authority (with its tainted
	// flag) in the bundle.
	Publish(ctx context.Context, s Slot) error
	// Unpublish removes the slot's authority from the bundle.
	Unpublish(ctx context.Context, s Slot) error
}

// RootPublisher is implemented by a Publisher that can record the roots of
// an upstream authority in the bundle; a Manager whose CA config has an
// Upstream requires it for X.509 keys.
type RootPublisher interface {
	// PublishUpstreamRoots adds roots to the bundle's upstream roots and
	// returns once the write is committed.
	PublishUpstreamRoots(ctx context.Context, roots []*x509.Certificate) error
}

// DefaultUpstreamTimeout bounds one MintX509CA call to the upstream
// authority.
const DefaultUpstreamTimeout = 30 * time.Second

// ManagerConfig configures a Manager.
type ManagerConfig struct {
	Kind SlotKind
	// CA carries the trust domain, server ID, key manager, key type,
	// clock, the key lifetime (CATTL, for both kinds) and, for X.509, the
	// SVID defaults.
	CA Config
	// JWTSVIDTTL is the default JWT-SVID lifetime (JWT slots).
	JWTSVIDTTL time.Duration
	// Propagation is the delay between publishing a key and activating
	// it; 0 means DefaultPropagation(CATTL).
	Propagation time.Duration
	// StatePath is where the slot state (public data only) is persisted;
	// "" keeps it in memory.
	StatePath string
	Publisher Publisher
	// UpstreamTimeout bounds one MintX509CA call; 0 means
	// DefaultUpstreamTimeout.
	UpstreamTimeout time.Duration
}

// Event reports one rotation step a Manager took or tried.
type Event struct {
	Action ActionKind
	Slot   Slot
	Err    error
}

// slot is a Slot with its key and signer.
type slot struct {
	Slot
	signer crypto.Signer
	x509   *CA
	jwt    *JWTSigner
}

// Manager keeps one server's keys of one kind in prepared, active and
// retired slots, rotates them on the Plan schedule, and gives the active
// signer to the issuing code. It is safe for concurrent use; signing
// never waits for rotation.
type Manager struct {
	cfg    ManagerConfig
	policy Policy

	mu      sync.Mutex // serializes changes
	slots   []*slot
	nextSeq int
	notes   []string
	// pending is a key generated for a preparation whose upstream
	// signature failed: the next attempt reuses it rather than making a
	// key in the key manager each time. upstreamFailures counts the
	// consecutive failures, for the retry backoff.
	pending          *pendingKey
	upstreamFailures int
	upstreamRetryAt  time.Time

	active atomic.Pointer[slot]
}

type pendingKey struct {
	seq    int
	keyID  string
	signer crypto.Signer
}

type stateFile struct {
	Kind    SlotKind `json:"kind"`
	NextSeq int      `json:"next_seq"`
	Slots   []Slot   `json:"slots"`
}

// NewManager loads the persisted slots whose keys are still in the key
// manager. It does not rotate: call Tick.
func NewManager(ctx context.Context, cfg ManagerConfig) (*Manager, error) {
	if cfg.Kind != KindX509 && cfg.Kind != KindJWT {
		return nil, fmt.Errorf("ca: unknown slot kind %q", cfg.Kind)
	}
	if err := cfg.CA.Validate(); err != nil {
		return nil, err
	}
	if cfg.Publisher == nil {
		return nil, errors.New("ca: slot manager needs a publisher")
	}
	if cfg.JWTSVIDTTL <= 0 {
		cfg.JWTSVIDTTL = DefaultJWTSVIDTTL
	}
	if cfg.Propagation < 0 {
		return nil, fmt.Errorf("ca: propagation delay %v is negative", cfg.Propagation)
	}
	if cfg.Propagation == 0 {
		cfg.Propagation = DefaultPropagation(cfg.CA.CATTL)
	}
	if cfg.UpstreamTimeout <= 0 {
		cfg.UpstreamTimeout = DefaultUpstreamTimeout
	}
	if cfg.Kind == KindX509 && cfg.CA.Upstream != nil {
		if _, ok := cfg.Publisher.(RootPublisher); !ok {
			return nil, errors.New("ca: an upstream authority needs a publisher of upstream roots")
		}
	}
	if cfg.Propagation >= cfg.CA.CATTL/2 {
		return nil, fmt.Errorf("ca: propagation delay %v must be shorter than half the CA TTL %v", cfg.Propagation, cfg.CA.CATTL)
	}
	m := &Manager{cfg: cfg, policy: Policy{TTL: cfg.CA.CATTL, Propagation: cfg.Propagation}}
	if err := m.load(ctx); err != nil {
		return nil, err
	}
	return m, nil
}

// Policy is the schedule the manager follows.
func (m *Manager) Policy() Policy { return m.policy }

// Kind is the kind of key the manager holds.
func (m *Manager) Kind() SlotKind { return m.cfg.Kind }

// LoadNotes says what NewManager dropped from the persisted state and why.
func (m *Manager) LoadNotes() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.notes)
}

func (m *Manager) load(ctx context.Context) error {
	if m.cfg.StatePath == "" {
		return nil
	}
	data, err := os.ReadFile(m.cfg.StatePath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("ca: reading slot state: %w", err)
	}
	var st stateFile
	if err := json.Unmarshal(data, &st); err != nil {
		return fmt.Errorf("ca: slot state %s: %w", m.cfg.StatePath, err)
	}
	if st.Kind != m.cfg.Kind {
		return fmt.Errorf("ca: slot state %s is for %q keys, not %q", m.cfg.StatePath, st.Kind, m.cfg.Kind)
	}
	m.nextSeq = st.NextSeq
	for _, s := range st.Slots {
		sl, err := m.restore(ctx, s)
		if err != nil {
			m.notes = append(m.notes, fmt.Sprintf("dropped %s slot %d (%s): %v", s.Kind, s.Seq, s.State, err))
			continue
		}
		m.slots = append(m.slots, sl)
		m.nextSeq = max(m.nextSeq, s.Seq)
		if s.State == StateActive {
			if cur := m.active.Load(); cur == nil || cur.Seq < s.Seq {
				m.active.Store(sl)
			}
		}
	}
	return nil
}

// restore rebuilds a slot's signer from the key manager.
func (m *Manager) restore(ctx context.Context, s Slot) (*slot, error) {
	if !m.cfg.CA.Clock.Now().Before(s.NotAfter) {
		return nil, fmt.Errorf("expired at %s", s.NotAfter.UTC().Format(time.RFC3339))
	}
	signer, err := m.cfg.CA.KeyManager.GetKey(ctx, s.KeyID)
	observe(m.cfg.CA.KeyObserver, KeyOpGet, err)
	if err != nil {
		return nil, err
	}
	signer = observeSigner(signer, m.cfg.CA.KeyObserver)
	sl := &slot{Slot: s, signer: signer}
	switch s.Kind {
	case KindX509:
		cert, err := x509.ParseCertificate(s.Certificate)
		if err != nil {
			return nil, fmt.Errorf("certificate: %w", err)
		}
		if !s.Upstream() {
			c := newChainedCA(m.cfg.CA, signer, cert, nil, true)
			if !c.reusable(signer, cert) {
				return nil, errors.New("certificate does not match its key, this server or the trust domain")
			}
			sl.x509 = c
			break
		}
		upstream, err := parseDERs(s.UpstreamChain)
		if err != nil {
			return nil, fmt.Errorf("upstream chain: %w", err)
		}
		roots, err := parseDERs(s.UpstreamRoots)
		if err != nil {
			return nil, fmt.Errorf("upstream roots: %w", err)
		}
		c := newChainedCA(m.cfg.CA, signer, cert, upstream, false)
		if err := c.reusableChained(signer, cert, upstream, roots); err != nil {
			return nil, err
		}
		sl.x509 = c
	case KindJWT:
		pub, err := x509.MarshalPKIXPublicKey(signer.Public())
		if err != nil || !slices.Equal(pub, s.PublicKey) {
			return nil, errors.New("key does not match the published public key")
		}
		j, err := NewJWTSigner(m.cfg.CA.TrustDomain, s.ID, signer, s.NotAfter, m.cfg.JWTSVIDTTL, m.cfg.CA.Clock)
		if err != nil {
			return nil, err
		}
		sl.jwt = j
	default:
		return nil, fmt.Errorf("unknown kind %q", s.Kind)
	}
	return sl, nil
}

// persist writes the slot state; the caller holds m.mu.
func (m *Manager) persistLocked() error {
	if m.cfg.StatePath == "" {
		return nil
	}
	st := stateFile{Kind: m.cfg.Kind, NextSeq: m.nextSeq, Slots: m.slotsLocked()}
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(m.cfg.StatePath, data, 0o600); err != nil {
		return fmt.Errorf("ca: persisting slot state: %w", err)
	}
	return nil
}

func (m *Manager) slotsLocked() []Slot {
	out := make([]Slot, len(m.slots))
	for i, s := range m.slots {
		out[i] = s.Slot
	}
	return out
}

// Slots returns the slots, oldest first.
func (m *Manager) Slots() []Slot {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.slotsLocked()
}

// X509CA returns the CA of the active X.509 slot, or nil.
func (m *Manager) X509CA() *CA {
	if s := m.active.Load(); s != nil {
		return s.x509
	}
	return nil
}

// JWTSigner returns the signer of the active JWT slot, or nil.
func (m *Manager) JWTSigner() *JWTSigner {
	if s := m.active.Load(); s != nil {
		return s.jwt
	}
	return nil
}

// Active returns the active slot.
func (m *Manager) Active() (Slot, bool) {
	if s := m.active.Load(); s != nil {
		m.mu.Lock()
		defer m.mu.Unlock()
		return s.Slot, true
	}
	return Slot{}, false
}

// maxTickSteps bounds the actions of one Tick.
const maxTickSteps = 16

// Tick applies every rotation step due now and returns what it did and
// when the next step is due. After a failed step it stops; the caller
// retries at the returned time (a short retry delay after a failure).
func (m *Manager) Tick(ctx context.Context) (events []Event, next time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for range maxTickSteps {
		now := m.cfg.CA.Clock.Now()
		actions, nxt := Plan(m.slotsLocked(), m.policy, now)
		if len(actions) == 0 {
			return events, nxt
		}
		for _, a := range actions {
			if a.Kind == ActPrepare && m.upstreamFailures > 0 && now.Before(m.upstreamRetryAt) {
				// The upstream failed: the schedule waits for the backoff,
				// however often Tick is called (Prepare does not).
				return events, m.upstreamRetryAt
			}
			ev := m.doLocked(ctx, a)
			events = append(events, ev)
			if ev.Err != nil {
				if errors.Is(ev.Err, ErrUpstream) {
					m.upstreamRetryAt = now.Add(m.upstreamRetryDelay())
					return events, m.upstreamRetryAt
				}
				return events, now.Add(m.retryDelay())
			}
		}
	}
	return events, m.cfg.CA.Clock.Now().Add(m.retryDelay())
}

// retryDelay is how soon a failed step is tried again.
func (m *Manager) retryDelay() time.Duration {
	return min(5*time.Second, max(m.policy.TTL/100, 100*time.Millisecond))
}

// maxUpstreamRetryDelay caps the backoff between attempts to get a new CA
// certificate signed by an upstream authority that fails.
const maxUpstreamRetryDelay = 5 * time.Minute

// upstreamRetryDelay is how soon a preparation that failed at the
// upstream authority is tried again: the retry delay, doubled with each
// consecutive failure, at most maxUpstreamRetryDelay.
func (m *Manager) upstreamRetryDelay() time.Duration {
	return UpstreamRetryDelay(m.retryDelay(), m.upstreamFailures)
}

// UpstreamRetryDelay is the backoff after failures consecutive failed
// attempts at the upstream authority: base doubled failures-1 times,
// at most 5 minutes (and never less than base).
func UpstreamRetryDelay(base time.Duration, failures int) time.Duration {
	d := base
	for i := 1; i < failures && d < maxUpstreamRetryDelay; i++ {
		d *= 2
	}
	return min(d, max(base, maxUpstreamRetryDelay))
}

func (m *Manager) doLocked(ctx context.Context, a Action) Event {
	switch a.Kind {
	case ActPrepare:
		s, err := m.prepareLocked(ctx)
		return Event{Action: a.Kind, Slot: s, Err: err}
	case ActPublish:
		sl := m.bySeqLocked(a.Seq)
		if sl == nil {
			return Event{Action: a.Kind, Err: fmt.Errorf("ca: no slot %d", a.Seq)}
		}
		err := m.publishLocked(ctx, sl)
		return Event{Action: a.Kind, Slot: sl.Slot, Err: err}
	case ActActivate:
		sl := m.bySeqLocked(a.Seq)
		if sl == nil {
			return Event{Action: a.Kind, Err: fmt.Errorf("ca: no slot %d", a.Seq)}
		}
		err := m.activateLocked(sl)
		return Event{Action: a.Kind, Slot: sl.Slot, Err: err}
	case ActPrune:
		sl := m.bySeqLocked(a.Seq)
		if sl == nil {
			return Event{Action: a.Kind, Err: fmt.Errorf("ca: no slot %d", a.Seq)}
		}
		s := sl.Slot
		err := m.removeLocked(ctx, sl)
		return Event{Action: a.Kind, Slot: s, Err: err}
	}
	return Event{Action: a.Kind, Err: fmt.Errorf("ca: unknown action %q", a.Kind)}
}

func (m *Manager) bySeqLocked(seq int) *slot {
	for _, s := range m.slots {
		if s.Seq == seq {
			return s
		}
	}
	return nil
}

func (m *Manager) byIDLocked(id string) *slot {
	for _, s := range m.slots {
		if s.ID == id || fmt.Sprint(s.Seq) == id {
			return s
		}
	}
	return nil
}

// ErrUpstream is wrapped by the errors of preparing an X.509 key whose
// certificate the upstream authority did not sign (unreachable, refused,
// or an answer that does not check).
var ErrUpstream = errors.New("ca: upstream authority")

// prepareLocked makes a new key and certificate (or JWT key), persists the
// slot and publishes it. With an upstream authority the certificate is
// signed there first; if that fails nothing is persisted or published and
// the key is kept for the next attempt.
func (m *Manager) prepareLocked(ctx context.Context) (Slot, error) {
	seq := m.nextSeq + 1
	keyID := fmt.Sprintf("%s-ca-%d", m.cfg.Kind, seq)
	if m.cfg.Kind == KindJWT {
		keyID = fmt.Sprintf("jwt-key-%d", seq)
	}
	var signer crypto.Signer
	if p := m.pending; p != nil && p.seq == seq && p.keyID == keyID {
		signer = p.signer
	} else {
		var err error
		signer, err = m.cfg.CA.KeyManager.GenerateKey(ctx, keyID, m.cfg.CA.KeyType)
		observe(m.cfg.CA.KeyObserver, KeyOpGenerate, err)
		if err != nil {
			return Slot{}, fmt.Errorf("ca: generating %s key: %w", m.cfg.Kind, err)
		}
		signer = observeSigner(signer, m.cfg.CA.KeyObserver)
	}
	now := m.cfg.CA.Clock.Now()
	sl := &slot{signer: signer, Slot: Slot{Kind: m.cfg.Kind, Seq: seq, KeyID: keyID, State: StatePrepared, PreparedAt: now}}
	switch m.cfg.Kind {
	case KindX509:
		var c *CA
		if m.cfg.CA.Upstream != nil {
			var err error
			c, err = m.upstreamSignLocked(ctx, signer)
			if err != nil {
				m.pending = &pendingKey{seq: seq, keyID: keyID, signer: signer}
				m.upstreamFailures++
				return Slot{Kind: m.cfg.Kind, Seq: seq, KeyID: keyID, State: StatePrepared}, err
			}
			m.pending, m.upstreamFailures = nil, 0
			sl.UpstreamRoots = derOf(c.roots)
			sl.UpstreamChain = derOf(c.upstream)
			c.roots = nil
		} else {
			self := &CA{cfg: m.cfg.CA, td: m.cfg.CA.TrustDomain, signer: signer}
			cert, err := self.selfSign(signer)
			if err != nil {
				return Slot{}, err
			}
			c = newChainedCA(m.cfg.CA, signer, cert, nil, true)
		}
		cert := c.cert
		sl.x509 = c
		sl.ID = hex.EncodeToString(cert.SubjectKeyId)
		sl.NotBefore, sl.NotAfter = cert.NotBefore, cert.NotAfter
		sl.Certificate = cert.Raw
	case KindJWT:
		kid, err := KeyIDOf(signer.Public())
		if err != nil {
			return Slot{}, err
		}
		pub, err := x509.MarshalPKIXPublicKey(signer.Public())
		if err != nil {
			return Slot{}, fmt.Errorf("ca: marshaling public key: %w", err)
		}
		sl.ID, sl.PublicKey = kid, pub
		sl.NotBefore, sl.NotAfter = now, now.Add(m.cfg.CA.CATTL)
		if sl.jwt, err = NewJWTSigner(m.cfg.CA.TrustDomain, kid, signer, sl.NotAfter, m.cfg.JWTSVIDTTL, m.cfg.CA.Clock); err != nil {
			return Slot{}, err
		}
	}
	m.slots = append(m.slots, sl)
	m.nextSeq = seq
	if err := m.persistLocked(); err != nil {
		return sl.Slot, err
	}
	err := m.publishLocked(ctx, sl)
	return sl.Slot, err
}

// upstreamSignLocked gets a CA certificate for signer from the upstream
// authority, within the upstream timeout, and checks the answer. The CA it
// returns carries the upstream's roots in its roots field.
func (m *Manager) upstreamSignLocked(ctx context.Context, signer crypto.Signer) (*CA, error) {
	// The operator's CA template gives the subject (the upstream copies
	// it); its extensions are the upstream's to decide.
	subject, err := m.cfg.CA.CATemplate.Subject(m.cfg.CA.TrustDomain, m.cfg.CA.ServerID)
	if err != nil {
		return nil, fmt.Errorf("ca: CA template: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: subject,
		URIs:    []*url.URL{m.cfg.CA.TrustDomain.ID().URL()},
	}, signer)
	if err != nil {
		return nil, fmt.Errorf("ca: making the CA certificate request: %w", err)
	}
	uctx, cancel := context.WithTimeout(ctx, m.cfg.UpstreamTimeout)
	defer cancel()
	resp, err := m.cfg.CA.Upstream.MintX509CA(uctx, X509CARequest{CSR: csr, TrustDomain: m.cfg.CA.TrustDomain, TTL: m.cfg.CA.CATTL})
	if err != nil {
		return nil, fmt.Errorf("%w: signing the new CA certificate: %w", ErrUpstream, err)
	}
	if err := CheckUpstreamResponse(resp, m.cfg.CA.TrustDomain, signer.Public(), m.cfg.CA.Clock.Now()); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUpstream, err)
	}
	c := newChainedCA(m.cfg.CA, signer, resp.Chain[0], slices.Clone(resp.Chain[1:]), false)
	c.roots = slices.Clone(resp.Roots)
	return c, nil
}

func derOf(certs []*x509.Certificate) [][]byte {
	if len(certs) == 0 {
		return nil
	}
	out := make([][]byte, len(certs))
	for i, c := range certs {
		out[i] = c.Raw
	}
	return out
}

func parseDERs(ders [][]byte) ([]*x509.Certificate, error) {
	out := make([]*x509.Certificate, 0, len(ders))
	for _, d := range ders {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// publishLocked writes the slot to the bundle and records the commit time.
func (m *Manager) publishLocked(ctx context.Context, sl *slot) error {
	if sl.Upstream() {
		// The roots first: a CA is in the bundle (through its root)
		// before anything it signs is handed out.
		rp, ok := m.cfg.Publisher.(RootPublisher)
		if !ok {
			return fmt.Errorf("ca: publishing %s key %s: the publisher cannot record upstream roots", sl.Kind, sl.ID)
		}
		roots, err := parseDERs(sl.UpstreamRoots)
		if err != nil {
			return fmt.Errorf("ca: %s key %s: upstream roots: %w", sl.Kind, sl.ID, err)
		}
		if err := rp.PublishUpstreamRoots(ctx, roots); err != nil {
			return fmt.Errorf("ca: publishing the upstream roots of %s key %s: %w", sl.Kind, sl.ID, err)
		}
	}
	if err := m.cfg.Publisher.Publish(ctx, sl.Slot); err != nil {
		return fmt.Errorf("ca: publishing %s key %s: %w", sl.Kind, sl.ID, err)
	}
	if sl.PublishedAt.IsZero() {
		sl.PublishedAt = m.cfg.CA.Clock.Now()
		return m.persistLocked()
	}
	return nil
}

func (m *Manager) activateLocked(sl *slot) error {
	if sl.State != StatePrepared {
		return fmt.Errorf("ca: %s key %s is %s, not prepared", sl.Kind, sl.ID, sl.State)
	}
	if sl.PublishedAt.IsZero() {
		return fmt.Errorf("ca: %s key %s is not in the bundle yet", sl.Kind, sl.ID)
	}
	if sl.Tainted {
		return fmt.Errorf("ca: %s key %s is tainted", sl.Kind, sl.ID)
	}
	now := m.cfg.CA.Clock.Now()
	for _, o := range m.slots {
		if o.State == StateActive {
			o.State, o.RetiredAt = StateRetired, now
		}
	}
	sl.State, sl.ActivatedAt = StateActive, now
	m.active.Store(sl)
	return m.persistLocked()
}

// removeLocked takes a slot out of the bundle, the key manager and the
// state.
func (m *Manager) removeLocked(ctx context.Context, sl *slot) error {
	if !sl.PublishedAt.IsZero() || sl.State != StatePrepared {
		if err := m.cfg.Publisher.Unpublish(ctx, sl.Slot); err != nil {
			return fmt.Errorf("ca: removing %s key %s from the bundle: %w", sl.Kind, sl.ID, err)
		}
	}
	m.slots = slices.DeleteFunc(m.slots, func(s *slot) bool { return s == sl })
	if d, ok := m.cfg.CA.KeyManager.(KeyDeleter); ok {
		_ = d.DeleteKey(ctx, sl.KeyID) // a leftover key file is harmless
	}
	return m.persistLocked()
}

// Errors of the admin operations, for callers to map to status codes.
var (
	ErrSlotNotFound = errors.New("ca: no such authority")
	ErrSlotState    = errors.New("ca: authority is not in a state that allows this")
)

// Prepare makes and publishes a new key now, ahead of the schedule. It
// refuses when a prepared key already exists.
func (m *Manager) Prepare(ctx context.Context) (Slot, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range m.slots {
		if s.State == StatePrepared {
			return s.Slot, fmt.Errorf("%w: %s key %s is already prepared; activate it, or taint it to discard it", ErrSlotState, s.Kind, s.ID)
		}
	}
	return m.prepareLocked(ctx)
}

// Activate makes the prepared key (id, or the only prepared one when id is
// "") active now, ahead of the schedule, and retires the active one. The
// key must be in the committed bundle; early returns how much of the
// propagation delay was skipped (0 when none).
func (m *Manager) Activate(ctx context.Context, id string) (s Slot, early time.Duration, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var sl *slot
	if id == "" {
		for _, o := range m.slots {
			if o.State == StatePrepared {
				sl = o
			}
		}
		if sl == nil {
			return Slot{}, 0, fmt.Errorf("%w: no %s key is prepared; run prepare first", ErrSlotState, m.cfg.Kind)
		}
	} else if sl = m.byIDLocked(id); sl == nil {
		return Slot{}, 0, fmt.Errorf("%w: %s key %q", ErrSlotNotFound, m.cfg.Kind, id)
	}
	if sl.State != StatePrepared {
		return sl.Slot, 0, fmt.Errorf("%w: %s key %s is %s; only a prepared key can be activated", ErrSlotState, sl.Kind, sl.ID, sl.State)
	}
	if sl.PublishedAt.IsZero() {
		if err := m.publishLocked(ctx, sl); err != nil {
			return sl.Slot, 0, err
		}
	}
	if ready := sl.PublishedAt.Add(m.policy.Propagation); m.cfg.CA.Clock.Now().Before(ready) {
		early = ready.Sub(m.cfg.CA.Clock.Now())
	}
	err = m.activateLocked(sl)
	return sl.Slot, early, err
}

// Taint marks a prepared or retired key tainted in the bundle: agents
// replace every SVID it signed at once. The active key cannot be tainted:
// prepare and activate a successor first.
func (m *Manager) Taint(ctx context.Context, id string) (Slot, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	sl := m.byIDLocked(id)
	if sl == nil {
		return Slot{}, fmt.Errorf("%w: %s key %q", ErrSlotNotFound, m.cfg.Kind, id)
	}
	if sl.State == StateActive {
		return sl.Slot, fmt.Errorf("%w: %s key %s is the active key; prepare and activate a new key first, then taint this one", ErrSlotState, sl.Kind, sl.ID)
	}
	if sl.Tainted {
		return sl.Slot, nil
	}
	sl.Tainted = true
	if err := m.persistLocked(); err != nil {
		return sl.Slot, err
	}
	if err := m.cfg.Publisher.Publish(ctx, sl.Slot); err != nil {
		return sl.Slot, fmt.Errorf("ca: publishing taint of %s key %s: %w", sl.Kind, sl.ID, err)
	}
	return sl.Slot, nil
}

// Revoke removes a tainted, non-active key from the bundle and destroys
// it.
func (m *Manager) Revoke(ctx context.Context, id string) (Slot, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	sl := m.byIDLocked(id)
	if sl == nil {
		return Slot{}, fmt.Errorf("%w: %s key %q", ErrSlotNotFound, m.cfg.Kind, id)
	}
	if sl.State == StateActive {
		return sl.Slot, fmt.Errorf("%w: %s key %s is the active key and cannot be revoked; prepare and activate a new key, taint this one, then revoke it", ErrSlotState, sl.Kind, sl.ID)
	}
	if !sl.Tainted {
		return sl.Slot, fmt.Errorf("%w: %s key %s is not tainted; taint it first so that agents replace what it signed, then revoke it", ErrSlotState, sl.Kind, sl.ID)
	}
	s := sl.Slot
	return s, m.removeLocked(ctx, sl)
}

// AdoptTaint records that the key id was tainted cluster-wide (by an
// operator on any server, or because this server was removed): it marks
// the slot tainted, whatever its state, and persists that, without
// publishing (the bundle has the taint already). A tainted active key is
// succeeded at once by the schedule (Plan). It reports whether the slot
// changed; an unknown id is ErrSlotNotFound.
func (m *Manager) AdoptTaint(id string) (Slot, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	sl := m.byAuthorityIDLocked(id)
	if sl == nil {
		return Slot{}, false, fmt.Errorf("%w: %s key %q", ErrSlotNotFound, m.cfg.Kind, id)
	}
	if sl.Tainted {
		return sl.Slot, false, nil
	}
	sl.Tainted = true
	return sl.Slot, true, m.persistLocked()
}

// Forget drops the key id after it was revoked cluster-wide: the slot
// leaves the state and the key the key manager, without a bundle write
// (the authority is gone from the bundle already and may not be put
// back). If it was the active key, it keeps signing (signing never finds
// no key) only until the next Tick, which activates the prepared key or
// prepares and activates a new one at once: call Tick next.
func (m *Manager) Forget(ctx context.Context, id string) (Slot, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	sl := m.byAuthorityIDLocked(id)
	if sl == nil {
		return Slot{}, fmt.Errorf("%w: %s key %q", ErrSlotNotFound, m.cfg.Kind, id)
	}
	m.slots = slices.DeleteFunc(m.slots, func(s *slot) bool { return s == sl })
	if d, ok := m.cfg.CA.KeyManager.(KeyDeleter); ok {
		_ = d.DeleteKey(ctx, sl.KeyID) // a leftover key file is harmless
	}
	return sl.Slot, m.persistLocked()
}

// byAuthorityIDLocked finds a slot by its authority ID only (not by slot
// number, unlike byIDLocked).
func (m *Manager) byAuthorityIDLocked(id string) *slot {
	for _, s := range m.slots {
		if s.ID == id {
			return s
		}
	}
	return nil
}
