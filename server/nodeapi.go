package server

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/audit"
	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/internal/storepb"
	"github.com/sigil-id/sigil/raftstore"
	"github.com/sigil-id/sigil/registration"
)

// MaxBatchSize is the most CSRs one BatchNewX509SVID call may carry.
const MaxBatchSize = 2000

type nodeAPI struct {
	sigilv1.UnimplementedNodeServer
	s *Server

	// claims holds the single-use credentials (join tokens and use-once
	// records, by kind and ID) that an attestation on this server is
	// consuming right now; a concurrent one with the same credential is
	// refused before it signs anything.
	claimMu sync.Mutex
	claims  map[claimKey]struct{}
}

// claimKey names a credential whatever its ExpiresAt.
type claimKey struct{ kind, id string }

// claim marks c as being consumed; false if another call holds it.
func (n *nodeAPI) claim(c node.Credential) bool {
	n.claimMu.Lock()
	defer n.claimMu.Unlock()
	k := claimKey{c.Kind, c.ID}
	if _, ok := n.claims[k]; ok {
		return false
	}
	if n.claims == nil {
		n.claims = make(map[claimKey]struct{})
	}
	n.claims[k] = struct{}{}
	return true
}

func (n *nodeAPI) unclaim(c node.Credential) {
	n.claimMu.Lock()
	defer n.claimMu.Unlock()
	delete(n.claims, claimKey{c.Kind, c.ID})
}

// Reasons an attestation ended with: the reason label of
// sigil_server_node_attestations_total and the reason field of the
// node_attestation_refused audit event. A fixed set, so that the metric's
// series are bounded; the precise reason goes to the audit event's error.
const (
	reasonOK          = "ok"           // accepted
	reasonUnknownType = "unknown_type" // no verifier of that name
	reasonTooLarge    = "too_large"    // a message over the size limit
	reasonMalformed   = "malformed"    // evidence, CSR or messages that do not parse
	reasonRefused     = "refused"      // well-formed evidence not valid now (node.RefusedError)
	reasonRounds      = "rounds"       // more challenge rounds than allowed, or none allowed
	reasonDeadline    = "deadline"     // the time bound or the caller's deadline
	reasonCanceled    = "canceled"     // the caller went away
	reasonBanned      = "banned"       // the agent is banned
	reasonReplayed    = "replayed"     // a single-use credential already used or being used
	reasonUnavailable = "unavailable"  // the store could not be written or read
	reasonInternal    = "internal"     // a verifier bug or a server failure
)

// unknownAttestor is the attestor label of an attestation whose type is
// not a configured verifier.
const unknownAttestor = "unknown"

// attestorLabel is typ if a verifier of that name is configured, else
// unknownAttestor: callers cannot add series to the metric.
func (n *nodeAPI) attestorLabel(typ string) string {
	if _, ok := n.s.verifiers[typ]; ok {
		return typ
	}
	return unknownAttestor
}

// shortType is an attestation type as the audit records it: the caller
// chose it, so it is cut at 64 bytes.
func shortType(typ string) string {
	if len(typ) > 64 {
		return typ[:64] + "…"
	}
	return typ
}

// refuse records a refused attestation of type typ: a
// node_attestation_refused audit event with the attestation type, reason
// (one of the reason constants) and detail (the precise error for the
// log, which may say more than the caller is told but never holds a
// secret of the evidence: see node.Verifier), and the metric. It returns
// public, the status the caller gets. subject is the agent's SPIFFE ID
// once known.
func (n *nodeAPI) refuse(typ, subject, reason string, detail, public error, fields ...audit.Field) error {
	s := n.s
	outcome := audit.Denied
	if reason == reasonInternal || reason == reasonUnavailable {
		outcome = audit.Failure
	}
	fs := make([]audit.Field, 0, 4+len(fields))
	fs = append(fs, audit.String("attestation_type", shortType(typ)), audit.String("reason", reason))
	if subject != "" {
		fs = append(fs, audit.String("agent_id", subject))
	}
	if detail == nil {
		detail = public
	}
	fs = append(fs, audit.Err(detail))
	fs = append(fs, fields...)
	s.audit(audit.Event{What: "node_attestation_refused", Subject: subject, Outcome: outcome, Message: "node attestation refused", Fields: fs})
	s.metrics.observeAttestation(n.attestorLabel(typ), attestRefused, reason)
	return public
}

