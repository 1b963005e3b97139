package server

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/ca"
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
	for _, x := range pb.X509Authorities {
		id := ""
		if c, err := x509.ParseCertificate(x.Certificate); err == nil {
			id = hex.EncodeToString(c.SubjectKeyId)
		}
		resp.Bundle = append(resp.Bundle, &sigilv1.BundleAuthority{Kind: "x509", Id: id, ServerId: x.ServerId, NotAfter: x.NotAfter, Tainted: x.Tainted})
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

func (a *authorityAdmin) audit(op string, sl ca.Slot) {
	a.s.log.Info("authority "+op+" by admin", zap.Bool("audit", true), zap.String("kind", string(sl.Kind)),
		zap.Int("slot", sl.Seq), zap.String("authority_id", sl.ID))
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
	a.audit("prepared", sl)
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
	a.audit("activated", sl)
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
	a.audit("tainted", sl)
	a.s.kickRotation()
	return a.slotResp(m, sl), nil
}

func (a *authorityAdmin) RevokeAuthority(ctx context.Context, req *sigilv1.AuthorityRequest) (*sigilv1.AuthorityResponse, error) {
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
	a.audit("revoked", sl)
	a.s.kickRotation()
	return a.slotResp(m, sl), nil
}
