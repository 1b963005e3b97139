package raftstore

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"strings"

	"google.golang.org/grpc/codes"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/internal/storepb"
)

// IdentityAuthorityPrefix starts the server_id under which a server's
// cluster identity CA is kept in the bundle row ("cluster/<node>"). These
// CAs authenticate servers to each other only: Reader.Bundle leaves them
// out (it is the bundle agents and workloads trust), Reader.PeerBundle
// keeps them.
const IdentityAuthorityPrefix = "cluster/"

// Authority kinds of revocation records.
const (
	AuthorityKindX509 = "x509"
	AuthorityKindJWT  = "jwt"
)

// maxAuthorityIDLen bounds the authority IDs of taint and revoke commands.
const maxAuthorityIDLen = 128

// revokedRow is how a RevokedAuthority is stored: Key is "<kind>/<id>".
type revokedRow struct {
	Key string
	A   *storepb.RevokedAuthority
}

func revokedKey(kind, id string) string { return kind + "/" + id }

// X509AuthorityID is the ID of a CA certificate as `sigil authority show`
// prints it and TaintAuthority and RevokeAuthority name it: the hex
// SubjectKeyId, or, for a certificate without one, the hex of the first
// 20 bytes of the SHA-256 of its public key.
func X509AuthorityID(cert *x509.Certificate) string {
	if len(cert.SubjectKeyId) > 0 {
		return hex.EncodeToString(cert.SubjectKeyId)
	}
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:20])
}

// x509IDOf parses a stored authority certificate and returns its ID; ""
// when it does not parse (it did when it was stored).
func x509IDOf(der []byte) string {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return ""
	}
	return X509AuthorityID(cert)
}

// ownerOf is the node a bundle server_id belongs to: the node itself, or
// the node of a cluster identity CA.
func ownerOf(serverID string) string { return strings.TrimPrefix(serverID, IdentityAuthorityPrefix) }

func validateAuthorityID(id string) *CommandError {
	if id == "" {
		return cmdErr(codes.InvalidArgument, "authority ID is empty")
	}
	if len(id) > maxAuthorityIDLen {
		return cmdErr(codes.InvalidArgument, "authority ID is longer than %d bytes", maxAuthorityIDLen)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c <= 0x20 || c >= 0x7f {
			return cmdErr(codes.InvalidArgument, "authority ID %q has characters outside printable ASCII", id)
		}
	}
	return nil
}

func validateServerName(name string) *CommandError {
	if name == "" {
		return cmdErr(codes.InvalidArgument, "server_id is empty")
	}
	if len(name) > maxAuthorityIDLen {
		return cmdErr(codes.InvalidArgument, "server_id is longer than %d bytes", maxAuthorityIDLen)
	}
	if strings.Contains(name, "/") {
		return cmdErr(codes.InvalidArgument, "server_id %q is not a node name", name)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= 0x20 || c >= 0x7f {
			return cmdErr(codes.InvalidArgument, "server_id %q has characters outside printable ASCII", name)
		}
	}
	return nil
}

func (a *applier) revoked(kind, id string) *storepb.RevokedAuthority {
	raw, err := a.txn.First(tableRevoked, indexID, revokedKey(kind, id))
	if err != nil || raw == nil {
		return nil
	}
	return raw.(*revokedRow).A
}

func (a *applier) removedServer(node string) *storepb.RemovedServer {
	raw, err := a.txn.First(tableRemovedServers, indexID, node)
	if err != nil || raw == nil {
		return nil
	}
	return raw.(*storepb.RemovedServer)
}

// checkPut refuses the put of an authority that was revoked, or of any
// authority of a server that was removed from the cluster.
func (a *applier) checkPut(kind, id, serverID string) *CommandError {
	if r := a.removedServer(ownerOf(serverID)); r != nil {
		return cmdErr(codes.PermissionDenied, "server %q was removed from the cluster; its authorities cannot be published", ownerOf(serverID))
	}
	if a.revoked(kind, id) != nil {
		return cmdErr(codes.PermissionDenied, "%s authority %s was revoked and cannot be published again", kind, id)
	}
	return nil
}

func (a *applier) addRevoked(kind, id, serverID string, notAfter int64) *CommandError {
	if id == "" || notAfter <= a.nowSec {
		return nil // nothing to guard: an expired authority is refused anyway
	}
	return a.insert(tableRevoked, &revokedRow{Key: revokedKey(kind, id), A: &storepb.RevokedAuthority{
		Kind: kind, Id: id, ServerId: serverID, NotAfter: notAfter, RevokedAt: a.nowSec,
	}})
}

// pruneRevoked drops the revocation records of authorities expired at the
// command time.
func (a *applier) pruneRevoked() *CommandError {
	it, err := a.txn.Get(tableRevoked, indexID+"_prefix", "")
	if err != nil {
		return cmdErr(codes.Internal, "scanning revoked authorities: %v", err)
	}
	var expired []*revokedRow
	for raw := it.Next(); raw != nil; raw = it.Next() {
		if r := raw.(*revokedRow); r.A.NotAfter <= a.nowSec {
			expired = append(expired, r)
		}
	}
	for _, r := range expired {
		if err := a.delete(tableRevoked, r); err != nil {
			return err
		}
	}
	return nil
}