// statusReason is the reason of a refusal with status err that has no
// more precise one.
func statusReason(err error) string {
	switch status.Code(err) {
	case codes.FailedPrecondition:
		return reasonRounds
	case codes.DeadlineExceeded:
		return reasonDeadline
	case codes.Canceled:
		return reasonCanceled
	case codes.ResourceExhausted:
		return reasonTooLarge
	case codes.Unavailable:
		return reasonUnavailable
	case codes.Internal, codes.Unknown:
		return reasonInternal
	case codes.PermissionDenied:
		return reasonRefused
	default:
		return reasonMalformed
	}
}

// Attest is the unary attestation of agents of the previous version: the
// verifier gets the payload and no challenge round. With AttestStream it
// is the only node API method open to callers without an agent SVID.
// Before it signs anything or writes to Raft it checks the request's size
// and the evidence against local state (the verifier looks the join token
// up in this server's copy of the store), so an unauthenticated caller
// with made-up evidence costs one local lookup. The connection and rate
// limits in front of it are in nodeapi_limits.go.
func (n *nodeAPI) Attest(ctx context.Context, req *sigilv1.AttestRequest) (*sigilv1.AttestResponse, error) {
	if size := proto.Size(req); size > n.s.nodeLimits.MaxAttestRequestSize {
		return nil, n.refuse(req.AttestationType, "", reasonTooLarge, nil,
			status.Errorf(codes.ResourceExhausted, "attestation request of %d bytes exceeds the limit of %d bytes", size, n.s.nodeLimits.MaxAttestRequestSize))
	}
	return n.attest(ctx, req, &exchange{payload: req.Payload, unary: true, attestationType: req.AttestationType})
}

// attest runs one attestation: the verifier named by req checks the
// evidence through ex, and only then is the CSR parsed, the agent SVID
// signed and the attestation (with the credentials it consumes) written
// through Raft. ctx bounds the whole call.
func (n *nodeAPI) attest(ctx context.Context, req *sigilv1.AttestRequest, ex *exchange) (*sigilv1.AttestResponse, error) {
	res, v, err := n.verify(ctx, req, ex)
	if err != nil {
		return nil, err
	}
	return n.record(ctx, req, v, res)
}

// verify finds the verifier of req and runs it. A refusal is audited,
// counted and returned as the status the caller gets.
func (n *nodeAPI) verify(ctx context.Context, req *sigilv1.AttestRequest, ex *exchange) (*node.Result, node.Verifier, error) {
	s := n.s
	typ := req.AttestationType
	v, ok := s.verifiers[typ]
	if !ok {
		known := make([]string, 0, len(s.verifiers))
		for name := range s.verifiers {
			known = append(known, name)
		}
		sort.Strings(known)
		return nil, nil, n.refuse(typ, "", reasonUnknownType, nil,
			status.Errorf(codes.InvalidArgument, "unknown attestation type %q (this server knows %s)", shortType(typ), strings.Join(known, ", ")))
	}
	res, err := v.Verify(ctx, nodeState{s: s, attestor: v.Name()}, ex)
	// The exchange's own failure (rounds, sizes, time, the agent going
	// away) stands whatever the verifier made of it.
	if failed := ex.failure(); failed != nil {
		if err == nil {
			err = failed
		}
		return nil, nil, n.refuse(typ, "", statusReason(failed), err, failed, audit.Int("rounds", ex.rounds()))
	}
	if err == nil && res == nil {
		return nil, nil, n.refuse(typ, "", reasonInternal, errors.New("the verifier returned no result"),
			status.Errorf(codes.Internal, "attestation failed: the %s verifier returned no result", v.Name()))
	}
	if err != nil {
		var refused *node.RefusedError
		switch {
		case errors.As(err, &refused):
			// One answer for unknown, used and expired credentials;
			// the reason is in the audit event.
			return nil, nil, n.refuse(typ, "", reasonRefused, err, status.Errorf(codes.PermissionDenied, "attestation failed: %s", refused.Public))
		case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
			st := status.FromContextError(err).Err()
			if ex.timedOut.Load() {
				st = ex.deadlineError()
			}
			return nil, nil, n.refuse(typ, "", statusReason(st), err, st)
		}
		if st, ok := status.FromError(err); ok {
			return nil, nil, n.refuse(typ, "", statusReason(st.Err()), err, st.Err())
		}
		return nil, nil, n.refuse(typ, "", reasonMalformed, err, status.Errorf(codes.PermissionDenied, "attestation failed: %v", err))
	}
	return res, v, nil
}

