package raftstore

import (
	"bytes"
	"crypto/x509"
	"sort"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/internal/storepb"
)

// maxKeyIDLen bounds JWT key IDs.
const maxKeyIDLen = 128

// bundleForWrite returns a copy of the trust domain's bundle to modify, or
// a new empty one.
func (a *applier) bundleForWrite(td string) *sigilv1.Bundle {
	if raw, err := a.txn.First(tableBundles, indexID, td); err == nil && raw != nil {
		return proto.Clone(raw.(*sigilv1.Bundle)).(*sigilv1.Bundle)
	}
	return &sigilv1.Bundle{TrustDomain: td}
}

func (a *applier) checkTrustDomain(td string) *CommandError {
	if td != a.f.td.Name() {
		return cmdErr(codes.InvalidArgument, "trust domain %q is not this cluster's trust domain %q", td, a.f.td.Name())
	}
	return nil
}

func (a *applier) putJWTAuthority(c *storepb.PutJWTAuthority) *CommandError {
	if err := a.checkTrustDomain(c.GetTrustDomain()); err != nil {
		return err
	}
	in := c.GetAuthority()
	switch {
	case in == nil:
		return cmdErr(codes.InvalidArgument, "authority is missing")
	case in.KeyId == "":
		return cmdErr(codes.InvalidArgument, "JWT authority key_id is empty")
	case len(in.KeyId) > maxKeyIDLen:
		return cmdErr(codes.InvalidArgument, "JWT authority key_id is longer than %d bytes", maxKeyIDLen)
	case in.ServerId == "":
		return cmdErr(codes.InvalidArgument, "authority server_id is empty")
	case in.ExpiresAt <= 0:
		return cmdErr(codes.InvalidArgument, "JWT authority has no expiry")
	}
	if _, err := x509.ParsePKIXPublicKey(in.PublicKey); err != nil {
		return cmdErr(codes.InvalidArgument, "JWT authority public key does not parse: %v", err)
	}
	if err := a.checkPut(AuthorityKindJWT, in.KeyId, in.ServerId); err != nil {
		return err
	}
	auth := &sigilv1.JWTAuthority{
		KeyId:     in.KeyId,
		PublicKey: in.PublicKey,
		ExpiresAt: in.ExpiresAt,
		ServerId:  in.ServerId,
		Tainted:   in.Tainted,
	}
	b := a.bundleForWrite(c.TrustDomain)
	replaced := false
	for i, old := range b.JwtAuthorities {
		if old.KeyId == auth.KeyId {
			if !bytes.Equal(old.PublicKey, auth.PublicKey) {
				return cmdErr(codes.AlreadyExists, "JWT key ID %q is already published with another key", auth.KeyId)
			}
			// A taint is never undone (see putX509Authority).
			auth.Tainted = auth.Tainted || old.Tainted
			b.JwtAuthorities[i] = auth
			replaced = true
		}
	}
	if !replaced {
		b.JwtAuthorities = append(b.JwtAuthorities, auth)
	}
	sortJWTAuthorities(b.JwtAuthorities)
	b.SequenceNumber++
	return a.insert(tableBundles, b)
}

func sortJWTAuthorities(as []*sigilv1.JWTAuthority) {
	sort.SliceStable(as, func(i, j int) bool {
		if as[i].ExpiresAt != as[j].ExpiresAt {
			return as[i].ExpiresAt < as[j].ExpiresAt
		}
		return as[i].KeyId < as[j].KeyId
	})
}

func (a *applier) removeAuthority(c *storepb.RemoveAuthority) *CommandError {
	if err := a.checkTrustDomain(c.GetTrustDomain()); err != nil {
		return err
	}
	if len(c.X509Certificate) == 0 && c.JwtKeyId == "" {
		return cmdErr(codes.InvalidArgument, "no authority named: set x509_certificate or jwt_key_id")
	}
	b := a.bundleForWrite(c.TrustDomain)
	n := len(b.X509Authorities) + len(b.JwtAuthorities)
	if len(c.X509Certificate) > 0 {
		kept := b.X509Authorities[:0]
		for _, x := range b.X509Authorities {
			if !bytes.Equal(x.Certificate, c.X509Certificate) {
				kept = append(kept, x)
			}
		}
		b.X509Authorities = kept
	}
	if c.JwtKeyId != "" {
		kept := b.JwtAuthorities[:0]
		for _, j := range b.JwtAuthorities {
			if j.KeyId != c.JwtKeyId {
				kept = append(kept, j)
			}
		}
		b.JwtAuthorities = kept
	}
	if len(b.X509Authorities)+len(b.JwtAuthorities) == n {
		return nil // already gone
	}
	b.SequenceNumber++
	return a.insert(tableBundles, b)
}

// pruneBundle drops the authorities expired at the command time; the
// outcome depends only on the log, so every replica prunes the same.
func (a *applier) pruneBundle(c *storepb.PruneBundle) *CommandError {
	if err := a.checkTrustDomain(c.GetTrustDomain()); err != nil {
		return err
	}
	b := a.bundleForWrite(c.TrustDomain)
	n := len(b.X509Authorities) + len(b.JwtAuthorities)
	keptX := b.X509Authorities[:0]
	for _, x := range b.X509Authorities {
		if x.NotAfter > a.nowSec {
			keptX = append(keptX, x)
		}
	}
	b.X509Authorities = keptX
	keptJ := b.JwtAuthorities[:0]
	for _, j := range b.JwtAuthorities {
		if j.ExpiresAt > a.nowSec {
			keptJ = append(keptJ, j)
		}
	}
	b.JwtAuthorities = keptJ
	if err := a.pruneRevoked(); err != nil {
		return err
	}
	if len(b.X509Authorities)+len(b.JwtAuthorities) == n {
		return nil
	}
	b.SequenceNumber++
	return a.insert(tableBundles, b)
}