func (a *applier) taintAuthority(c *storepb.TaintAuthority) *CommandError {
	if err := a.checkTrustDomain(c.GetTrustDomain()); err != nil {
		return err
	}
	if err := validateAuthorityID(c.AuthorityId); err != nil {
		return err
	}
	b := a.bundleForWrite(c.TrustDomain)
	found, changed := false, false
	for _, x := range b.X509Authorities {
		if x509IDOf(x.Certificate) == c.AuthorityId {
			if x.Upstream {
				return cmdErr(codes.FailedPrecondition, "authority %s is a root of the upstream authority: it is tainted or removed there, not in Sigil", c.AuthorityId)
			}
			found = true
			if !x.Tainted {
				x.Tainted, changed = true, true
			}
		}
	}
	for _, j := range b.JwtAuthorities {
		if j.KeyId == c.AuthorityId {
			found = true
			if !j.Tainted {
				j.Tainted, changed = true, true
			}
		}
	}
	if !found {
		return cmdErr(codes.NotFound, "no authority %q in the bundle", c.AuthorityId)
	}
	if !changed {
		return nil // already tainted
	}
	b.SequenceNumber++
	return a.insert(tableBundles, b)
}

func (a *applier) revokeAuthority(c *storepb.RevokeAuthority) *CommandError {
	if err := a.checkTrustDomain(c.GetTrustDomain()); err != nil {
		return err
	}
	if err := validateAuthorityID(c.AuthorityId); err != nil {
		return err
	}
	b := a.bundleForWrite(c.TrustDomain)
	var goneX []*sigilv1.X509Authority
	keptX := make([]*sigilv1.X509Authority, 0, len(b.X509Authorities))
	for _, x := range b.X509Authorities {
		if x509IDOf(x.Certificate) == c.AuthorityId {
			if x.Upstream {
				return cmdErr(codes.FailedPrecondition, "authority %s is a root of the upstream authority: it is removed there, not in Sigil", c.AuthorityId)
			}
			goneX = append(goneX, x)
		} else {
			keptX = append(keptX, x)
		}
	}
	var goneJ []*sigilv1.JWTAuthority
	keptJ := make([]*sigilv1.JWTAuthority, 0, len(b.JwtAuthorities))
	for _, j := range b.JwtAuthorities {
		if j.KeyId == c.AuthorityId {
			goneJ = append(goneJ, j)
		} else {
			keptJ = append(keptJ, j)
		}
	}
	if len(goneX)+len(goneJ) == 0 {
		return cmdErr(codes.NotFound, "no authority %q in the bundle", c.AuthorityId)
	}
	for _, x := range goneX {
		if !x.Tainted && !strings.HasPrefix(x.ServerId, IdentityAuthorityPrefix) {
			return cmdErr(codes.FailedPrecondition, "authority %s of server %s is not tainted; taint it first so that agents replace what it signed, then revoke it", c.AuthorityId, x.ServerId)
		}
	}
	for _, j := range goneJ {
		if !j.Tainted {
			return cmdErr(codes.FailedPrecondition, "authority %s of server %s is not tainted; taint it first so that agents replace what it signed, then revoke it", c.AuthorityId, j.ServerId)
		}
	}
	// All checks passed: from here on the command succeeds.
	for _, x := range goneX {
		if err := a.addRevoked(AuthorityKindX509, c.AuthorityId, x.ServerId, x.NotAfter); err != nil {
			return err
		}
	}
	for _, j := range goneJ {
		if err := a.addRevoked(AuthorityKindJWT, c.AuthorityId, j.ServerId, j.ExpiresAt); err != nil {
			return err
		}
	}
	if err := a.pruneRevoked(); err != nil {
		return err
	}
	b.X509Authorities, b.JwtAuthorities = keptX, keptJ
	b.SequenceNumber++
	return a.insert(tableBundles, b)
}

func (a *applier) retireServer(c *storepb.RetireServer) *CommandError {
	if err := a.checkTrustDomain(c.GetTrustDomain()); err != nil {
		return err
	}
	node := c.ServerId
	if err := validateServerName(node); err != nil {
		return err
	}
	identity := IdentityAuthorityPrefix + node
	removed := a.removedServer(node)
	if c.Revoke && removed == nil {
		return cmdErr(codes.FailedPrecondition, "server %q is not being retired: retire it without revoke first (taint its authorities), then revoke them", node)
	}
	b := a.bundleForWrite(c.TrustDomain)
	changed := false
	keptX := make([]*sigilv1.X509Authority, 0, len(b.X509Authorities))
	for _, x := range b.X509Authorities {
		switch {
		case x.ServerId == identity || (c.Revoke && x.ServerId == node):
			if err := a.addRevoked(AuthorityKindX509, x509IDOf(x.Certificate), x.ServerId, x.NotAfter); err != nil {
				return err
			}
			changed = true
			continue
		case x.ServerId == node && !x.Tainted:
			x.Tainted, changed = true, true
		}
		keptX = append(keptX, x)
	}
	keptJ := make([]*sigilv1.JWTAuthority, 0, len(b.JwtAuthorities))
	for _, j := range b.JwtAuthorities {
		if j.ServerId == node {
			if c.Revoke {
				if err := a.addRevoked(AuthorityKindJWT, j.KeyId, j.ServerId, j.ExpiresAt); err != nil {
					return err
				}
				changed = true
				continue
			}
			if !j.Tainted {
				j.Tainted, changed = true, true
			}
		}
		keptJ = append(keptJ, j)
	}
	if c.Revoke {
		if err := a.delete(tableRemovedServers, removed); err != nil {
			return err
		}
	} else if removed == nil {
		if err := a.insert(tableRemovedServers, &storepb.RemovedServer{ServerId: node, RemovedAt: a.nowSec}); err != nil {
			return err
		}
	}
	if err := a.pruneRevoked(); err != nil {
		return err
	}
	if !changed {
		return nil
	}
	b.X509Authorities, b.JwtAuthorities = keptX, keptJ
	b.SequenceNumber++
	return a.insert(tableBundles, b)
}