// checkConsume checks the credentials a verifier asked to consume before
// anything is signed: a verifier bug must not write garbage to the
// replicated state. Use-once credentials must have a valid kind of the
// attestor (its name, or its name, ':' and a word) and ID, and expire
// after now and at most 24 hours after it; at most raftstore.MaxConsume
// credentials, each named once.
func checkConsume(attestor string, consume []node.Credential, now time.Time) error {
	if len(consume) > raftstore.MaxConsume {
		return fmt.Errorf("%d credentials to consume, more than %d", len(consume), raftstore.MaxConsume)
	}
	seen := make(map[claimKey]bool, len(consume))
	for _, c := range consume {
		k := claimKey{c.Kind, c.ID}
		if seen[k] {
			return fmt.Errorf("a credential of kind %q named twice", c.Kind)
		}
		seen[k] = true
		if c.Kind == node.CredentialJoinToken {
			continue
		}
		if err := ownKind(attestor, c.Kind); err != nil {
			return err
		}
		if c.ExpiresAt.After(now.Add(raftstore.MaxUsedCredentialTTL)) {
			return fmt.Errorf("a credential of kind %q expires more than %s from now", c.Kind, raftstore.MaxUsedCredentialTTL)
		}
		if err := raftstore.ValidateUseOnceCredential(c.Kind, c.ID, expiresUnix(c.ExpiresAt), now.Unix()); err != nil {
			return err
		}
	}
	return nil
}

// ownKind checks that the use-once kind is attestor's: its name, or its
// name, ':' and a word, so that attestors never share records.
func ownKind(attestor, kind string) error {
	if name, _, _ := strings.Cut(kind, ":"); name != attestor {
		return fmt.Errorf("credential kind %q is not the %s attestor's (%q or %q)", kind, attestor, attestor, attestor+":<word>")
	}
	return nil
}

// expiresUnix is t in unix seconds, rounded up so that the record lasts
// as long as the evidence; zero for the zero time.
func expiresUnix(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	sec := t.Unix()
	if t.Nanosecond() > 0 {
		sec++
	}
	return sec
}

// consumedElsewhere reports whether the single-use credential c was
// consumed (a join token no longer there) or used (an unexpired use-once
// record) by another attestation, according to this server's store.
func (n *nodeAPI) consumedElsewhere(c node.Credential) (bool, error) {
	r := n.s.store.Read()
	if c.Kind == node.CredentialJoinToken {
		_, err := r.JoinToken(c.ID)
		return err != nil, nil
	}
	rec, err := r.UsedCredential(c.Kind, c.ID)
	switch {
	case errors.Is(err, raftstore.ErrNotFound):
		return false, nil
	case err != nil:
		return false, err
	}
	return rec.ExpiresAt > n.s.cfg.Clock.Now().Unix(), nil
}

// replayedMessage is the public text of a refusal because a use-once
// credential was already used.
const replayedMessage = "the attestation evidence was already used"

// firstUseMessage tells an agent that its trust-on-first-use attestation
// lost to another one of the same node.
const firstUseMessage = "the node is already attested (an operator must evict it before it can attest again)"

