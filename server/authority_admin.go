package server

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/audit"
	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/internal/storepb"
	"github.com/sigil-id/sigil/raftstore"
)

// authorityAdmin is the AuthorityAdmin service: it controls the keys of
// the server it runs on.
type authorityAdmin struct {
	sigilv1.UnimplementedAuthorityAdminServer
	s *Server
}

func (a *authorityAdmin) manager(kind string) (*ca.Manager, error) {
	switch kind {
	case "", "x509":
		return a.s.auth.x509, nil
	case "jwt":
		return a.s.auth.jwt, nil
	}
	return nil, status.Errorf(codes.InvalidArgument, "unknown authority kind %q: want x509 or jwt", kind)
}

func slotProto(sl ca.Slot, p ca.Policy, active *ca.Slot) *sigilv1.AuthoritySlot {
	unix := func(t time.Time) int64 {
		if t.IsZero() {
			return 0
		}
		return t.Unix()
	}
	out := &sigilv1.AuthoritySlot{
		Kind: string(sl.Kind), Seq: int32(sl.Seq), Id: sl.ID, State: string(sl.State),
		NotBefore: unix(sl.NotBefore), NotAfter: unix(sl.NotAfter), PreparedAt: unix(sl.PreparedAt),
		PublishedAt: unix(sl.PublishedAt), ActivatedAt: unix(sl.ActivatedAt), RetiredAt: unix(sl.RetiredAt),
		Tainted: sl.Tainted,
	}
	switch sl.State {
	case ca.StateActive:
		out.NextEvent, out.NextEventAt = "successor prepared", unix(ca.PrepareAt(sl))
	case ca.StatePrepared:
		if t := ca.ActivateAt(sl, active, p); !t.IsZero() {
			out.NextEvent, out.NextEventAt = "activated", unix(t)
		} else {
			out.NextEvent = "activated once published"
		}
	case ca.StateRetired:
		out.NextEvent, out.NextEventAt = "removed from the bundle", unix(ca.PruneAt(sl))
	}
	return out
}

func (a *authorityAdmin) slotResp(m *ca.Manager, sl ca.Slot) *sigilv1.AuthorityResponse {
	var active *ca.Slot
	if act, ok := m.Active(); ok {
		active = &act
	}
	return &sigilv1.AuthorityResponse{Slot: slotProto(sl, m.Policy(), active)}
}

func (a *authorityAdmin) ShowAuthorities(ctx context.Context, _ *sigilv1.ShowAuthoritiesRequest) (*sigilv1.ShowAuthoritiesResponse, error) {
	s := a.s
	resp := &sigilv1.ShowAuthoritiesResponse{ServerId: s.cfg.NodeName, PropagationDelay: int64(s.auth.x509.Policy().Propagation / time.Second)}
	for _, m := range []*ca.Manager{s.auth.x509, s.auth.jwt} {
		var active *ca.Slot
		if act, ok := m.Active(); ok {
			active = &act
		}
		for _, sl := range m.Slots() {
			resp.Slots = append(resp.Slots, slotProto(sl, m.Policy(), active))
		}
	}
	pb, err := s.store.Read().Bundle(s.td.Name())
	if err != nil {
		return nil, status.Errorf(codes.Internal, "reading bundle: %v", err)
	}
	for _, x := range append(slices.Clip(pb.X509Authorities), pb.X509Intermediates...) {
		id := ""
		if c, err := x509.ParseCertificate(x.Certificate); err == nil {
			id = raftstore.X509AuthorityID(c)
		}
		resp.Bundle = append(resp.Bundle, &sigilv1.BundleAuthority{Kind: "x509", Id: id, ServerId: x.ServerId, NotAfter: x.NotAfter, Tainted: x.Tainted,
			Intermediate: x.Intermediate, Upstream: x.Upstream})
	}
	for _, j := range pb.JwtAuthorities {
		resp.Bundle = append(resp.Bundle, &sigilv1.BundleAuthority{Kind: "jwt", Id: j.KeyId, ServerId: j.ServerId, NotAfter: j.ExpiresAt, Tainted: j.Tainted})
	}
	return resp, nil
}

