package server

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// TestAuthorityAdminLifecycle drives this server's keys through the
// AuthorityAdmin service: show, prepare ahead of the schedule, activate
// early (with a warning, and a server SVID re-minted from the new CA),
// taint and revoke the retired key; the active key cannot be tainted, and
// bad requests get clear codes.
func TestAuthorityAdminLifecycle(t *testing.T) {
	h := startACServer(t)
	ctx := context.Background()

	show := func() *sigilv1.ShowAuthoritiesResponse {
		t.Helper()
		resp, err := h.auth.ShowAuthorities(ctx, &sigilv1.ShowAuthoritiesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	slotsOf := func(resp *sigilv1.ShowAuthoritiesResponse, kind, state string) []*sigilv1.AuthoritySlot {
		var out []*sigilv1.AuthoritySlot
		for _, sl := range resp.Slots {
			if sl.Kind == kind && sl.State == state {
				out = append(out, sl)
			}
		}
		return out
	}
	first := show()
	if first.ServerId != "s1" {
		t.Fatalf("server ID %q", first.ServerId)
	}
	for _, kind := range []string{"x509", "jwt"} {
		act := slotsOf(first, kind, "active")
		if len(act) != 1 || act[0].NextEvent != "successor prepared" || act[0].NextEventAt == 0 {
			t.Fatalf("%s active slots: %v", kind, act)
		}
	}
	kinds := map[string]int{}
	for _, b := range first.Bundle {
		if b.ServerId == "s1" {
			kinds[b.Kind]++
		}
	}
	if kinds["x509"] != 1 || kinds["jwt"] != 1 {
		t.Fatalf("this server's authorities in the bundle: %v", kinds)
	}
	oldCA := slotsOf(first, "x509", "active")[0].Id

	// Bad requests.
	for name, call := range map[string]func() error{
		"unknown kind": func() error {
			_, err := h.auth.PrepareAuthority(ctx, &sigilv1.AuthorityRequest{Kind: "rsa"})
			return err
		},
		"taint without ID": func() error {
			_, err := h.auth.TaintAuthority(ctx, &sigilv1.AuthorityRequest{Kind: "x509"})
			return err
		},
		"revoke without ID": func() error {
			_, err := h.auth.RevokeAuthority(ctx, &sigilv1.AuthorityRequest{Kind: "jwt"})
			return err
		},
		"activate without ID": func() error {
			_, err := h.auth.ActivateAuthority(ctx, &sigilv1.AuthorityRequest{Kind: "x509"})
			return err
		},
	} {
		want := codes.InvalidArgument
		if name == "activate without ID" {
			want = codes.NotFound // no prepared key to activate
		}
		if err := call(); status.Code(err) != want && !(name == "activate without ID" && status.Code(err) == codes.FailedPrecondition) {
			t.Errorf("%s: %v, want %v", name, err, want)
		}
	}
	if _, err := h.auth.TaintAuthority(ctx, &sigilv1.AuthorityRequest{Kind: "x509", Id: oldCA}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("taint of the active key: %v, want FailedPrecondition", err)
	}
	if _, err := h.auth.RevokeAuthority(ctx, &sigilv1.AuthorityRequest{Kind: "x509", Id: "nope"}); status.Code(err) != codes.NotFound {
		t.Fatalf("revoke of an unknown key: %v, want NotFound", err)
	}

	// Prepare, then activate at once.
	prep, err := h.auth.PrepareAuthority(ctx, &sigilv1.AuthorityRequest{Kind: "x509"})
	if err != nil {
		t.Fatal(err)
	}
	if prep.Slot.State != "prepared" || prep.Slot.Id == oldCA {
		t.Fatalf("prepared slot: %v", prep.Slot)
	}
	if _, err := h.auth.PrepareAuthority(ctx, &sigilv1.AuthorityRequest{Kind: "x509"}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("second prepare: %v, want FailedPrecondition", err)
	}
	svidBefore := h.srv.svid.Load()
	act, err := h.auth.ActivateAuthority(ctx, &sigilv1.AuthorityRequest{Kind: "x509", Id: prep.Slot.Id})
	if err != nil {
		t.Fatal(err)
	}
	if act.Slot.State != "active" || act.Warning == "" {
		t.Fatalf("early activation: %v (warning %q)", act.Slot, act.Warning)
	}
	if h.srv.svid.Load() == svidBefore {
		t.Fatal("the server SVID was not re-minted from the new CA")
	}
	if retired := slotsOf(show(), "x509", "retired"); len(retired) != 1 || retired[0].Id != oldCA || retired[0].NextEvent != "removed from the bundle" {
		t.Fatalf("retired slots: %v", retired)
	}

	// The retired key: revoke refuses it untainted; taint, then revoke.
	if _, err := h.auth.RevokeAuthority(ctx, &sigilv1.AuthorityRequest{Kind: "x509", Id: oldCA}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("revoke of an untainted key: %v, want FailedPrecondition", err)
	}
	tr, err := h.auth.TaintAuthority(ctx, &sigilv1.AuthorityRequest{Kind: "x509", Id: oldCA})
	if err != nil || !tr.Slot.Tainted {
		t.Fatalf("taint of the retired key: %v %v", tr, err)
	}
	if _, err := h.auth.RevokeAuthority(ctx, &sigilv1.AuthorityRequest{Kind: "x509", Id: oldCA}); err != nil {
		t.Fatalf("revoke of the tainted key: %v", err)
	}
	for _, b := range show().Bundle {
		if b.Id == oldCA {
			t.Fatal("the revoked key is still in the bundle")
		}
	}
}