// record signs the agent SVID of a verified attestation and writes the
// attestation, consuming res.Consume, through Raft. A refusal is audited
// and counted.
func (n *nodeAPI) record(ctx context.Context, req *sigilv1.AttestRequest, v node.Verifier, res *node.Result) (*sigilv1.AttestResponse, error) {
	s := n.s
	typ := v.Name()
	now := s.cfg.Clock.Now()
	if err := checkConsume(typ, res.Consume, now); err != nil {
		return nil, n.refuse(typ, "", reasonInternal, err,
			status.Errorf(codes.Internal, "attestation failed: the %s verifier asked to consume a bad credential", typ))
	}
	useOnce := false
	for _, c := range res.Consume {
		public := status.Error(codes.PermissionDenied, "attestation failed: "+consumedMessage)
		if c.Kind != node.CredentialJoinToken {
			useOnce = true
			public = status.Error(codes.PermissionDenied, "attestation failed: "+replayedMessage)
		}
		// The Raft command consumes the credential atomically across
		// servers; this claim keeps concurrent uses on one server from
		// each costing a signature and a Raft write first.
		if !n.claim(c) {
			return nil, n.refuse(typ, "", reasonReplayed,
				fmt.Errorf("a single-use credential of kind %q is being consumed by a concurrent attestation", c.Kind), public)
		}
		defer n.unclaim(c)
		// A call that held the claim until just now has consumed it.
		used, err := n.consumedElsewhere(c)
		if err != nil {
			return nil, n.refuse(typ, "", reasonInternal, err, status.Errorf(codes.Internal, "reading single-use credentials: %v", err))
		}
		if used {
			return nil, n.refuse(typ, "", reasonReplayed,
				fmt.Errorf("a single-use credential of kind %q was consumed by another attestation", c.Kind), public)
		}
	}
	agentID, err := registration.AgentID(s.td, typ, res.ID)
	if err != nil {
		return nil, n.refuse(typ, "", reasonMalformed, err, status.Errorf(codes.InvalidArgument, "attestor returned a bad agent id: %v", err))
	}
	pub, err := ca.VerifyCSR(req.Csr)
	if err != nil {
		return nil, n.refuse(typ, agentID.String(), reasonMalformed, err, status.Errorf(codes.InvalidArgument, "agent CSR: %v", err))
	}
	if existing, err := s.store.Read().Node(agentID.String()); err == nil && existing.Banned {
		return nil, n.refuse(typ, agentID.String(), reasonBanned, nil, status.Errorf(codes.PermissionDenied, "agent %s is banned", agentID))
	}
	chain, err := s.x509CA().SignX509SVID(ctx, ca.X509SVIDParams{PublicKey: pub, SPIFFEID: agentID, TTL: s.cfg.AgentSVIDTTL})
	if err != nil {
		return nil, n.refuse(typ, agentID.String(), reasonInternal, err, status.Errorf(codes.Internal, "minting agent SVID: %v", err))
	}
	leaf := chain[0]
	cmd := &storepb.AttestNode{
		Node: &sigilv1.AttestedNode{
			SpiffeId:        agentID.String(),
			AttestationType: typ,
			CertSerial:      fmt.Sprintf("%x", leaf.SerialNumber),
			CertNotAfter:    leaf.NotAfter.Unix(),
			Selectors:       res.Selectors,
			CreatedAt:       now.Unix(),
			LastSeen:        now.Unix(),
		},
		FirstAttestation: res.FirstAttestation,
	}
	for _, c := range res.Consume {
		// A join token goes in join_token_hash, which servers of the
		// previous version apply too (they ignore consume), so that a
		// cluster in a rolling upgrade applies the command alike.
		if c.Kind == node.CredentialJoinToken && cmd.JoinTokenHash == "" {
			cmd.JoinTokenHash = c.ID
			continue
		}
		cred := &storepb.Credential{Kind: c.Kind, Id: c.ID}
		if c.Kind != node.CredentialJoinToken {
			cred.ExpiresAt = expiresUnix(c.ExpiresAt)
		}
		cmd.Consume = append(cmd.Consume, cred)
	}
	_, err = s.apply(ctx, &storepb.Command{Op: &storepb.Command_AttestNode{AttestNode: cmd}})
	if err != nil {
		reason, public := n.applyRefusal(agentID.String(), useOnce, err)
		return nil, n.refuse(typ, agentID.String(), reason, err, public)
	}
	pb, err := s.store.Read().Bundle(s.td.Name())
	if err != nil {
		return nil, n.refuse(typ, agentID.String(), reasonInternal, err, status.Errorf(codes.Internal, "reading bundle: %v", err))
	}
	s.audit(audit.Event{What: "agent_attested", Subject: agentID.String(), Message: "agent attested",
		Fields: []audit.Field{audit.String("agent_id", agentID.String()), audit.String("attestation_type", typ),
			audit.String("serial", fmt.Sprintf("%x", leaf.SerialNumber)), audit.Time("not_after", leaf.NotAfter)}})
	s.metrics.observeAttestation(typ, attestAccepted, reasonOK)
	return &sigilv1.AttestResponse{SpiffeId: agentID.String(), SvidChain: rawChain(chain), Bundle: pb}, nil
}