func slotError(err error) error {
	switch {
	case errors.Is(err, ca.ErrSlotNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, ca.ErrSlotState):
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	return status.Error(codes.Unavailable, err.Error())
}

func (a *authorityAdmin) audit(ctx context.Context, op string, sl ca.Slot) {
	a.s.auditAdmin(ctx, audit.Event{What: "authority_" + op, Who: audit.Admin, Subject: sl.ID, Message: "authority " + op + " by admin",
		Fields: []audit.Field{audit.String("kind", string(sl.Kind)), audit.Int("slot", sl.Seq), audit.String("authority_id", sl.ID)}})
}

func (a *authorityAdmin) PrepareAuthority(ctx context.Context, req *sigilv1.AuthorityRequest) (*sigilv1.AuthorityResponse, error) {
	m, err := a.manager(req.Kind)
	if err != nil {
		return nil, err
	}
	sl, err := m.Prepare(ctx)
	if err != nil {
		return nil, slotError(err)
	}
	a.audit(ctx, "prepared", sl)
	a.s.kickRotation()
	return a.slotResp(m, sl), nil
}

func (a *authorityAdmin) ActivateAuthority(ctx context.Context, req *sigilv1.AuthorityRequest) (*sigilv1.AuthorityResponse, error) {
	m, err := a.manager(req.Kind)
	if err != nil {
		return nil, err
	}
	sl, early, err := m.Activate(ctx, req.Id)
	if err != nil {
		return nil, slotError(err)
	}
	a.audit(ctx, "activated", sl)
	if m.Kind() == ca.KindX509 {
		if err := a.s.rotateServerSVID(ctx); err != nil {
			a.s.log.Error("server SVID rotation after CA activation failed", zap.Error(err))
		}
	}
	a.s.kickRotation()
	resp := a.slotResp(m, sl)
	if early > 0 {
		resp.Warning = fmt.Sprintf("activated %s before the propagation delay passed: agents that have not received the new bundle yet may reject SVIDs it signs", early.Round(time.Second))
	}
	return resp, nil
}

func (a *authorityAdmin) TaintAuthority(ctx context.Context, req *sigilv1.AuthorityRequest) (*sigilv1.AuthorityResponse, error) {
	if req.Authority != "" {
		return a.clusterOp(ctx, "taint", req.Authority)
	}
	m, err := a.manager(req.Kind)
	if err != nil {
		return nil, err
	}
	if req.Id == "" {
		return nil, status.Error(codes.InvalidArgument, "authority ID is required")
	}
	sl, err := m.Taint(ctx, req.Id)
	if err != nil {
		return nil, slotError(err)
	}
	a.audit(ctx, "tainted", sl)
	a.s.kickRotation()
	return a.slotResp(m, sl), nil
}

func (a *authorityAdmin) RevokeAuthority(ctx context.Context, req *sigilv1.AuthorityRequest) (*sigilv1.AuthorityResponse, error) {
	if req.Authority != "" {
		return a.clusterOp(ctx, "revoke", req.Authority)
	}
	m, err := a.manager(req.Kind)
	if err != nil {
		return nil, err
	}
	if req.Id == "" {
		return nil, status.Error(codes.InvalidArgument, "authority ID is required")
	}
	sl, err := m.Revoke(ctx, req.Id)
	if err != nil {
		return nil, slotError(err)
	}
	a.audit(ctx, "revoked", sl)
	a.s.kickRotation()
	return a.slotResp(m, sl), nil
}

// maxAuthorityIDLen bounds the authority ID of a cluster-wide operation.
const maxAuthorityIDLen = 128

// bundleMatch is one authority of the bundle named by an ID.
type bundleMatch struct {
	kind     string // raftstore.AuthorityKindX509 or AuthorityKindJWT
	serverID string
	tainted  bool
	notAfter int64
}

func (m bundleMatch) identity() bool {
	return strings.HasPrefix(m.serverID, raftstore.IdentityAuthorityPrefix)
}

func (m bundleMatch) proto(id string) *sigilv1.BundleAuthority {
	return &sigilv1.BundleAuthority{Kind: m.kind, Id: id, ServerId: m.serverID, NotAfter: m.notAfter, Tainted: m.tainted}
}

// bundleMatches returns the authorities of pb whose ID is id, and the
// number of untainted authorities each server holds per kind, leaving out
// those matches.
func bundleMatches(pb *sigilv1.Bundle, id string) (matches []bundleMatch, untainted map[string]int) {
	untainted = map[string]int{}
	for _, x := range pb.X509Authorities {
		aid := ""
		if c, err := x509.ParseCertificate(x.Certificate); err == nil {
			aid = raftstore.X509AuthorityID(c)
		}
		if aid == id {
			matches = append(matches, bundleMatch{raftstore.AuthorityKindX509, x.ServerId, x.Tainted, x.NotAfter})
		} else if !x.Tainted {
			untainted[raftstore.AuthorityKindX509+"/"+x.ServerId]++
		}
	}
	for _, j := range pb.JwtAuthorities {
		if j.KeyId == id {
			matches = append(matches, bundleMatch{raftstore.AuthorityKindJWT, j.ServerId, j.Tainted, j.ExpiresAt})
		} else if !j.Tainted {
			untainted[raftstore.AuthorityKindJWT+"/"+j.ServerId]++
		}
	}
	return matches, untainted
}

// clusterOp taints or revokes, cluster-wide, the authority id of any
// server: the command goes through the leader and Raft, every server and
// agent follows the bundle, and the server that holds the key adopts the
// change (adoptClusterChanges). A current member's last usable key of a
// kind is never taken away here: rotate it on that server first, or
// remove the server (which taints all its keys).
func (a *authorityAdmin) clusterOp(ctx context.Context, op, id string) (*sigilv1.AuthorityResponse, error) {
	s := a.s
	if len(id) > maxAuthorityIDLen {
		return nil, status.Errorf(codes.InvalidArgument, "authority ID is longer than %d characters", maxAuthorityIDLen)
	}
	pb, err := s.store.Read().PeerBundle(s.td.Name())
	if err != nil {
		return nil, status.Errorf(codes.Internal, "reading bundle: %v", err)
	}
	matches, untainted := bundleMatches(pb, id)
	if len(matches) == 0 {
		return nil, status.Errorf(codes.NotFound, "no authority %q in the bundle; `sigil authority show` lists the bundle's authorities and their IDs", id)
	}
	for _, m := range matches {
		if m.identity() {
			continue
		}
		if op == "revoke" && !m.tainted {
			return nil, status.Errorf(codes.FailedPrecondition, "%s authority %s of server %s is not tainted; run `sigil authority taint -authority %s` first so that agents replace what it signed, then revoke it", m.kind, id, m.serverID, id)
		}
		if !s.store.IsMember(m.serverID) {
			continue // a removed (or never seen) server: nothing to keep signing
		}
		if m.serverID == s.cfg.NodeName {
			mgr := s.auth.x509
			if m.kind == raftstore.AuthorityKindJWT {
				mgr = s.auth.jwt
			}
			if act, ok := mgr.Active(); ok && act.ID == id {
				return nil, status.Errorf(codes.FailedPrecondition, "%s authority %s is the active key of this server (%s); run `sigil authority prepare -kind %s` and `sigil authority activate -kind %s` first, then %s it", m.kind, id, m.serverID, m.kind, m.kind, op)
			}
		}
		if op == "taint" && untainted[m.kind+"/"+m.serverID] == 0 {
			return nil, status.Errorf(codes.FailedPrecondition, "%s authority %s is the only untainted %s key of server %s, a current member, which would keep signing with it; rotate it on %s first (`sigil authority prepare -kind %s` and `sigil authority activate -kind %s` with -socket of %s's admin socket), or, if %s is lost or compromised, remove it with `sigil cluster remove %s`, which taints all its keys", m.kind, id, m.kind, m.serverID, m.serverID, m.kind, m.kind, m.serverID, m.serverID, m.serverID)
		}
		if op == "revoke" && untainted[m.kind+"/"+m.serverID] == 0 {
			return nil, status.Errorf(codes.FailedPrecondition, "server %s, a current member, has no other usable %s key yet; wait until it has activated a successor (it prepares one at once after a taint; see `sigil authority show` on %s), or remove it with `sigil cluster remove %s`", m.serverID, m.kind, m.serverID, m.serverID)
		}
	}
	var cmd *storepb.Command
	if op == "taint" {
		cmd = &storepb.Command{Op: &storepb.Command_TaintAuthority{TaintAuthority: &storepb.TaintAuthority{TrustDomain: s.td.Name(), AuthorityId: id}}}
	} else {
		cmd = &storepb.Command{Op: &storepb.Command_RevokeAuthority{RevokeAuthority: &storepb.RevokeAuthority{TrustDomain: s.td.Name(), AuthorityId: id}}}
	}
	if _, err := s.apply(ctx, cmd); err != nil {
		return nil, storeError(err)
	}
	s.kickRotation()
	resp := &sigilv1.AuthorityResponse{}
	if op == "taint" {
		if pb, err := s.store.Read().PeerBundle(s.td.Name()); err == nil {
			matches, _ = bundleMatches(pb, id)
		}
	}
	for _, m := range matches {
		resp.Authorities = append(resp.Authorities, m.proto(id))
		done := map[string]string{"taint": "tainted", "revoke": "revoked"}[op]
		s.auditAdmin(ctx, audit.Event{What: "authority_" + done + "_cluster_wide", Who: audit.Admin, Subject: id, Message: "authority " + done + " cluster-wide by admin",
			Fields: []audit.Field{audit.String("kind", m.kind), audit.String("authority_id", id), audit.String("server_id", m.serverID)}})
	}
	return resp, nil
}