// applyRefusal is the reason and the caller's status of an AttestNode
// command the store refused or could not apply.
func (n *nodeAPI) applyRefusal(agentID string, useOnce bool, err error) (string, error) {
	var ce *raftstore.CommandError
	switch {
	case errors.As(err, &ce) && ce.Code == codes.AlreadyExists && useOnce:
		// Another server's attestation recorded the credential first.
		return reasonReplayed, status.Error(codes.PermissionDenied, "attestation failed: "+replayedMessage)
	case errors.As(err, &ce) && ce.Code == codes.AlreadyExists:
		// A first attestation (trust on first use) found the node
		// attested: another attestation got in first.
		return reasonReplayed, status.Error(codes.PermissionDenied, "attestation failed: "+firstUseMessage)
	case errors.As(err, &ce) && ce.Code == codes.PermissionDenied:
		if existing, rerr := n.s.store.Read().Node(agentID); rerr == nil && existing.Banned {
			return reasonBanned, storeError(err)
		}
		// The join token was consumed or expired meanwhile.
		return reasonReplayed, storeError(err)
	case errors.As(err, &ce):
		return reasonInternal, storeError(err)
	case errors.Is(err, context.DeadlineExceeded):
		return reasonDeadline, storeError(err)
	case errors.Is(err, context.Canceled):
		return reasonCanceled, storeError(err)
	default:
		return reasonUnavailable, storeError(err)
	}
}

func (n *nodeAPI) RenewAgent(ctx context.Context, req *sigilv1.RenewAgentRequest) (*sigilv1.RenewAgentResponse, error) {
	s := n.s
	agentID, _ := agentFrom(ctx)
	pub, err := ca.VerifyCSR(req.Csr)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "agent CSR: %v", err)
	}
	chain, err := s.x509CA().SignX509SVID(ctx, ca.X509SVIDParams{PublicKey: pub, SPIFFEID: agentID, TTL: s.cfg.AgentSVIDTTL})
	if err != nil {
		return nil, status.Errorf(codes.Internal, "minting agent SVID: %v", err)
	}
	leaf := chain[0]
	_, err = s.apply(ctx, &storepb.Command{Op: &storepb.Command_UpdateNode{UpdateNode: &storepb.UpdateNode{
		SpiffeId:     agentID.String(),
		CertSerial:   fmt.Sprintf("%x", leaf.SerialNumber),
		CertNotAfter: leaf.NotAfter.Unix(),
	}}})
	if err != nil {
		return nil, storeError(err)
	}
	s.audit(audit.Event{What: "agent_svid_renewed", Who: agentID.String(), Subject: agentID.String(), Message: "agent SVID renewed",
		Fields: []audit.Field{audit.String("agent_id", agentID.String()),
			audit.String("serial", fmt.Sprintf("%x", leaf.SerialNumber)), audit.Time("not_after", leaf.NotAfter)}})
	return &sigilv1.RenewAgentResponse{SvidChain: rawChain(chain)}, nil
}

func (n *nodeAPI) BatchNewX509SVID(ctx context.Context, req *sigilv1.BatchNewX509SVIDRequest) (*sigilv1.BatchNewX509SVIDResponse, error) {
	s := n.s
	agentID, _ := agentFrom(ctx)
	if len(req.Requests) > MaxBatchSize {
		return nil, status.Errorf(codes.InvalidArgument, "batch of %d requests exceeds the limit of %d", len(req.Requests), MaxBatchSize)
	}
	ids := make([]string, len(req.Requests))
	for i, r := range req.Requests {
		ids[i] = r.EntryId
	}
	// Only the entries asked for are looked at, not every entry the
	// agent is authorized for.
	byID, err := s.store.Read().AuthorizedFor(agentID.String(), ids)
	if err != nil {
		return nil, s.metrics.countRefused(svidX509, len(req.Requests), agentStateError(agentID, err))
	}
	// The batch's results, their statuses and the issuance records'
	// fields are allocated once per batch, not once per request (each
	// record gets its own capacity-limited window of fields: a sink that
	// appends to one copies it and touches no other record's), and the
	// agent's field is boxed once.
	results := make([]*sigilv1.X509SVIDResult, len(req.Requests))
	resultSlab := make([]sigilv1.X509SVIDResult, len(req.Requests))
	statusSlab := make([]sigilv1.Status, len(req.Requests))
	const issuedFields = 5
	fieldSlab := make([]audit.Field, issuedFields*len(req.Requests))
	agentField := audit.String("agent_id", agentID.String())
	sign := func(i int) {
		r := req.Requests[i]
		res := &resultSlab[i]
		res.EntryId = r.EntryId
		results[i] = res
		e, ok := byID[r.EntryId]
		if !ok {
			res.Status = &sigilv1.Status{Code: int32(codes.PermissionDenied), Message: fmt.Sprintf("agent is not authorized for entry %q", r.EntryId)}
			return
		}
		svid, err := n.signEntry(ctx, e, r.Csr)
		if err != nil {
			res.Status = &sigilv1.Status{Code: int32(status.Code(err)), Message: status.Convert(err).Message()}
			return
		}
		res.Status = &statusSlab[i]
		res.Chain = svid.Chain
		res.ExpiresAt = svid.NotAfter.Unix()
		fs := fieldSlab[i*issuedFields : i*issuedFields : (i+1)*issuedFields]
		fs = append(fs, agentField, audit.String("entry_id", e.ID), audit.String("spiffe_id", e.SPIFFEID),
			audit.String("serial", serialHex(svid.Serial)), audit.Time("not_after", svid.NotAfter))
		s.audit(audit.Event{What: "x509_svid_issued", Who: agentID.String(), Subject: e.SPIFFEID, Message: "x509-svid issued", Fields: fs})
	}
	parallelFor(len(req.Requests), sign)
	s.metrics.countX509Results(results)
	for _, res := range results {
		if res.Status.GetCode() == int32(codes.PermissionDenied) {
			s.audit(audit.Event{What: "x509_svid_refused", Who: agentID.String(), Subject: res.EntryId, Outcome: audit.Denied, Message: "x509-svid refused",
				Fields: []audit.Field{audit.String("agent_id", agentID.String()), audit.String("entry_id", res.EntryId), audit.String("reason", res.Status.Message)}})
		}
	}
	return &sigilv1.BatchNewX509SVIDResponse{Results: results}, nil
}

func (n *nodeAPI) signEntry(ctx context.Context, e raftstore.SigningEntry, csr []byte) (ca.RawX509SVID, error) {
	defer n.s.metrics.iss.observeSign(svidX509, time.Now())
	id, err := spiffeid.FromString(e.SPIFFEID)
	if err != nil {
		return ca.RawX509SVID{}, status.Errorf(codes.Internal, "entry %s has a bad SPIFFE ID: %v", e.ID, err)
	}
	key, err := ca.VerifyCSRKey(csr)
	if err != nil {
		return ca.RawX509SVID{}, status.Errorf(codes.InvalidArgument, "CSR: %v", err)
	}
	svid, err := n.s.x509CA().SignX509SVIDRaw(ctx, ca.X509SVIDParams{
		CSRKey:   key,
		SPIFFEID: id,
		DNSNames: e.DNSNames,
		TTL:      ttlSeconds(e.X509TTL),
		EntryID:  e.ID,
	})
	if err != nil {
		return ca.RawX509SVID{}, status.Errorf(codes.Internal, "signing: %v", err)
	}
	return svid, nil
}

// serialHex is serial.Text(16) (serial > 0), written with one
// allocation, the string, for serials of up to 32 bytes (the CA's are
// 16).
func serialHex(serial *big.Int) string {
	var b [32]byte
	n := (serial.BitLen() + 7) / 8
	if serial.Sign() <= 0 || n > len(b) {
		return serial.Text(16)
	}
	raw := serial.FillBytes(b[:n])
	var h [2 * len(b)]byte
	hex.Encode(h[:], raw)
	out := h[:2*n]
	if out[0] == '0' {
		out = out[1:] // Text writes no leading zero
	}
	return string(out)
}

// parallelFor runs fn(0..n-1) on up to GOMAXPROCS goroutines.
func parallelFor(n int, fn func(int)) {
	workers := runtime.GOMAXPROCS(0)
	if n < 8 || workers == 1 {
		for i := 0; i < n; i++ {
			fn(i)
		}
		return
	}
	if workers > n {
		workers = n
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	next := 0
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= n {
					return
				}
				fn(i)
			}
		}()
	}
	wg.Wait()
}

func rawChain(chain []*x509.Certificate) [][]byte {
	out := make([][]byte, len(chain))
	for i, c := range chain {
		out[i] = c.Raw
	}
	return out
}

func agentStateError(agentID spiffeid.ID, err error) error {
	switch {
	case errors.Is(err, raftstore.ErrBanned):
		return status.Errorf(codes.PermissionDenied, "agent %s is banned", agentID)
	case errors.Is(err, raftstore.ErrNotFound):
		return status.Errorf(codes.PermissionDenied, "agent %s is not attested (evicted?)", agentID)
	default:
		return status.Errorf(codes.Internal, "reading agent state: %v", err)
	}
}

// storeError turns a raftstore error into a gRPC status.
func storeError(err error) error {
	var ce *raftstore.CommandError
	if errors.As(err, &ce) {
		return status.Error(ce.Code, ce.Msg)
	}
	if errors.Is(err, raftstore.ErrNotFound) {
		return status.Error(codes.NotFound, err.Error())
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	return status.Errorf(codes.Unavailable, "store: %v", err)
}

// consumedMessage is the answer to an attestation whose single-use
// credential a concurrent attestation consumed: the join token verifier's
// answer for a spent token, so that the two cases read the same.
const consumedMessage = "join token is unknown, already used or expired"

// followerTokenWait bounds how long a follower that does not hold a join
// token waits for its store to catch up: the leader may have committed
// the token a moment ago, and a follower learns of it within a
// replication round (tens of milliseconds).
const followerTokenWait = time.Second

// nodeState is the verifiers' read-only view of this server's store.
type nodeState struct {
	s        *Server
	attestor string // the verifier's name, for Agent
}

// Now is the server's clock.
func (st nodeState) Now() time.Time { return st.s.cfg.Clock.Now() }

// CredentialExpiry looks the credential up in the local store (join
// tokens are the only kind). A follower that does not find it waits up to
// followerTokenWait for its store to apply newer entries (no Raft
// traffic, no write) before it gives up; while it waits, the call gives
// its in-flight attestation slot back (the rate limits bound how many
// such waits there can be).
func (st nodeState) CredentialExpiry(ctx context.Context, c node.Credential) (time.Time, error) {
	s := st.s
	if c.Kind != node.CredentialJoinToken {
		return time.Time{}, fmt.Errorf("server: no credentials of kind %q: %w", c.Kind, node.ErrNotFound)
	}
	hash := c.ID
	if s.store == nil {
		return time.Time{}, status.Error(codes.Unavailable, "server: the store is not open yet")
	}
	var timeout <-chan time.Time
	for {
		changed := s.store.Changed()
		t, err := s.store.Read().JoinToken(hash)
		switch {
		case err == nil:
			return time.Unix(t.ExpiresAt, 0), nil
		case !errors.Is(err, raftstore.ErrNotFound):
			return time.Time{}, status.Errorf(codes.Internal, "server: reading join tokens: %v", err)
		case s.cluster == nil || s.store.IsLeader():
			return time.Time{}, fmt.Errorf("server: %w", node.ErrNotFound)
		}
		if timeout == nil {
			timeout = s.cfg.Clock.After(followerTokenWait)
			releaseAttestSlot(ctx)
		}
		select {
		case <-changed:
		case <-timeout:
			return time.Time{}, fmt.Errorf("server: %w", node.ErrNotFound)
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		}
	}
}

// verifiedAgent reports whether certs are a valid agent SVID of the trust
// domain now (whether the agent is attested and not banned is checked on
// each call by the auth interceptors).
func (s *Server) verifiedAgent(certs []*x509.Certificate) bool {
	bundle, err := s.currentBundle()
	if err != nil {
		return false
	}
	id, _, err := x509svid.Verify(certs, bundle, x509svid.WithTime(s.cfg.Clock.Now()))
	return err == nil && registration.IsAgentID(id)
}

// refuseUnauthenticated is the node guard's answer to a call of method
// other than an attestation on a connection that presented no valid agent
// SVID: the auth interceptor's own error, or for the Downstream service
// its own authentication's (see downstream.go).
func (s *Server) refuseUnauthenticated(ctx context.Context, method string) error {
	if isDownstreamMethod(method) {
		_, _, err := s.authenticateDownstream(ctx)
		return err
	}
	_, err := s.authenticate(ctx)
	return err
}

// Used reports whether the use-once credential c (of the verifier's
// attestor: its kind is the attestor's name, or its name, ':' and a word)
// has an unexpired record in this server's store. A follower that has not applied the latest
// attestations answers "not used" for a credential used a moment ago on
// another server: the Raft apply of the attestation is the atomic check
// (a replay is refused there, and nothing is written), so the answer
// only saves a signature and a write in the common case.
func (st nodeState) Used(ctx context.Context, c node.Credential) (bool, error) {
	s := st.s
	if err := raftstore.ValidateUseOnceName(c.Kind, c.ID); err != nil {
		return false, fmt.Errorf("server: %w", err)
	}
	if err := ownKind(st.attestor, c.Kind); err != nil {
		return false, fmt.Errorf("server: %w", err)
	}
	if s.store == nil {
		return false, status.Error(codes.Unavailable, "server: the store is not open yet")
	}
	rec, err := s.store.Read().UsedCredential(c.Kind, c.ID)
	switch {
	case errors.Is(err, raftstore.ErrNotFound):
		return false, nil
	case err != nil:
		return false, status.Errorf(codes.Internal, "server: reading used credentials: %v", err)
	}
	return rec.ExpiresAt > st.Now().Unix(), nil
}

// Agent looks up the agent the verifier's attestor names id.
func (st nodeState) Agent(ctx context.Context, id string) (node.AgentRecord, error) {
	s := st.s
	agentID, err := registration.AgentID(s.td, st.attestor, id)
	if err != nil {
		return node.AgentRecord{}, fmt.Errorf("server: %w", err)
	}
	if s.store == nil {
		return node.AgentRecord{}, status.Error(codes.Unavailable, "server: the store is not open yet")
	}
	n, err := s.store.Read().Node(agentID.String())
	switch {
	case errors.Is(err, raftstore.ErrNotFound):
		return node.AgentRecord{}, fmt.Errorf("server: agent %s: %w", agentID, node.ErrNotFound)
	case err != nil:
		return node.AgentRecord{}, status.Errorf(codes.Internal, "server: reading agent %s: %v", agentID, err)
	}
	return node.AgentRecord{
		Banned:        n.Banned,
		AttestedAt:    time.Unix(n.CreatedAt, 0),
		SVIDExpiresAt: time.Unix(n.CertNotAfter, 0),
	}, nil
}
